"""The embedded development stack behind ``vpcbus up`` / ``vpcbus down``.

One supervisor process owns everything: a nats-server with JetStream on disk, OVN central
(NB, SB, northd), a local OVN chassis with a stand-in "internet" host when run as root,
and the four services, each restarted with backoff if it dies. ``up`` starts the
supervisor in the background and returns once the stack is serving; the supervisor writes
``stack.json`` so the CLI finds the endpoints; ``down`` stops it and everything it started.

NATS runs with authorization (:mod:`vpcbus.auth`): the users' passwords are made on the
first start in ``<home>/nats-auth`` and kept; each service logs in as itself
(``NATS_USER`` + ``NATS_PASSWORD_FILE``), the CLI as ``cli``, and the streams are declared
(and updated after an upgrade) as ``admin`` before the services start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nats

from vpcbus import auth
from vpcbus.embedded import commands, procs
from vpcbus.embedded.chassis import Chassis
from vpcbus.embedded.natsd import NatsServer
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import permissions, subjects
from vpcbus_runtime import bus, natsauth

CHASSIS_NAME = "vpcbus-chassis-1"
#: Every network namespace of the stack's chassis is ``<prefix>-...``; ``VPCBUS_CHASSIS_PREFIX``
#: overrides it, so a second stack (a test's) never touches this one's namespaces.
CHASSIS_PREFIX = "vpcbus"
#: The stand-in upstream: the cloud network's gateway and a well-known internet address.
INTERNET_HOST = "inet"
INTERNET_ADDRESSES = ["100.65.0.1/16", "8.8.8.8/32", "1.1.1.1/32"]
INTERNET_MAC = "02:65:00:00:00:01"
#: The stand-in upstream DNS resolvers on it (:mod:`vpcbus.embedded.resolver`): what the
#: projects' workloads name in resolv.conf (the DNS service's ``VPCBUS_DNS_UPSTREAM``).
UPSTREAM_RESOLVERS = ("8.8.8.8", "1.1.1.1")
MAX_BACKOFF = 30.0
#: A service that ran this long before it died is restarted at once again (backoff reset).
HEALTHY_AFTER = 60.0


def chassis_prefix() -> str:
    return os.environ.get("VPCBUS_CHASSIS_PREFIX") or CHASSIS_PREFIX


def chassis_dir(home: Path) -> Path:
    """The chassis' run directory: ``vpcbus vm`` opens the running chassis from here."""
    return home / "chassis"


