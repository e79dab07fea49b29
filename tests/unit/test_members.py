"""Member records (NICs, EIPs) folded per member into KV and mirrored in memory
(vpcbus_runtime.members.MemberIndex), over the in-memory KV fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
from nats.js.kv import KeyValue

from tests.unit.fakes import FakeKV
from vpcbus_proto.members import EipSpec, WorkloadSpec
from vpcbus_runtime.members import MemberIndex, MemberRecord, member_kv_key
from vpcbus_runtime.records import Fold

KEY = "acme.shop"
NIC = WorkloadSpec(organization="acme", project="shop", kind="vm", name="ubuntu")
EIP = EipSpec(organization="acme", project="shop", name="web")


async def started(kv: FakeKV) -> MemberIndex:
    index = MemberIndex(cast(KeyValue, kv))
    await asyncio.wait_for(index.start(), 2)
    return index


@pytest.fixture
async def index(kv: FakeKV) -> AsyncIterator[MemberIndex]:
    i = await started(kv)
    yield i
    await i.stop()


async def fold(
    index: MemberIndex, generation: int, event_id: str, nic: WorkloadSpec | None = NIC
) -> tuple[Fold, MemberRecord | None]:
    """Fold a ``workload.attached`` (``nic``) or ``workload.detached`` (None) of NIC."""
    return await index.fold(KEY, NIC.member, generation=generation, event_id=event_id, workload=nic)


def stored(kv: FakeKV, member: str = NIC.member) -> MemberRecord:
    return MemberRecord.model_validate_json(kv.data[member_kv_key(KEY, member)][0])


async def test_the_higher_generation_wins(index: MemberIndex, kv: FakeKV) -> None:
    outcome, record = await fold(index, 5, "e5")
    assert outcome is Fold.APPLIED and record is not None
    assert (record.member, record.generation, record.workload) == (NIC.member, 5, NIC)
    assert kv_key_of(record) in kv.data and stored(kv) == record
    assert index.of(KEY) == {NIC.member: record}
    assert (await fold(index, 5, "e5"))[0] is Fold.DUPLICATE  # a redelivery
    static = NIC.model_copy(update={"ip": "10.0.0.9"})
    assert await fold(index, 5, "other", static) == (Fold.STALE, record)  # same generation
    assert await fold(index, 4, "e4", static) == (Fold.STALE, record)
    outcome, newer = await fold(index, 6, "e6", static)
    assert outcome is Fold.APPLIED and newer is not None and newer.workload == static
    assert index.of(KEY) == {NIC.member: newer} and stored(kv) == newer


def kv_key_of(record: MemberRecord) -> str:
    return member_kv_key(f"{record.organization}.{record.project}", record.member)


async def test_removal_leaves_a_tombstone_that_stops_late_events(index: MemberIndex) -> None:
    await fold(index, 1, "e1")
    outcome, tombstone = await fold(index, 2, "e2", None)
    assert outcome is Fold.APPLIED and tombstone is not None
    assert tombstone.deleted and tombstone.deleted_at is not None and tombstone.workload is None
    assert (await fold(index, 1, "e1"))[0] is Fold.STALE  # a late attach does not revive it
    assert index.of(KEY) == {NIC.member: tombstone}
    outcome, back = await fold(index, 3, "e3")
    assert outcome is Fold.APPLIED and back is not None and not back.deleted


async def test_a_removal_of_an_unknown_member_is_recorded(index: MemberIndex) -> None:
    outcome, tombstone = await index.fold(KEY, EIP.member, generation=7, event_id="e7")
    assert outcome is Fold.APPLIED and tombstone is not None and tombstone.deleted
    assert (await index.fold(KEY, EIP.member, generation=3, event_id="e3", eip=EIP))[0] is (
        Fold.STALE
    )


async def test_purge_removes_only_an_unchanged_tombstone(index: MemberIndex, kv: FakeKV) -> None:
    _, live = await fold(index, 1, "e1")
    assert live is not None
    assert await index.purge(KEY, NIC.member, live) is False  # not a tombstone
    _, tombstone = await fold(index, 2, "e2", None)
    assert tombstone is not None
    _, back = await fold(index, 3, "e3")  # re-attached after the tombstone was read
    assert await index.purge(KEY, NIC.member, tombstone) is False
    assert index.of(KEY) == {NIC.member: back}
    _, tombstone = await fold(index, 4, "e4", None)
    assert tombstone is not None
    assert await index.purge(KEY, NIC.member, tombstone) is True
    assert index.of(KEY) == {} and index.projects() == []
    assert member_kv_key(KEY, NIC.member) not in kv.data
    assert await index.purge(KEY, NIC.member, tombstone) is True  # already gone
    await kv.settle()
    assert index.of(KEY) == {}  # the watcher's late copies do not bring it back


async def test_purge_loses_to_a_replica_that_rewrote_the_tombstone(kv: FakeKV) -> None:
    mine, theirs = await started(kv), await started(kv)
    try:
        _, tombstone = await fold(mine, 2, "e2", None)
        assert tombstone is not None

        async def reattached_elsewhere(key: str) -> None:
            await kv.settle()
            assert (await fold(theirs, 3, "e3"))[0] is Fold.APPLIED

        kv.before_write = reattached_elsewhere
        assert await mine.purge(KEY, NIC.member, tombstone) is False
        assert stored(kv).generation == 3 and not stored(kv).deleted
    finally:
        await mine.stop()
        await theirs.stop()


async def test_forget_project_removes_all_of_its_members_only(
    index: MemberIndex, kv: FakeKV
) -> None:
    await fold(index, 1, "e1")
    await index.fold(KEY, EIP.member, generation=1, event_id="x", eip=EIP)
    other = WorkloadSpec(organization="acme", project="other", kind="pod", name="p")
    await index.fold("acme.other", other.member, generation=1, event_id="y", workload=other)
    assert index.projects() == ["acme.other", KEY]
    assert await index.forget_project(KEY) == 2
    assert index.projects() == ["acme.other"]
    assert [k for k in kv.data if k.startswith("member.")] == [
        member_kv_key("acme.other", other.member)
    ]
    assert await index.forget_project(KEY) == 0


async def test_a_racing_replica_decides_the_outcome(kv: FakeKV) -> None:
    mine, theirs = await started(kv), await started(kv)
    try:

        async def newer_arrives(key: str) -> None:
            assert (await fold(theirs, 9, "e9", None))[0] is Fold.APPLIED

        kv.before_write = newer_arrives  # between our read and our create
        outcome, current = await fold(mine, 2, "e2")
        assert outcome is Fold.STALE and current is not None and current.generation == 9
        assert mine.of(KEY)[NIC.member].deleted
    finally:
        await mine.stop()
        await theirs.stop()


async def test_the_index_mirrors_only_member_keys_and_loads_before_ready(kv: FakeKV) -> None:
    await kv.put("project.acme.shop", b"{}")  # the same bucket holds project records
    first = await started(kv)
    try:
        _, record = await fold(first, 1, "e1")
    finally:
        await first.stop()
    await kv.put("project.acme.other", b"{}")
    second = await started(kv)  # ready: the initial values are in
    try:
        assert second.projects() == [KEY] and second.of(KEY) == {NIC.member: record}
        third = await started(kv)
        try:
            await fold(third, 2, "e2", None)
            await kv.settle()
            assert second.of(KEY)[NIC.member].deleted  # a live change from another replica
        finally:
            await third.stop()
    finally:
        await second.stop()
