"""``vpcbus watch`` and the progress of ``project create --wait``, run as real processes
(``python -m vpcbus``) against a real nats-server.

Events are published with :class:`vpcbus.client.Client` as the CLI publishes them; statuses
and errors are published by hand, as a service would, so each test decides exactly what
arrives. The last test runs the four real services on a bus of its own (their statuses
must not reach the other tests). Each test uses its own organization.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from tests.integration.test_addresses_cli import Cli, Run
from vpcbus.client import Client
from vpcbus.embedded import commands
from vpcbus.embedded.natsd import NatsServer, free_port
from vpcbus_proto import subjects
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.members import WorkloadSpec
from vpcbus_proto.status import MemberStatus, ServiceStatus

pytestmark = [pytest.mark.connected]

TIME = r"\d\d:\d\d:\d\d"


class Watcher:
    """``vpcbus watch ...`` as a process, returned once it has subscribed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cli: Cli, *argv: str) -> Watcher:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vpcbus", "watch", *argv, env=cli.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), timeout=15)
        assert first.startswith(b"watching "), first + await proc.stderr.read()
        return cls(proc)

    async def line(self) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout=15)).decode()

    async def finish(self, timeout: float = 20) -> Run:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout=timeout)
        assert self.proc.returncode is not None
        return Run(self.proc.returncode, out.decode(), err.decode())


@pytest.fixture
def cli(nats_server: NatsServer, tmp_path: Path) -> Cli:
    return Cli(nats_server.url, tmp_path / "home")


def status(org: str, project: str, service: str = "ipam", **kw: Any) -> ServiceStatus:
    fields: dict[str, Any] = {
        "service": service, "organization": org, "project": project,
        "namespace": f"{org}-{project}", "generation": 1, "state": "Ready",
        "reason": "Reconciled", "observed_at": datetime.now(UTC), **kw,
    }  # fmt: skip
    return ServiceStatus.model_validate(fields)


async def publish_status(client: Client, st: ServiceStatus) -> None:
    subject = subjects.status_subject(st.service, st.organization, st.project)
    await client.js.publish(subject, st.model_dump_json(by_alias=True).encode())


async def publish_error(client: Client, org: str, project: str, reason: str) -> None:
    err = ErrorEvent(
        service="ipam", kind="rejected", reason=reason, message=f"{reason} in {org}/{project}",
        subject="workload.attached", organization=org, project=project, time=datetime.now(UTC),
    )  # fmt: skip
    await client.js.publish(
        subjects.error_subject("ipam", org, project), err.model_dump_json().encode()
    )


def nic(org: str, project: str, name: str) -> WorkloadSpec:
    return WorkloadSpec(organization=org, project=project, kind="vm", name=name, ip="10.0.0.20")


async def test_a_project_filter_shows_only_that_projects_messages(client: Client, cli: Cli) -> None:
    watcher = await Watcher.start(cli, "-p", "wf-a/shop", "--count", "4", "--timeout", "20")
    for org, project in (("wf-b", "shop"), ("wf-a", "other"), ("wf-a", "shop")):
        await client.upsert(helpers.spec(org, project))
        await client.attach(nic(org, project, "web"))
        await publish_status(client, status(org, project))
        await publish_error(client, org, project, "IPConflict")
    run = await watcher.finish()

    assert run.code == 0, run
    lines = run.out.splitlines()
    assert all(re.match(TIME + " ", line) for line in lines), run.out
    assert sorted(line[9:] for line in lines) == [
        "error  ipam wf-a/shop  IPConflict on workload.attached: IPConflict in wf-a/shop",
        "event  -    wf-a/shop  project.created cidr 10.0.0.0/24 egress cloud",
        "event  -    wf-a/shop  workload.attached vm/web/default ip 10.0.0.20",
        "status ipam wf-a/shop  Ready Reconciled gen 1",
    ], run.out


async def test_type_status_shows_each_status_change_once(client: Client, cli: Cli) -> None:
    watcher = await Watcher.start(
        cli, "-p", "ws-a/one", "--type", "status", "--count", "3", "--timeout", "20"
    )
    await client.upsert(helpers.spec("ws-a", "one"))
    await publish_error(client, "ws-a", "one", "InvalidSpec")
    pending = status("ws-a", "one", state="Pending", reason="Reconciling", message="working")
    await publish_status(client, pending)
    await publish_status(client, pending)  # the same again: not shown
    await publish_status(client, pending.model_copy(update={"message": "still working"}))
    web = MemberStatus(member="workload.vm.web.default", generation=1, state="Ready", reason="Ok")
    await publish_status(client, status("ws-a", "one", members=[web]))
    await publish_status(client, status("ws-a", "one", "vpc"))
    run = await watcher.finish()

    assert run.code == 0, run
    lines = run.out.splitlines()
    assert [line[9:] for line in lines] == [
        "status ipam ws-a/one  Pending Reconciling gen 1: working",
        "status ipam ws-a/one  Ready Reconciled gen 1; members vm/web/default Ready",
        "status vpc  ws-a/one  Ready Reconciled gen 1",
    ], run.out
    assert all(re.match(TIME + " ", line) for line in lines)


