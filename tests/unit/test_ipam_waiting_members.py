"""IPAM retries a project whose NIC or EIP waits for a free address (``NoAvailableIPs``), so
the member becomes Ready by itself once an address frees up, without another event and
sooner than the periodic resync. The address book runs over the in-memory KV fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import pytest
from nats.js.kv import KeyValue

from tests.unit.fakes import FakeKV
from vpcbus_ipam.addresses import AddressBook
from vpcbus_ipam.pools import load_pools
from vpcbus_ipam.reconciler import RETRY_EXHAUSTED, IpamReconciler, Policy
from vpcbus_proto.members import WorkloadSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import ServiceStatus
from vpcbus_runtime.members import MemberRecord
from vpcbus_runtime.reconciling import Context, Result
from vpcbus_runtime.records import ProjectRecord

KEY = "acme.tiny"


class NoPeers:
    """Admission never reads peers; only teardown does."""

    async def status(self, service: str, org: str, project: str) -> ServiceStatus | None:
        raise AssertionError("must not be called")


@pytest.fixture
async def reconciler() -> AsyncIterator[IpamReconciler]:
    book = AddressBook(cast(KeyValue, FakeKV()), quarantine=0.0)
    await book.start()
    yield IpamReconciler(book, Policy(pools=load_pools(None)))
    await book.stop()


def nic(name: str, *, detached: bool = False) -> MemberRecord:
    spec = WorkloadSpec(organization="acme", project="tiny", kind="pod", name=name)
    return MemberRecord(
        organization="acme", project="tiny", member=spec.member, generation=2 if detached else 1,
        event_id=f"e-{name}", workload=None if detached else spec,
        deleted_at=datetime.now(UTC) if detached else None,
    )  # fmt: skip


async def reconcile(r: IpamReconciler, pods: list[str], gone: tuple[str, ...] = ()) -> Result:
    """One reconcile of a /29 project (5 usable addresses) with these pods attached and the
    ``gone`` ones detached."""
    spec = ProjectSpec(
        organization="acme", name="tiny", cidr_block="10.9.0.0/29", egress_network_type="cloud"
    )
    record = ProjectRecord(organization="acme", name="tiny", generation=1, event_id="p", spec=spec)
    recs = [nic(p) for p in pods] + [nic(p, detached=True) for p in gone]
    return await r.reconcile(
        Context(KEY, "acme", "tiny", record, NoPeers(), {m.member: m for m in recs})
    )


def state(result: Result, pod: str) -> tuple[str, str]:
    found = next(m for m in result.members if m.member == f"workload.pod.{pod}.default")
    return found.state, found.reason


async def test_a_nic_waiting_for_an_address_requeues_its_project(
    reconciler: IpamReconciler,
) -> None:
    full = await reconcile(reconciler, [f"p{i}" for i in range(5)])
    assert full.requeue_after is None
    assert {m.state for m in full.members} == {"Ready"}

    pods = [f"p{i}" for i in range(6)]
    waiting = await reconcile(reconciler, pods)
    assert state(waiting, "p5") == ("Error", "NoAvailableIPs")
    assert waiting.requeue_after == RETRY_EXHAUSTED

    # p0 detaches: this run addresses the NICs before it releases p0's address, so p5 still
    # waits and the project is requeued; the retry (no new event) gives p5 the freed address.
    detached = await reconcile(reconciler, pods[1:], gone=("p0",))
    assert state(detached, "p0") == ("Deleted", "Released")
    assert detached.requeue_after == RETRY_EXHAUSTED
    retried = await reconcile(reconciler, pods[1:], gone=("p0",))
    assert state(retried, "p5") == ("Ready", "Allocated")
    assert retried.requeue_after is None
    assert retried.addresses is not None and retried.addresses.subnet is not None
    assert (retried.addresses.subnet.in_use, retried.addresses.subnet.available) == (5, 0)