def default_home() -> Path:
    if env := os.environ.get("VPCBUS_HOME"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/vpcbus")
    return Path.home() / ".local" / "share" / "vpcbus"


@dataclass
class StackState:
    supervisor_pid: int
    home: str
    nats_url: str
    ovn_nb_db: str
    ovn_sb_db: str
    chassis: str | None
    started: float
    services: dict[str, int] = field(default_factory=dict)
    chassis_prefix: str | None = None


def state_path(home: Path) -> Path:
    return home / "stack.json"


def load_state(home: Path) -> StackState | None:
    path = state_path(home)
    if not path.exists():
        return None
    state = StackState(**json.loads(path.read_text()))
    try:
        os.kill(state.supervisor_pid, 0)
    except ProcessLookupError:
        return None
    return state


def _write_state(home: Path, state: StackState) -> None:
    tmp = state_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(state_path(home))


class _Service:
    def __init__(self, name: str, env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.env = env
        self.log = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.next_start = 0.0
        self.started = 0.0

    def start(self, now: float = 0.0) -> None:
        self.started = now
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                commands.service_argv(self.name, python=sys.executable),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=commands.OWN_SESSION,
            )

    def supervise(self, now: float) -> None:
        """Restart a dead service, with exponential backoff between restarts; a service that
        ran for :data:`HEALTHY_AFTER` seconds starts over at the shortest delay."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            if now - self.started >= HEALTHY_AFTER:
                self.restarts = 0
            self.restarts += 1
            delay = min(2.0 ** min(self.restarts - 1, 5), MAX_BACKOFF)
            self.next_start = now + delay
            code = self.proc.returncode
            self.proc = None
            print(f"service {self.name} exited ({code}); restarting in {delay:g}s", flush=True)
        if now >= self.next_start:
            self.start(now)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        """Wait for the service to exit after ``terminate()``; kill it after 10 s."""
        procs.stop_child(self.proc)


def service_env(env: dict[str, str], auth_dir: Path, service: str) -> dict[str, str]:
    """``env`` for one service: its own NATS user, its password by file (not in the
    environment), no login inherited from the caller."""
    found = {k: v for k, v in env.items() if k not in ("NATS_USER", "NATS_PASSWORD")}
    found["NATS_USER"] = service
    found["NATS_PASSWORD_FILE"] = str(auth.password_file(auth_dir, service))
    return found


def declare_streams(url: str, login: natsauth.NatsAuth) -> None:
    """Create or update the streams as ``admin``, and turn on direct gets of buckets an
    older vpcbus made without them: the services may only create streams and buckets."""

    async def declare() -> None:
        nc = await nats.connect(url, **login.options(), max_reconnect_attempts=3)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            buckets = [b for s in subjects.SERVICES for b in permissions.buckets(s)]
            await bus.allow_direct_gets(js, [*buckets, permissions.BRIDGE_BUCKET])
        finally:
            await nc.close()

    asyncio.run(declare())


def _start_upstream(chassis: Chassis) -> None:
    """The stand-in upstream on the cloud network: its gateway, two internet addresses and
    the DNS resolvers on them."""
    inet = chassis.add_external_host(INTERNET_HOST, "cloud", INTERNET_ADDRESSES, mac=INTERNET_MAC)
    listen = [arg for ip in UPSTREAM_RESOLVERS for arg in ("--listen", ip)]
    inet.spawn(sys.executable, "-m", "vpcbus.embedded.resolver", *listen)
    # Announce the upstream gateway like a VRRP gateway would (see announce.py).
    inet.spawn(sys.executable, "-m", "vpcbus.embedded.announce", "--iface", "eth0",
               "--ip", INTERNET_ADDRESSES[0].split("/")[0])  # fmt: skip


def run_chassis(
    home: Path, *, sb_db: str, nb_db: str, nats_url: str, name: str, upstream: bool = True
) -> None:
    """A chassis alone, in the foreground, until SIGTERM/SIGINT/SIGHUP: compose's ``chassis``
    container. It records itself in ``<home>/stack.json`` like ``vpcbus up`` (no services),
    so ``vpcbus vm ...`` run beside it (``docker compose exec chassis vpcbus vm create ...``)
    plugs VMs into it, with addresses from the stack at ``nats_url``."""
    home.mkdir(parents=True, exist_ok=True)
    if load_state(home) is not None:
        raise RuntimeError(f"a stack or chassis already runs with home {home}")
    stopping = procs.stop_requested()  # before start(): a SIGTERM meanwhile still stops it
    chassis = Chassis(chassis_dir(home), sb_db, name=name, prefix=chassis_prefix())
    try:
        chassis.start()
        if upstream:
            _start_upstream(chassis)
        state = StackState(
            supervisor_pid=os.getpid(), home=str(home), nats_url=nats_url, ovn_nb_db=nb_db,
            ovn_sb_db=sb_db, chassis=name, started=time.time(), chassis_prefix=chassis.prefix,
        )  # fmt: skip
        _write_state(home, state)
        print(f"chassis ready: {name} (SB {sb_db}, namespaces {chassis.prefix}-*)", flush=True)
        while not stopping() and chassis.is_running():
            time.sleep(0.5)
    finally:
        state_path(home).unlink(missing_ok=True)
        chassis.stop()
        print("chassis stopped", flush=True)


def run(home: Path, *, nats_port: int, with_chassis: bool) -> None:
    """The supervisor: start everything, supervise until SIGTERM/SIGINT/SIGHUP, stop all."""
    home.mkdir(parents=True, exist_ok=True)
    logdir = home / "logs"
    logdir.mkdir(exist_ok=True)
    stopping = procs.stop_requested()
    auth_dir = home / auth.AUTH_DIR
    config = auth.write(auth_dir, auth.tls_from_env())
    natsd = NatsServer(home / "nats", port=nats_port,
                       monitor_port=8222 if nats_port == 4222 else 0, config=config)  # fmt: skip
    central = OvnCentral(home / "ovn")
    chassis: Chassis | None = None
    services: list[_Service] = []
    try:
        natsd.start()
        declare_streams(natsd.url, auth.login(auth_dir, permissions.ADMIN))
        central.start()
        if with_chassis:
            chassis = Chassis(chassis_dir(home), central.sb_db, name=CHASSIS_NAME,
                              prefix=chassis_prefix())  # fmt: skip
            chassis.start()
            _start_upstream(chassis)
        env = {
            **os.environ,
            "NATS_URL": natsd.url,
            "OVN_NB_DB": central.nb_db,
            "VPCBUS_GATEWAY_CHASSIS": CHASSIS_NAME,
        }
        if chassis is not None:  # its stand-in upstream answers DNS
            env.setdefault("VPCBUS_DNS_UPSTREAM", ",".join(UPSTREAM_RESOLVERS))
        services = [
            _Service(name, service_env(env, auth_dir, name), logdir) for name in commands.SERVICES
        ]
        for svc in services:
            svc.start(time.monotonic())
        state = StackState(
            supervisor_pid=os.getpid(),
            home=str(home),
            nats_url=natsd.url,
            ovn_nb_db=central.nb_db,
            ovn_sb_db=central.sb_db,
            chassis=CHASSIS_NAME if chassis else None,
            started=time.time(),
            chassis_prefix=chassis.prefix if chassis else None,
        )
        print(f"stack ready: NATS_URL={natsd.url} OVN_NB_DB={central.nb_db}", flush=True)
        while not stopping():
            now = time.monotonic()
            for svc in services:
                svc.supervise(now)
            state.services = {s.name: s.proc.pid for s in services if s.proc is not None}
            _write_state(home, state)
            time.sleep(0.5)
    finally:
        state_path(home).unlink(missing_ok=True)
        for svc in services:  # all at once, then wait for each
            svc.terminate()
        for svc in services:
            svc.stop()
        if chassis is not None:
            chassis.stop()
        central.stop()
        natsd.stop()
        print("stack stopped", flush=True)


def up(home: Path, *, nats_port: int, with_chassis: bool, timeout: float = 60.0) -> StackState:
    """Start the supervisor in the background; return once it reports the stack ready."""
    if (state := load_state(home)) is not None:
        return state
    home.mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "vpcbus", "--home", str(home), "up", "--foreground",
            "--nats-port", str(nats_port)] + ([] if with_chassis else ["--no-chassis"])  # fmt: skip
    log = (home / "logs" / "stack.log").open("ab")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (home / "logs" / "stack.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the stack failed to start:\n{tail}")
        if (state := load_state(home)) is not None and state.supervisor_pid == proc.pid:
            return state
        time.sleep(0.1)
    raise TimeoutError(f"the stack did not come up within {timeout:g}s; see {home}/logs")


def down(home: Path, *, timeout: float = 60.0) -> bool:
    """Stop the supervisor (and so everything); False when nothing was running."""
    state = load_state(home)
    if state is None:
        return False
    os.kill(state.supervisor_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state.supervisor_pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    raise TimeoutError(f"supervisor {state.supervisor_pid} did not stop within {timeout:g}s")
