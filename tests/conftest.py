"""Shared fixtures: a real nats-server, a real OVN central, the four service processes.

Servers are module-scoped (they start in well under a second); every test gets its own
client. Services are started with exactly the argv compose.yaml uses
(:mod:`vpcbus.embedded.commands`), and their logs are printed when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from vpcbus.client import Client
from vpcbus.embedded import commands, procs
from vpcbus.embedded.natsd import NatsServer
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_runtime.ovn import NbSession

SERVICE_ENV = {
    "VPCBUS_RESYNC_SECONDS": "2",
    "VPCBUS_TOMBSTONE_SECONDS": "1",
    "VPCBUS_IP_QUARANTINE_SECONDS": "1",
    "VPCBUS_LOG_FORMAT": "json",
    "VPCBUS_LOG_LEVEL": "info",
}


class ServiceProcs:
    """The four services as real processes, started, killed and restarted by tests."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *, instance: str | None = None) -> None:
        """Start service ``name``; ``instance`` names one of several replicas of it: its
        ``VPCBUS_INSTANCE``, its log file and its key for :meth:`stop`."""
        key = instance or name
        log = (self.logdir / f"{key}.log").open("ab")
        self.procs[key] = subprocess.Popen(
            commands.service_argv(name, python=sys.executable),
            env=self.env if instance is None else {**self.env, "VPCBUS_INSTANCE": instance},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=commands.OWN_SESSION,
        )
        log.close()

    def wait_registered(self, nats_url: str, names: tuple[str, ...], timeout: float = 30.0) -> None:
        """Block until each named service answers ``$SRV.PING`` (its consumers are bound)."""

        async def ping_all() -> None:
            nc = await nats.connect(nats_url)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                pending = set(names)
                while pending:
                    for name in list(pending):
                        try:
                            await nc.request(f"$SRV.PING.vpcbus-{name}", b"", timeout=0.5)
                            pending.discard(name)
                        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                            pass
                    if pending and loop.time() > deadline:
                        raise TimeoutError(f"services not up: {pending}\n{self.logs()}")
                    await asyncio.sleep(0.05)
            finally:
                await nc.close()

        asyncio.run(ping_all())

    def stop(self, name: str, *, kill: bool = False) -> None:
        procs.stop_child(self.procs.pop(name, None), kill=kill, timeout=15)

    def start_all(self) -> None:
        for name in commands.SERVICES:
            self.start(name)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def alive(self) -> dict[str, bool]:
        return {n: p.poll() is None for n, p in self.procs.items()}

    def logs(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.logdir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ovn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvnCentral]:
    central = OvnCentral(tmp_path_factory.mktemp("ovn"))
    central.start()
    yield central
    central.stop()


@pytest.fixture
def nb(ovn: OvnCentral) -> Iterator[NbSession]:
    """A real NB session to the module's OVN central, closed after the test."""
    session = NbSession(ovn.nb_db)
    yield session
    session.close()


@pytest.fixture(scope="module")
def service_env(nats_server: NatsServer, ovn: OvnCentral) -> dict[str, str]:
    return {
        **os.environ,
        **SERVICE_ENV,
        "NATS_URL": nats_server.url,
        "OVN_NB_DB": ovn.nb_db,
    }


@pytest.fixture(scope="module")
def services(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcs]:
    procs = ServiceProcs(service_env, tmp_path_factory.mktemp("logs"))
    procs.start_all()
    procs.wait_registered(service_env["NATS_URL"], commands.SERVICES)
    yield procs
    procs.stop_all()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    c = await Client.connect(nats_server.url, name="vpcbus-tests")
    await c.ensure_streams()
    yield c
    await c.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the service processes' logs to a failed test's report."""
    report = yield
    if report.when == "call" and report.failed:
        funcargs = item.funcargs if isinstance(item, pytest.Function) else {}
        for procs in funcargs.values():
            if isinstance(procs, ServiceProcs):
                report.sections.append(("service logs", procs.logs()))
    return report
