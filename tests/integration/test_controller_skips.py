"""What the controller does not run, against a real nats-server: a resync leaves out a project
that converged in the last half period (a burst is not reconciled twice), not one that did
not converge (still Pending), and once half a period has passed every project is queued
again; a peer's status for a project this service has no record, no members and no backend
objects of does not run the reconciler (its teardown would scan the backend for nothing),
until a resync finds backend objects of it (an orphan); a tombstone torn down here is not
swept again until it changes or the doctor repairs it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import nats
import pytest

from tests.integration import helpers
from vpcbus.client import Client
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto import subjects
from vpcbus_proto.projects import ProjectRef
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime import bus, doctoring
from vpcbus_runtime.controller import Controller
from vpcbus_runtime.reconciling import Context, Result
from vpcbus_runtime.records import RecordStore
from vpcbus_runtime.settings import Settings

pytestmark = [pytest.mark.connected]


class Counting:
    """Ready at once, except for projects named ``slow-*`` (Pending, requeued much later)
    and ``wait-*`` (Pending, waiting for VPC)."""

    watches: Sequence[ServiceName] = ("ipam", "vpc")
    purge_after: Sequence[ServiceName] = ()

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.owned: list[str] = []

    def close(self) -> None:
        """Nothing to close."""

    async def owned_keys(self) -> Sequence[str]:
        return list(self.owned)

    async def reconcile(self, ctx: Context) -> Result:
        self.runs[ctx.key] += 1
        if ctx.record is None or ctx.record.deleted:
            return Result("Deleted", "TornDown", "swept")
        if ctx.project.startswith("slow-"):
            return Result("Pending", "Waiting", "not yet", requeue_after=3600.0)
        if ctx.project.startswith("wait-"):
            return Result("Pending", "WaitingForVpc", "vpc: no status yet", waiting_for="vpc")
        return Result("Ready", "Reconciled")


@pytest.fixture
async def controller(nats_server: NatsServer) -> AsyncIterator[tuple[Controller, Counting]]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.ensure_bucket(js, subjects.kv_bucket("dns"))
    reconciler = Counting()
    settings = dataclasses.replace(Settings(), resync_seconds=3600.0)  # no periodic resync
    ctl = Controller("dns", reconciler, nc, js, RecordStore(kv), settings)
    await ctl.start()
    yield ctl, reconciler
    await ctl.stop()
    await nc.close()


async def test_a_resync_skips_what_converged_in_the_last_half_period(
    controller: tuple[Controller, Counting], client: Client
) -> None:
    ctl, reconciler = controller
    for name in ("p1", "p2", "slow-p3"):
        await client.upsert(helpers.spec("rs", name))

    async def all_ran() -> bool:
        return len(reconciler.runs) == 3

    assert await helpers.eventually(all_ran, timeout=15)
    await ctl.queue.drained()
    before = dict(reconciler.runs)

    assert await ctl.resync() == 1  # only the one that has not converged
    await ctl.queue.drained()
    assert reconciler.runs["rs.slow-p3"] == before["rs.slow-p3"] + 1
    assert reconciler.runs["rs.p1"] == before["rs.p1"]

    # Half a period later every project is due again.
    ctl.settings = dataclasses.replace(ctl.settings, resync_seconds=0.2)
    await asyncio.sleep(0.15)
    assert await ctl.resync() == 3
    await ctl.queue.drained()
    assert reconciler.runs["rs.p1"] == before["rs.p1"] + 1


def peer_status(service: str, project: str, state: str = "Ready") -> bytes:
    return json.dumps({
        "service": service, "organization": "rs", "project": project,
        "namespace": f"rs-{project}", "generation": 1, "state": state,
        "reason": "Reconciled", "observedAt": "2026-12-05T00:00:00Z",
    }).encode()  # fmt: skip


async def test_a_project_waiting_for_one_peer_does_not_run_for_the_others(
    controller: tuple[Controller, Counting], client: Client
) -> None:
    ctl, reconciler = controller
    await client.upsert(helpers.spec("rs", "wait-a"))

    async def ran(times: int) -> bool:
        return reconciler.runs["rs.wait-a"] >= times

    assert await helpers.eventually(lambda: ran(1), timeout=15)
    await ctl.queue.drained()
    await client.js.publish("vpcbus.status.ipam.rs.wait-a", peer_status("ipam", "wait-a"))
    await asyncio.sleep(0.5)  # delivered and handled: IPAM's status cannot unblock it
    assert reconciler.runs["rs.wait-a"] == 1
    await client.js.publish("vpcbus.status.vpc.rs.wait-a", peer_status("vpc", "wait-a"))
    assert await helpers.eventually(lambda: ran(2), timeout=15)


async def test_a_project_waiting_for_a_peer_does_not_run_for_its_pending_statuses(
    controller: tuple[Controller, Counting], client: Client
) -> None:
    """Only a status other than Pending can change a wait for the peer to be Ready."""
    ctl, reconciler = controller
    await client.upsert(helpers.spec("rs", "wait-b"))
    assert await helpers.eventually(lambda: ran(reconciler, "rs.wait-b", 1), timeout=15)
    await ctl.queue.drained()
    subject = "vpcbus.status.vpc.rs.wait-b"
    await client.js.publish(subject, peer_status("vpc", "wait-b", "Pending"))
    await asyncio.sleep(0.5)  # delivered and handled
    assert reconciler.runs["rs.wait-b"] == 1
    await client.js.publish(subject, peer_status("vpc", "wait-b", "Error"))
    assert await helpers.eventually(lambda: ran(reconciler, "rs.wait-b", 2), timeout=15)
    await ctl.queue.drained()
    await client.js.publish(subject, peer_status("vpc", "wait-b", "Pending"))
    await asyncio.sleep(0.5)
    assert reconciler.runs["rs.wait-b"] == 2
    await client.js.publish(subject, peer_status("vpc", "wait-b", "Ready"))
    assert await helpers.eventually(lambda: ran(reconciler, "rs.wait-b", 3), timeout=15)


async def test_a_peer_status_of_an_unknown_project_runs_nothing_until_it_owns_something(
    controller: tuple[Controller, Counting], client: Client
) -> None:
    ctl, reconciler = controller
    status = {"service": "ipam", "organization": "rs", "project": "ghost",
              "namespace": "rs-ghost", "generation": 1, "state": "Ready",
              "reason": "Reconciled", "observedAt": "2026-12-05T00:00:00Z"}  # fmt: skip
    before = ctl.counters.unknown_projects
    await client.js.publish("vpcbus.status.ipam.rs.ghost", json.dumps(status).encode())

    async def handled() -> bool:
        return ctl.counters.unknown_projects > before

    assert await helpers.eventually(handled, timeout=15)
    assert reconciler.runs["rs.ghost"] == 0  # no record, no members, nothing owned

    reconciler.owned = ["rs.ghost"]  # backend objects of it (an orphan): the resync tears down
    assert await ctl.resync() >= 1
    await ctl.queue.drained()
    assert reconciler.runs["rs.ghost"] == 1


async def test_a_torn_down_tombstone_is_not_swept_again_until_it_changes(
    controller: tuple[Controller, Counting], client: Client
) -> None:
    ctl, reconciler = controller
    await client.upsert(helpers.spec("rs", "gone"))
    await helpers.eventually(lambda: ran(reconciler, "rs.gone", 1), timeout=15)
    await client.delete(ProjectRef(organization="rs", name="gone"))
    assert await helpers.eventually(lambda: ran(reconciler, "rs.gone", 2), timeout=15)
    await ctl.queue.drained()
    swept = reconciler.runs["rs.gone"]

    # The resync and a peer's status run it: its teardown result again, no sweep.
    ctl.settings = dataclasses.replace(ctl.settings, resync_seconds=0.0)
    assert await ctl.resync() >= 1
    await client.js.publish("vpcbus.status.ipam.rs.gone", peer_status("ipam", "gone"))
    await asyncio.sleep(0.5)
    await ctl.queue.drained()
    assert reconciler.runs["rs.gone"] == swept
    status = await client.status("dns", "rs", "gone")
    assert status is not None and (status.state, status.message) == ("Deleted", "swept")

    # The doctor's repair sweeps; so does a change of the record (deleted again).
    await doctoring.repair(ctl, ["rs.gone"])
    assert reconciler.runs["rs.gone"] == swept + 1
    await client.delete(ProjectRef(organization="rs", name="gone"))
    assert await helpers.eventually(lambda: ran(reconciler, "rs.gone", swept + 2), timeout=15)


async def ran(reconciler: Counting, key: str, times: int) -> bool:
    return reconciler.runs[key] >= times
