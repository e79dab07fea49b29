"""A new project's first run waits for the peer its build needs (``builds_on``), against a
real nats-server: it runs once that peer reports on it, not for the other peers' statuses
meanwhile; not at all when the peer reported first; when the status went to another replica
and is in the stream; and on its own, reporting ``Pending``, once the peer has been quiet for
``first_wait_seconds`` or the cap is reached. Peer statuses come through while waiting
events hold every event slot."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import nats
import pytest

from tests.integration import helpers
from vpcbus.client import Client
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto import subjects
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime import bus, controller
from vpcbus_runtime.controller import Controller
from vpcbus_runtime.reconciling import Context, Result, ready_at, waiting_for_peer
from vpcbus_runtime.records import RecordStore
from vpcbus_runtime.settings import Settings

pytestmark = [pytest.mark.connected]


class BuildsOnVpc:
    """Ready once VPC is Ready at the record's generation, as NAT and DNS are."""

    builds_on: ServiceName = "vpc"
    watches: Sequence[ServiceName] = ("ipam", "vpc")
    purge_after: Sequence[ServiceName] = ()

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()

    def close(self) -> None:
        """Nothing to close."""

    async def owned_keys(self) -> Sequence[str]:
        return []

    async def reconcile(self, ctx: Context) -> Result:
        self.runs[ctx.key] += 1
        if ctx.record is None or ctx.record.deleted:
            return Result("Deleted", "TornDown")
        vpc = await ctx.peers.status("vpc", ctx.organization, ctx.project)
        if not ready_at(vpc, ctx.record.generation):
            return waiting_for_peer("vpc", vpc)
        return Result("Ready", "Reconciled")


#: Starts the controller with the given ``first_wait_seconds`` (and events in flight, which
#: makes it another service: the consumer's ``max_ack_pending`` changes).
Start = Callable[..., Awaitable[tuple[Controller, BuildsOnVpc]]]


@pytest.fixture
async def start(nats_server: NatsServer) -> AsyncIterator[Start]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.ensure_bucket(js, subjects.kv_bucket("dns"))
    started: list[Controller] = []

    async def run(
        first_wait: float, in_flight: int | None = None
    ) -> tuple[Controller, BuildsOnVpc]:
        reconciler = BuildsOnVpc()
        service: ServiceName = "dns"
        if in_flight is not None:
            reconciler.in_flight = in_flight  # type: ignore[attr-defined]
            service = "nat"
        settings = dataclasses.replace(
            Settings(), resync_seconds=3600.0, first_wait_seconds=first_wait
        )
        ctl = Controller(service, reconciler, nc, js, RecordStore(kv), settings)
        await ctl.start()
        started.append(ctl)
        return ctl, reconciler

    yield run
    for ctl in started:
        await ctl.stop()
    await nc.close()


def status(service: str, project: str, state: str = "Ready", generation: int = 1) -> bytes:
    return json.dumps({
        "service": service, "organization": "fw", "project": project,
        "namespace": f"fw-{project}", "generation": generation, "state": state,
        "reason": "Reconciled", "observedAt": "2026-12-06T00:00:00Z",
    }).encode()  # fmt: skip


async def report(client: Client, service: str, project: str, state: str = "Ready") -> None:
    await client.js.publish(
        f"vpcbus.status.{service}.fw.{project}", status(service, project, state)
    )


async def own_state(client: Client, project: str, service: ServiceName = "dns") -> str | None:
    got = await client.status(service, "fw", project)
    return got.state if got is not None else None


async def state_is(client: Client, project: str, want: str, service: ServiceName = "dns") -> bool:
    return await own_state(client, project, service) == want


async def test_the_first_run_waits_for_the_peer_and_runs_once(start: Start, client: Client) -> None:
    ctl, reconciler = await start(30.0)
    await client.upsert(helpers.spec("fw", "a"), generation=1)
    await asyncio.sleep(0.5)  # delivered and folded: the run waits for VPC
    assert reconciler.runs["fw.a"] == 0
    await report(client, "ipam", "a")  # another peer: the held event runs the project
    await asyncio.sleep(0.5)
    assert reconciler.runs["fw.a"] == 0
    assert await own_state(client, "a") is None

    await report(client, "vpc", "a")
    assert await helpers.eventually(lambda: state_is(client, "a", "Ready"), timeout=15)
    await ctl.queue.drained()
    await asyncio.sleep(0.3)
    assert reconciler.runs["fw.a"] == 1  # VPC's status ended the wait; it ran nothing else


