"""``vpcbus`` run as a user runs it, against one test module's own ``vpcbus up``.

Shared by the data-path modules that drive the embedded stack only through the CLI (as a
subprocess, ``python -m vpcbus --home HOME``): :func:`for_module` makes the CLI of a private
home whose chassis namespaces carry the module's own prefix, :func:`up` starts its stack, and
:class:`Cli` runs commands and reads what the services report.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SERVICE_ENV
from vpcbus import auth, stack
from vpcbus.client import Client
from vpcbus.embedded.natsd import free_port
from vpcbus_proto.status import ServiceStatus, WorkloadAddress
from vpcbus_proto.subjects import ServiceName


@dataclass(frozen=True)
class Cli:
    """``python -m vpcbus`` against one module's stack."""

    home: Path
    env: dict[str, str]

    def popen_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vpcbus", "--home", str(self.home), *args]

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        argv = self.popen_argv(*args)
        return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"vpcbus {' '.join(args)}: {done.stderr}\n{self.logs()}"
        return done.stdout

    def vms(self) -> dict[tuple[str, str], dict[str, str]]:
        """``vm list`` as {(project, name): row}."""
        lines = self.ok("vm", "list").splitlines()
        head = lines[0].split()
        rows = [dict(zip(head, line.split(), strict=True)) for line in lines[1:]]
        return {(row["PROJECT"], row["NAME"]): row for row in rows}

    def state(self) -> stack.StackState:
        state = stack.load_state(self.home)
        assert state is not None, "the stack is not running"
        return state

    def status(self, service: ServiceName, project: str) -> ServiceStatus | None:
        org, name = project.split("/")

        async def read() -> ServiceStatus | None:
            url = self.state().nats_url  # as the CLI logs in to its stack: user cli
            login = auth.client_login(self.home, url, url)
            client = await Client.connect(url, name="vpcbus-datapath-tests", auth=login)
            try:
                return await client.status(service, org, name)
            finally:
                await client.close()

        return asyncio.run(read())

    def ipam(self, project: str) -> ServiceStatus:
        status = self.status("ipam", project)
        assert status is not None
        return status

    def workloads(self, project: str) -> dict[str, WorkloadAddress]:
        """The VM addresses IPAM lists for the project, by VM name."""
        facts = self.ipam(project).addresses
        assert facts is not None
        return {w.name: w for w in facts.workloads}

    def nbctl(self, *args: str) -> str:
        argv = ["ovn-nbctl", f"--db={self.state().ovn_nb_db}", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def logs(self) -> str:
        tails = []
        for path in sorted((self.home / "logs").glob("*.log")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(tails)


def for_module(home: Path, prefix: str) -> Cli:
    """The CLI of a stack in ``home`` whose chassis namespaces are ``<prefix>-*``; the tests'
    service settings, nothing from the caller's NATS_URL / OVN_* / VPCBUS_HOME."""
    env = {**os.environ, **SERVICE_ENV, "VPCBUS_CHASSIS_PREFIX": prefix}
    for name in ("NATS_URL", "OVN_NB_DB", "OVN_SB_DB", "VPCBUS_HOME"):
        env.pop(name, None)
    return Cli(home, env)


def up(cli: Cli, projects: Sequence[str] = (), cidr: str = "", vms: Sequence[str] = ()) -> None:
    """``vpcbus up`` on a free NATS port; then ``projects`` with ``cidr``, and ``vms``
    (``ORG/PROJECT/NAME`` each) made with ``vm create``."""
    cli.ok("up", "--nats-port", str(free_port()))
    for project in projects:
        cli.ok("project", "create", project, "--cidr", cidr, "--wait", "--timeout", "60")
    for vm in vms:
        project, _, name = vm.rpartition("/")
        cli.ok("vm", "create", project, name, "--timeout", "60")


def our_netns(prefix: str) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = (line.split()[0] for line in listing.stdout.splitlines() if line.strip())
    return sorted(name for name in names if name.startswith(f"{prefix}-"))