async def test_json_prints_every_message_as_one_json_line(client: Client, cli: Cli) -> None:
    watcher = await Watcher.start(
        cli, "-p", "wj-a/one", "--json", "--type", "event", "status", "--count", "3"
    )
    await client.upsert(helpers.spec("wj-a", "one"))
    same = status("wj-a", "one")
    await publish_status(client, same)
    await publish_status(client, same)  # --json shows repeats too
    run = await watcher.finish()

    assert run.code == 0, run
    lines = [json.loads(line) for line in run.out.splitlines()]
    assert sorted(line["subject"] for line in lines) == [
        "project.created", "vpcbus.status.ipam.wj-a.one", "vpcbus.status.ipam.wj-a.one",
    ]  # fmt: skip
    event = next(line["data"] for line in lines if line["subject"] == "project.created")
    assert event["type"] == "io.vpcbus.project.created"
    assert event["data"] == {
        "organization": "wj-a", "name": "one", "cidrBlock": "10.0.0.0/24",
        "egressNetworkType": "cloud",
    }  # fmt: skip
    statuses = [line["data"] for line in lines if line["subject"] != "project.created"]
    assert statuses == [json.loads(same.model_dump_json(by_alias=True))] * 2


async def test_since_start_replays_what_the_streams_hold_then_goes_on_live(
    client: Client, cli: Cli
) -> None:
    await client.upsert(helpers.spec("wr-s", "one"))
    await publish_status(client, status("wr-s", "one", state="Pending", reason="Reconciling"))
    await publish_status(client, status("wr-s", "one"))  # the stream keeps only this one
    watcher = await Watcher.start(
        cli, "-p", "wr-s/one", "--since-start", "--count", "3", "--timeout", "20"
    )
    await publish_status(client, status("wr-s", "one", "vpc"))
    run = await watcher.finish()

    assert run.code == 0, run
    assert sorted(line[9:] for line in run.out.splitlines()) == [
        "event  -    wr-s/one  project.created cidr 10.0.0.0/24 egress cloud",
        "status ipam wr-s/one  Ready Reconciled gen 1",
        "status vpc  wr-s/one  Ready Reconciled gen 1",
    ], run.out


async def test_a_malformed_message_is_printed_and_the_watch_goes_on(
    client: Client, cli: Cli
) -> None:
    subject = subjects.status_subject("ipam", "wm-a", "one")
    watcher = await Watcher.start(cli, "-p", "wm-a/one", "--count", "3", "--timeout", "20")
    raw = await Watcher.start(cli, "-p", "wm-a/one", "--json", "--type", "status", "--count", "2")
    try:
        await client.nc.publish(subject, b"not json {")
        await client.nc.flush()
        assert "malformed ServiceStatus" in await watcher.line()
        attributable = {"data": {"organization": "wm-a", "name": "one"}}  # but no envelope
        await client.nc.publish(subjects.PROJECT_CREATED, json.dumps(attributable).encode())
        await client.nc.flush()
        assert "project.created invalid (InvalidEvent): " in await watcher.line()
        await publish_status(client, status("wm-a", "one"))
        run, json_run = await asyncio.gather(watcher.finish(), raw.finish())
    finally:  # services reading the stream must not meet the malformed status
        await client.js.purge_stream(subjects.STATUS_STREAM, subject=subject)

    assert run.code == 0, run
    assert "Ready Reconciled gen 1" in run.out
    assert "Traceback" not in run.err + json_run.err
    assert json_run.code == 0, json_run
    malformed, fine = (json.loads(line)["data"] for line in json_run.out.splitlines())
    assert (malformed, fine["state"]) == ("not json {", "Ready")


async def test_ctrl_c_and_the_timeout_end_the_watch_with_0(cli: Cli) -> None:
    watcher = await Watcher.start(cli, "--org", "wc-a")
    watcher.proc.send_signal(signal.SIGINT)
    interrupted = await watcher.finish()
    assert (interrupted.code, interrupted.out) == (0, ""), interrupted
    assert "Traceback" not in interrupted.err

    quiet = await cli("watch", "-p", "wc-a/none", "--timeout", "0.5")
    assert (quiet.code, quiet.out) == (0, ""), quiet