async def test_a_peer_that_reported_first_is_not_waited_for(
    start: Start, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller, "FIRST_WAIT_CAP", 60.0)  # a wait would outlast the check
    _, reconciler = await start(30.0)
    await report(client, "vpc", "b")
    await asyncio.sleep(0.5)  # delivered before the project's event
    await client.upsert(helpers.spec("fw", "b"), generation=1)
    assert await helpers.eventually(lambda: state_is(client, "b", "Ready"), timeout=15)
    assert reconciler.runs["fw.b"] == 1


async def test_a_quiet_peer_ends_the_wait_a_busy_one_does_not(
    start: Start, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller, "FIRST_WAIT_CAP", 60.0)  # not what ends this wait
    _, reconciler = await start(2.0)
    await client.upsert(helpers.spec("fw", "c"), generation=1)
    for i in range(15):  # VPC busy with other projects for 3 s
        await report(client, "vpc", f"other-{i}")
        await asyncio.sleep(0.2)
    assert reconciler.runs["fw.c"] == 0
    # VPC goes quiet: the run reports what it waits for.
    assert await helpers.eventually(lambda: state_is(client, "c", "Pending"), timeout=15)
    got = await client.status("dns", "fw", "c")
    assert got is not None and got.reason == "WaitingForVpc"
    await report(client, "vpc", "c")
    assert await helpers.eventually(lambda: state_is(client, "c", "Ready"), timeout=15)
    assert reconciler.runs["fw.c"] == 2


async def test_a_status_delivered_to_another_replica_ends_the_wait(
    start: Start, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas share the peers consumer: VPC's status may reach another one. The waiting
    replica finds it in the stream (``FIRST_WAIT_LOOKUP``)."""
    monkeypatch.setattr(controller, "FIRST_WAIT_CAP", 60.0)
    ctl, reconciler = await start(30.0)
    await client.upsert(helpers.spec("fw", "e"), generation=1)
    await asyncio.sleep(0.3)
    await ctl._pullers[-1].stop()  # the peers consumer: this replica hears no more statuses
    await report(client, "vpc", "e")
    assert await helpers.eventually(lambda: state_is(client, "e", "Ready"), timeout=15)
    assert reconciler.runs["fw.e"] == 1


async def test_the_wait_ends_at_the_cap_however_busy_the_peer(
    start: Start, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller, "FIRST_WAIT_CAP", 1.0)
    _, reconciler = await start(30.0)
    await client.upsert(helpers.spec("fw", "d"), generation=1)
    assert await helpers.eventually(lambda: state_is(client, "d", "Pending"), timeout=15)
    assert reconciler.runs["fw.d"] == 1


async def test_waiting_events_do_not_hold_back_the_statuses_that_end_their_waits(
    start: Start, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every event slot taken by a waiting project: VPC's statuses still come through."""
    monkeypatch.setattr(controller, "FIRST_WAIT_CAP", 60.0)
    monkeypatch.setattr(controller, "FIRST_WAIT_LOOKUP", 60.0)  # only delivery ends the waits
    for stream in (subjects.EVENTS_STREAM, subjects.STATUS_STREAM):
        await client.js.purge_stream(stream)  # a new consumer replays only this test's
    _, reconciler = await start(30.0, in_flight=3)
    projects = [f"full-{i}" for i in range(5)]
    for name in projects:
        await client.upsert(helpers.spec("fw", name), generation=1)
    await asyncio.sleep(0.5)  # the first three wait, the other two wait for a slot
    assert sum(reconciler.runs.values()) == 0
    for name in projects:
        await report(client, "vpc", name)
    for name in projects:
        ready = await helpers.eventually(
            functools.partial(state_is, client, name, "Ready", "nat"), timeout=15
        )
        assert ready, name
    # Not one run each: a status that comes while its project's event waits for a slot runs
    # the project once the event is folded, and the event runs it again (no change).
