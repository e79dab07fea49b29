"""The address commands of the CLI, run as real processes (``python -m vpcbus``) against the
real services: attach and detach NICs, create and delete EIPs, read ``get ip|subnet|pool|eip``.

Each test uses its own organization and deletes its project at the end. The services run
with a one-second quarantine (``VPCBUS_IP_QUARANTINE_SECONDS`` in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus.client import Client
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto import subjects
from vpcbus_proto.errors import ErrorEvent

pytestmark = [pytest.mark.connected]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


class Cli:
    """``python -m vpcbus`` pointed at the suite's NATS, with a private (empty) home."""

    def __init__(self, nats_url: str, home: Path) -> None:
        self.env = {**os.environ, "NATS_URL": nats_url, "VPCBUS_HOME": str(home)}

    async def __call__(self, *argv: str) -> Run:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vpcbus", *argv, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    async def ok(self, *argv: str) -> str:
        run = await self(*argv)
        assert run.code == 0, f"vpcbus {' '.join(argv)}: {run.code}\n{run.out}\n{run.err}"
        return run.out


@pytest.fixture
def cli(nats_server: NatsServer, tmp_path: Path) -> Cli:
    return Cli(nats_server.url, tmp_path / "home")


def rows(table: str) -> list[dict[str, str]]:
    """A ``tables.show`` table as dicts; cells are cut at the header's column starts."""
    header, *lines = table.strip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    heads = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {h: line[a:b].strip() for h, a, b in zip(heads, starts, [*starts[1:], None], strict=True)}
        for line in lines
    ]


def fields(out: str) -> dict[str, str]:
    """The ``key:  value`` lines under a table."""
    pairs = (line.partition(":") for line in out.splitlines())
    return {k.strip(): v.strip() for k, _, v in pairs}


async def subnet(cli: Cli, project: str) -> dict[str, str]:
    out = await cli.ok("get", "subnet", "-p", project)
    table, _, ranges = out.partition("\nin use:")
    return {**rows(table)[0], **fields("in use:" + ranges)}


async def nics(cli: Cli, project: str) -> dict[str, dict[str, str]]:
    out = await cli.ok("get", "ip", "-p", project)
    return {r["HOLDER"]: r for r in rows(out.split("\n\n")[0])}


async def eips(cli: Cli, project: str) -> dict[str, dict[str, str]]:
    out = await cli.ok("get", "eip", "-p", project)
    return {r["NAME"]: r for r in rows(out)}


async def held_eips(client: Client) -> int:
    """Ready EIPs of every live project, from IPAM's statuses."""
    held = 0
    for statuses in (await client.all_statuses()).values():
        ipam = statuses.get("ipam")
        if ipam is not None and ipam.state != "Deleted" and ipam.addresses is not None:
            held += sum(e.ready for e in ipam.addresses.eips)
    return held


async def test_static_conflict_names_the_holder_and_get_ip_matches(
    services: ServiceProcs, client: Client, cli: Cli
) -> None:
    await helpers.create_ready(client, helpers.spec("cli-ip", "web"))
    project = "cli-ip/web"

    out = await cli.ok("workload", "attach", "-p", project, "--kind", "pod", "frontend")
    assert out.strip().startswith("pod/frontend/default: 10.0.0.2 mac 0e:")
    out = await cli.ok(
        "workload", "attach", "-p", project, "--kind", "vm", "db", "--ip", "10.0.0.20",
        "--mac", "02:00:00:00:00:20",
    )  # fmt: skip
    assert out.strip() == "vm/db/default: 10.0.0.20 (static) mac 02:00:00:00:00:20"

    clash = await cli(
        "workload", "attach", "-p", project, "--kind", "pod", "x", "--ip", "10.0.0.20"
    )
    assert clash.code == 1, clash
    assert "IPConflict" in clash.err and "vm/db/default" in clash.err, clash.err
    # The error event follows the status the CLI read its verdict from.
    errors: list[ErrorEvent] = []

    async def error_published() -> bool:
        subject = subjects.error_subject("ipam", "cli-ip", "web")
        try:
            msg = await client.js.get_last_msg(subjects.ERRORS_STREAM, subject)
        except NotFoundError:
            return False
        errors.append(ErrorEvent.model_validate_json(msg.data or b""))
        return True

    assert await helpers.eventually(error_published, timeout=10)
    event = errors[-1]
    assert (event.kind, event.reason) == ("rejected", "IPConflict")
    assert event.subject == "workload.attached"
    assert "10.0.0.20 is already held by vm/db/default" in event.message
    assert '"name": "x"' in event.payload

    listed = await nics(cli, project)
    assert listed["router/gateway"]["ADDRESS"] == "10.0.0.1"
    assert listed["pod/frontend/default"] == {
        "ADDRESS": "10.0.0.2", "HOLDER": "pod/frontend/default",
        "MAC": listed["pod/frontend/default"]["MAC"], "STATIC": "false", "READY": "true",
        "REASON": "-",
    }  # fmt: skip
    assert listed["vm/db/default"]["STATIC"] == "true"
    assert listed["vm/db/default"]["MAC"] == "02:00:00:00:00:20"
    assert listed["pod/x/default"]["ADDRESS"] == "-"
    assert listed["pod/x/default"]["REASON"] == "IPConflict"

    used = await subnet(cli, project)
    assert used["CIDR"] == "10.0.0.0/24" and used["GATEWAY"] == "10.0.0.1"
    assert (used["IN USE"], used["CAPACITY"]) == ("2", "253")
    assert int(used["AVAILABLE"]) == 253 - 2 - int(used["QUARANTINED"])
    assert used["in use"] == "10.0.0.2, 10.0.0.20"

    await cli.ok("workload", "detach", "-p", project, "--kind", "pod", "x")
    await cli.ok("workload", "detach", "-p", project, "--kind", "vm", "db")
    listed = await nics(cli, project)
    assert set(listed) == {"router/gateway", "pod/frontend/default"}
    assert (await subnet(cli, project))["in use"] == "10.0.0.2"
    await helpers.delete_done(client, "cli-ip", "web")


