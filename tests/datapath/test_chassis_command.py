"""``vpcbus chassis``, compose's ``chassis`` container command, run for real.

compose.yaml cannot be started here (no Docker engine), so this runs the argv its ``chassis``
service uses (built by :func:`vpcbus.embedded.commands.chassis_argv`, which
tests/static/test_compose.py compares with the file) beside this module's nats-server, OVN
and four services, as compose would: the services' gateway chassis is this chassis. It
probes it with the container's healthcheck, then does what a compose user does with
``docker compose exec chassis vpcbus ...``: creates a project and two VMs, which ping each
other and reach the stand-in internet through the project's SNAT; SIGTERM stops it and
leaves no namespace behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SERVICE_ENV
from tests.datapath import hosts
from vpcbus.embedded import commands
from vpcbus.embedded.natsd import NatsServer
from vpcbus.embedded.ovn import OvnCentral

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="datapath tests need root (network namespaces, veths)"
    ),
]

PREFIX = f"vk{os.getpid() % 10000}"  # this module's namespaces only
CHASSIS = f"{PREFIX}-chassis-1"
TOOLS = ("ip", "ethtool", "ping", "ovsdb-server", "ovs-vswitchd", "ovn-controller", "ovn-sbctl")


@pytest.fixture(scope="module")
def service_env(nats_server: NatsServer, ovn: OvnCentral) -> dict[str, str]:
    """The services of conftest's ``services`` fixture, pinned to this chassis as compose's
    are to ``vpcbus-chassis-1``."""
    return {
        **os.environ,
        **SERVICE_ENV,
        "NATS_URL": nats_server.url,
        "OVN_NB_DB": ovn.nb_db,
        "VPCBUS_GATEWAY_CHASSIS": CHASSIS,
    }


@dataclass
class Running:
    proc: subprocess.Popen[str]
    home: Path
    env: dict[str, str]
    sb_db: str

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``vpcbus`` beside the chassis: ``docker compose exec chassis vpcbus ...``."""
        argv = [sys.executable, "-m", "vpcbus", *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, f"vpcbus {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout


def _our_netns() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = (line.split()[0] for line in listing.stdout.splitlines() if line.strip())
    return sorted(name for name in names if name.startswith(f"{PREFIX}-"))


def _healthcheck(sb_db: str) -> subprocess.CompletedProcess[str]:
    # The compose healthcheck, pointed at this test's SB.
    argv = ["ovn-sbctl", f"--db={sb_db}", "--timeout=5", "get", "Chassis", CHASSIS, "name"]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def chassis(
    services: object,
    service_env: dict[str, str],
    ovn: OvnCentral,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    hosts.skip_unless_usable(PREFIX, TOOLS)
    home = tmp_path_factory.mktemp("chassis") / "home"
    env = {**service_env, "VPCBUS_HOME": str(home), "VPCBUS_CHASSIS_PREFIX": PREFIX}
    argv = commands.chassis_argv(
        sb_db=ovn.sb_db, name=CHASSIS, vpcbus=Path(sys.executable).parent / "vpcbus"
    )
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    running = Running(proc, home, env, ovn.sb_db)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it is up (or has failed and exited)
        assert line.startswith(f"chassis ready: {CHASSIS}"), line + proc.stdout.read()
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_healthcheck_passes_once_the_chassis_is_registered(chassis: Running) -> None:
    done = _healthcheck(chassis.sb_db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().strip('"') == CHASSIS
    assert _our_netns(), "the chassis made its namespaces"


def test_vms_created_beside_it_ping_each_other_and_the_internet(chassis: Running) -> None:
    chassis.ok(
        "project", "create", "compose/web", "--cidr", "10.0.0.0/24", "--wait", "--timeout", "60"
    )
    assert "10.0.0.20/24" in chassis.ok(
        "vm", "create", "compose/web", "db", "--ip", "10.0.0.20", "--timeout", "60"
    )
    assert "compose/web" in chassis.ok("vm", "create", "compose/web", "app", "--timeout", "60")
    assert (
        chassis.cli("vm", "exec", "app", "--", "ping", "-c", "2", "-W", "2", "10.0.0.20").returncode
        == 0
    )
    # Outbound through the gateway router bound to this chassis and the project's SNAT. The
    # upstream learns nothing of 10.0.0.0/24, so a reply proves the source NAT.
    deadline = time.monotonic() + 30
    while chassis.cli(
        "vm", "exec", "app", "--", "ping", "-c", "1", "-W", "2", "8.8.8.8"
    ).returncode:
        assert time.monotonic() < deadline, "no reply from 8.8.8.8 through SNAT"
    chassis.ok("vm", "delete", "compose/web", "app")
    chassis.ok("vm", "delete", "compose/web", "db")
    chassis.ok("project", "delete", "compose/web", "--wait", "--timeout", "60")


def test_sigterm_stops_it_and_leaves_nothing(chassis: Running) -> None:
    chassis.proc.send_signal(signal.SIGTERM)
    assert chassis.proc.wait(timeout=60) == 0
    assert chassis.proc.stdout is not None
    assert "chassis stopped" in chassis.proc.stdout.read()
    assert _our_netns() == []
    assert not (chassis.home / "stack.json").exists()