async def test_an_unreachable_or_lost_nats_exits_4(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    run = await Cli(url, tmp_path / "home")("watch", "--timeout", "5")
    assert run.code == 4, run
    assert run.err.startswith(f"error: cannot connect to NATS at {url}"), run.err

    server = NatsServer(tmp_path / "nats")
    server.start()
    gone = Cli(server.url, tmp_path / "home")
    gone.env["VPCBUS_CLI_RECONNECT_SECONDS"] = "2"  # how long it waits for the server to return
    try:
        watcher = await Watcher.start(gone, "--timeout", "30")
    finally:
        server.stop()
    lost = await watcher.finish()
    assert (lost.code, lost.err) == (4, f"error: lost the connection to NATS at {server.url}\n"), (
        lost
    )


async def test_the_watch_outlives_a_nats_restart(tmp_path: Path) -> None:
    """A server restart (JetStream on disk) is a few seconds without NATS: the watch
    reconnects, subscribes again and shows what is published afterwards."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        watcher = await Watcher.start(Cli(server.url, tmp_path / "home"), "--count", "1",
                                      "--timeout", "40")  # fmt: skip
        await asyncio.to_thread(server.restart)
        client = await Client.connect(server.url)
        try:
            await client.ensure_streams()

            async def shown() -> bool:
                await client.upsert(helpers.spec("wr-a", "again"))
                return watcher.proc.returncode is not None or await _settled(watcher)

            assert await helpers.eventually(shown, timeout=20, interval=1.0)
        finally:
            await client.close()
        run = await watcher.finish()
    finally:
        server.stop()
    assert run.code == 0, run
    assert "wr-a/again  project.created" in run.out, run


async def _settled(watcher: Watcher) -> bool:
    """The watch has exited (its one line printed)."""
    try:
        await asyncio.wait_for(watcher.proc.wait(), 0.5)
    except TimeoutError:
        return False
    return True


async def test_project_create_wait_says_what_is_pending_on_stderr(client: Client, cli: Cli) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vpcbus", "project", "create", "wp-a/one", "--cidr", "10.0.0.0/24",
        "--generation", "5", "--wait", "--timeout", "20", env=cli.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
    assert first == b"project wp-a/one created (generation 5)\n"
    await publish_status(client, status("wp-a", "one", generation=5))
    await publish_status(
        client, status("wp-a", "one", "vpc", generation=5, state="Pending", reason="Waiting")
    )
    progress = await asyncio.wait_for(proc.stderr.readline(), timeout=10)
    assert re.fullmatch(
        rb"waiting for wp-a/one: ipam Ready, vpc Pending \(Waiting\), nat -, dns - \(\ds\)\n",
        progress,
    ), progress
    for service in subjects.SERVICES:
        await publish_status(client, status("wp-a", "one", service, generation=5))
    out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == 0, err
    assert out == b"project wp-a/one is Ready\n"  # stdout as before: only the result lines


@pytest.fixture
def own_services(service_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcs]:
    """The four services on a nats-server of their own (``env["NATS_URL"]``)."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    services = ServiceProcs({**service_env, "NATS_URL": server.url}, tmp_path)
    try:
        services.start_all()
        services.wait_registered(server.url, commands.SERVICES)
        yield services
    finally:
        services.stop_all()
        server.stop()


async def test_real_services_statuses_show_until_the_project_is_ready(
    own_services: ServiceProcs, tmp_path: Path
) -> None:
    cli = Cli(own_services.env["NATS_URL"], tmp_path / "home")
    watcher = await Watcher.start(cli, "-p", "wr-a/one", "--type", "event", "status")
    await cli.ok("project", "create", "wr-a/one", "--cidr", "10.0.0.0/24", "--wait")
    lines: list[str] = []
    ready: set[str] = set()
    while ready != set(subjects.SERVICES):  # each service's change to Ready, then stop
        lines.append(await watcher.line())
        _time, kind, service, _where, *summary = lines[-1].split()
        if kind == "status" and summary[0] == "Ready" and "gen 1" in lines[-1]:
            ready.add(service)
    watcher.proc.send_signal(signal.SIGINT)
    assert (await watcher.finish()).code == 0
    assert all(" wr-a/one " in line for line in lines), lines
    assert "event  -    wr-a/one  project.created cidr 10.0.0.0/24 egress cloud\n" in [
        line[9:] for line in lines
    ]
    ipam = next(line for line in lines if " ipam " in line and " Ready " in line)
    assert re.fullmatch(rf"{TIME} status ipam wr-a/one  Ready Allocated gen 1\n", ipam), ipam