async def test_a_full_subnet_queues_the_nic_until_an_address_frees_up(
    services: ServiceProcs, client: Client, cli: Cli
) -> None:
    await helpers.create_ready(client, helpers.spec("cli-full", "tiny", "10.9.0.0/29"))
    project = "cli-full/tiny"

    outs = await asyncio.gather(*(
        cli.ok("workload", "attach", "-p", project, "--kind", "pod", f"p{i}") for i in range(5)
    ))  # fmt: skip
    given = sorted(o.split()[1] for o in outs)
    assert given == [f"10.9.0.{i}" for i in range(2, 7)]
    full = await subnet(cli, project)
    assert (full["CAPACITY"], full["IN USE"], full["AVAILABLE"]) == ("5", "5", "0")
    assert full["available"] == "-"

    sixth = await cli("workload", "attach", "-p", project, "--kind", "pod", "p5")
    assert sixth.code == 1, sixth
    assert "NoAvailableIPs" in sixth.err and "gets an address by itself" in sixth.err
    assert (await nics(cli, project))["pod/p5/default"]["REASON"] == "NoAvailableIPs"

    freed = next(o.split()[1] for o in outs if o.startswith("pod/p0/"))
    await cli.ok("workload", "detach", "-p", project, "--kind", "pod", "p0")

    async def p5_addressed() -> bool:
        ipam = await client.status("ipam", "cli-full", "tiny")
        state = ipam.member("workload.pod.p5.default") if ipam else None
        return state is not None and state.state == "Ready"

    assert await helpers.eventually(p5_addressed, timeout=30)
    listed, full = await asyncio.gather(nics(cli, project), subnet(cli, project))
    assert listed["pod/p5/default"]["ADDRESS"] == freed
    assert "pod/p0/default" not in listed
    assert (full["IN USE"], full["AVAILABLE"]) == ("5", "0")
    await helpers.delete_done(client, "cli-full", "tiny")


async def test_eips_move_the_pool_counts(services: ServiceProcs, client: Client, cli: Cli) -> None:
    await helpers.create_ready(client, helpers.spec("cli-eip", "web"))
    project = "cli-eip/web"

    async def pool_in_use(want: int) -> None:
        """The pool figures follow IPAM's project statuses within a few seconds (the janitor
        publishes them every 2 s when they changed); then the CLI shows them."""

        async def published() -> bool:
            return [(p.pool, p.usage.in_use) for p in await client.pool_usages()] == [
                ("cloud", want)
            ]

        assert await helpers.eventually(published, timeout=10)
        (cloud,) = rows(await cli.ok("get", "pool"))
        assert (cloud["POOL"], cloud["CIDR"], cloud["IN USE"]) == (
            "cloud", "100.65.0.0/16", str(want),
        )  # fmt: skip

    before = await held_eips(client)
    await pool_in_use(before)

    out = await cli.ok("eip", "create", "-p", project, "web")
    made = re.fullmatch(r"eip web: (100\.65\.\d+\.\d+) on cloud\n", out)
    assert made is not None, out
    listed = await eips(cli, project)
    assert listed["web"]["EXTERNAL IP"] == made[1]
    assert (listed["web"]["READY"], listed["web"]["OWNERSHIP"]) == ("true", "Released")
    assert listed["default-gw"]["READY"] == "true"
    assert await held_eips(client) == before + 1
    await pool_in_use(before + 1)

    unknown, reserved = await asyncio.gather(
        cli("eip", "create", "-p", project, "nowhere", "--network", "nowhere"),
        cli("eip", "create", "-p", project, "default-gw"),
    )
    assert unknown.code == 1 and "eip nowhere: UnknownNetwork" in unknown.err, unknown
    assert reserved.code == 1 and "eip default-gw: NameReserved" in reserved.err, reserved
    listed = await eips(cli, project)
    assert (listed["nowhere"]["READY"], listed["nowhere"]["REASON"]) == ("false", "UnknownNetwork")

    await asyncio.gather(*(cli.ok("eip", "delete", "-p", project, n) for n in ("web", "nowhere")))
    assert set(await eips(cli, project)) == {"default-gw"}
    await pool_in_use(before)

    missing, one = await asyncio.gather(
        cli("get", "pool", "nowhere"), cli.ok("get", "pool", "cloud")
    )
    assert missing.code == 1 and "no pool 'nowhere' (known: cloud)" in missing.err
    assert fields(one.split("\n", 2)[2])["exclude"] == "-"
    await helpers.delete_done(client, "cli-eip", "web")
