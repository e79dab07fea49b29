"""Folding events into a service's record (generation ordering) and status de-duplication."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from tests.unit.fakes import FakeJetStream, FakeKV
from vpcbus_proto import subjects
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts, ServiceStatus
from vpcbus_runtime import records
from vpcbus_runtime.reconciling import Result
from vpcbus_runtime.records import Fold, ProjectRecord, RecordStore, kv_key
from vpcbus_runtime.statuses import StatusPublisher

KEY = "acme.shop"


def spec(cidr: str = "10.0.0.0/24") -> ProjectSpec:
    return ProjectSpec(
        organization="acme", name="shop", cidr_block=cidr, egress_network_type="cloud"
    )


@pytest.fixture
def kv() -> FakeKV:
    return FakeKV()


@pytest.fixture
def store(kv: FakeKV) -> RecordStore:
    return RecordStore(cast(KeyValue, kv))


async def fold(
    store: RecordStore, generation: int, event_id: str, s: ProjectSpec | None
) -> tuple[Fold, ProjectRecord | None]:
    return await store.fold(
        KEY, organization="acme", name="shop", generation=generation, event_id=event_id, spec=s
    )


async def test_first_event_is_applied_and_stored(store: RecordStore, kv: FakeKV) -> None:
    outcome, record = await fold(store, 3, "e3", spec())
    assert outcome is Fold.APPLIED
    assert record is not None and record.generation == 3 and record.spec == spec()
    assert not record.deleted and record.deleted_at is None and record.previous_spec is None
    stored, revision = await store.get(KEY)
    assert stored == record and revision == kv.data[kv_key(KEY)][1]
    assert kv_key(KEY) == "project.acme.shop"


async def test_generation_ordering(store: RecordStore) -> None:
    await fold(store, 5, "e5", spec())
    assert (await fold(store, 5, "e5", spec()))[0] is Fold.DUPLICATE  # redelivery
    assert (await fold(store, 5, "other", spec("10.1.0.0/24")))[0] is Fold.STALE  # same gen
    assert (await fold(store, 4, "e4", spec("10.2.0.0/24")))[0] is Fold.STALE
    outcome, current = await fold(store, 4, "e4", None)
    assert outcome is Fold.STALE and current is not None and current.spec == spec()
    outcome, record = await fold(store, 6, "e6", spec("10.3.0.0/24"))
    assert outcome is Fold.APPLIED and record is not None
    assert record.previous_spec == spec()  # kept for immutability checks
    assert (await store.get(KEY))[0] == record


async def test_deletion_leaves_a_tombstone_that_stops_late_events(store: RecordStore) -> None:
    await fold(store, 1, "e1", spec())
    outcome, tombstone = await fold(store, 2, "e2", None)
    assert outcome is Fold.APPLIED and tombstone is not None
    assert tombstone.deleted and tombstone.deleted_at is not None
    assert tombstone.previous_spec == spec()
    # A late or redelivered create for an older generation does not resurrect it.
    assert (await fold(store, 1, "e1", spec()))[0] is Fold.STALE
    assert (await store.get(KEY))[0] == tombstone
    # A newer create does.
    outcome, record = await fold(store, 3, "e3", spec())
    assert outcome is Fold.APPLIED and record is not None and not record.deleted


async def test_deleting_a_deleted_project_advances_the_tombstone(store: RecordStore) -> None:
    await fold(store, 1, "e1", spec())
    _, tombstone = await fold(store, 2, "e2", None)
    # A later deletion is applied: every service then reports Deleted at the new generation,
    # which is what `vpcbus project delete --wait` waits for. The previous spec is kept.
    outcome, current = await fold(store, 3, "e3", None)
    assert tombstone is not None and current is not None
    assert outcome is Fold.APPLIED and current.deleted and current.generation == 3
    assert current.previous_spec is None  # the tombstone's spec, which was none
    assert (await store.get(KEY))[0] == current


async def test_a_racing_writer_is_noticed_and_decides_the_outcome(
    store: RecordStore, kv: FakeKV
) -> None:
    await fold(store, 1, "e1", spec())

    async def newer_arrives(key: str) -> None:
        racer = RecordStore(cast(KeyValue, kv))
        outcome, _ = await racer.fold(
            KEY,
            organization="acme",
            name="shop",
            generation=9,
            event_id="e9",
            spec=spec("10.9.0.0/24"),
        )
        assert outcome is Fold.APPLIED

    kv.before_write = newer_arrives
    outcome, current = await fold(store, 2, "e2", spec("10.2.0.0/24"))
    # Compare-and-set failed, the fold re-read, and generation 2 is now stale.
    assert outcome is Fold.STALE
    assert current is not None and current.generation == 9
    assert (await store.get(KEY))[0] == current


async def test_a_racing_first_writer_is_noticed_too(store: RecordStore, kv: FakeKV) -> None:
    async def racer(key: str) -> None:
        await RecordStore(cast(KeyValue, kv)).fold(
            KEY, organization="acme", name="shop", generation=1, event_id="x", spec=spec()
        )

    kv.before_write = racer
    outcome, current = await fold(store, 2, "e2", None)
    assert outcome is Fold.APPLIED and current is not None and current.deleted
    assert current.previous_spec == spec()


async def test_keys_and_purge(store: RecordStore, kv: FakeKV) -> None:
    assert await store.keys() == []
    await fold(store, 1, "e1", spec())
    await kv.put("other.key", b"x")  # not a project record
    assert await store.keys() == [KEY]
    _, revision = await store.get(KEY)
    assert not await store.purge(KEY, revision)  # not a tombstone
    await fold(store, 2, "e2", None)
    _, revision = await store.get(KEY)
    assert not await store.purge(KEY, revision - 1)  # rewritten since
    assert await store.purge(KEY, revision)
    assert await store.get(KEY) == (None, 0)
    assert await store.purge(KEY, revision)  # already gone


async def test_a_read_parses_a_revision_once_and_sees_other_writers(
    store: RecordStore, kv: FakeKV
) -> None:
    _, written = await fold(store, 1, "e1", spec())
    first, revision = await store.get(KEY)
    assert first is written  # the fold's own record: nothing parsed again
    assert (await store.get(KEY))[0] is first
    # Another replica writes the key: the next read parses its value, not what we remember.
    other = RecordStore(cast(KeyValue, kv))
    await other.fold(KEY, organization="acme", name="shop", generation=2, event_id="e2",
                     spec=spec("10.2.0.0/24"))  # fmt: skip
    second, newer = await store.get(KEY)
    assert newer > revision and second is not None and second.generation == 2
    assert second.spec == spec("10.2.0.0/24")


async def test_a_read_from_a_lagging_replica_does_not_go_back(
    store: RecordStore, kv: FakeKV, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct gets of a clustered bucket may be answered by a stream replica that lags: a
    revision older than one this process wrote is answered with what it wrote."""
    await fold(store, 1, "e1", spec())
    stale = await kv.get(kv_key(KEY))
    _, newer = await fold(store, 2, "e2", spec("10.2.0.0/24"))

    async def lagging(key: str) -> Any:
        return stale

    monkeypatch.setattr(kv, "get", lagging)
    record, revision = await store.get(KEY)
    assert record is newer and revision == kv.data[kv_key(KEY)][1] > stale.revision


async def test_parsed_records_are_bounded(
    store: RecordStore, kv: FakeKV, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "PARSED_RECORDS", 3)
    for i in range(5):
        await store.fold(f"acme.p{i}", organization="acme", name=f"p{i}", generation=1,
                         event_id="e", spec=spec())  # fmt: skip
    await store.get("acme.p2")  # read: the most recent now
    assert list(store._parsed) == ["acme.p3", "acme.p4", "acme.p2"]
    assert (await store.get("acme.p0"))[0] is not None  # forgotten ones are read again


class CountingKV(FakeKV):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key: str) -> Any:
        self.gets += 1
        return await super().get(key)


async def created(
    store: RecordStore, generation: int, event_id: str, s: ProjectSpec
) -> tuple[Fold, ProjectRecord | None]:
    return await store.fold(KEY, organization="acme", name="shop", generation=generation,
                            event_id=event_id, spec=s, likely_new=True)  # fmt: skip


async def test_a_created_event_creates_the_key_without_reading_it_first() -> None:
    kv = CountingKV()
    store = RecordStore(cast(KeyValue, kv))
    outcome, record = await created(store, 1, "e1", spec())
    assert outcome is Fold.APPLIED and kv.gets == 0
    assert (await store.get(KEY))[0] == record and record is not None
    assert record.previous_spec is None and record.deleted_at is None
    # Redelivered, then an older one: the key exists, so the fold reads and compares.
    assert await created(store, 1, "e1", spec()) == (Fold.DUPLICATE, record)
    assert (await created(store, 0, "e0", spec()))[0] is Fold.STALE
    # Created again over its tombstone: applied over it, as without the hint.
    await fold(store, 2, "e2", None)
    outcome, back = await created(store, 3, "e3", spec("10.3.0.0/24"))
    assert outcome is Fold.APPLIED and back is not None and back.previous_spec is None
    assert (await store.get(KEY))[0] == back


@settings(deadline=None, max_examples=100)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.sampled_from(["a", "b"]), st.booleans(), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_fold_keeps_the_highest_generation(events: list[tuple[int, str, bool, bool]]) -> None:
    """Also when events claim to be new (``likely_new``, a ``created`` event) at random."""

    async def scenario() -> None:
        store = RecordStore(cast(KeyValue, FakeKV()))
        best: tuple[int, str] | None = None
        expected_spec: ProjectSpec | None = None
        for generation, tag, delete, new in events:
            event_id = f"{generation}{tag}"
            outcome, record = await store.fold(
                KEY, organization="acme", name="shop", generation=generation,
                event_id=event_id, spec=None if delete else spec(), likely_new=new,
            )  # fmt: skip
            if best is None or generation > best[0]:
                expected = Fold.APPLIED
                best = (generation, event_id)
                expected_spec = None if delete else spec()
            elif (generation, event_id) == best:
                expected = Fold.DUPLICATE
            else:
                expected = Fold.STALE
            assert outcome is expected
            assert record is not None and (record.generation, record.event_id) == best
            assert record.spec == expected_spec

    asyncio.run(scenario())


# -- status publishing --------------------------------------------------------------------------


@pytest.fixture
def js() -> FakeJetStream:
    return FakeJetStream()


@pytest.fixture
def publisher(js: FakeJetStream) -> StatusPublisher:
    return StatusPublisher(cast(JetStreamContext, js), "vpc")


async def test_status_is_published_on_its_subject_as_camel_case(
    publisher: StatusPublisher, js: FakeJetStream
) -> None:
    result = Result("Ready", "Reconciled", "ok", objects=["Logical_Router/x"])
    status = await publisher.publish("acme", "shop", 4, result)
    assert status is not None
    [(subject, payload, stream)] = js.published
    assert subject == "vpcbus.status.vpc.acme.shop" and stream == subjects.STATUS_STREAM
    wire = json.loads(payload)
    assert wire["observedAt"] and wire["namespace"] == "acme-shop" and wire["generation"] == 4
    assert ServiceStatus.model_validate(wire) == status
    assert status.objects == ["Logical_Router/x"]


async def test_an_unchanged_outcome_is_not_republished(
    publisher: StatusPublisher, js: FakeJetStream
) -> None:
    result = Result("Ready", "Reconciled", "ok", requeue_after=3.0, objects=("a", "b"))
    assert await publisher.publish("acme", "shop", 1, result) is not None
    # requeue_after is not part of the outcome; a list equal to the tuple is the same objects
    same = Result("Ready", "Reconciled", "ok", objects=["a", "b"])
    assert await publisher.publish("acme", "shop", 1, same) is None
    assert len(js.published) == 1
    assert await publisher.publish("acme", "shop", 1, same, force=True) is not None
    assert len(js.published) == 2


BASE = Result("Ready", "Reconciled", "ok", objects=("a", "b"))
FACTS = AddressFacts(cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1")


@pytest.mark.parametrize(
    ("generation", "changed"),
    [
        (2, BASE),
        (1, dataclasses.replace(BASE, state="Pending")),
        (1, dataclasses.replace(BASE, reason="Other")),
        (1, dataclasses.replace(BASE, message="different")),
        (1, dataclasses.replace(BASE, objects=("a",))),
        (1, dataclasses.replace(BASE, addresses=FACTS)),
    ],
)
async def test_any_change_of_outcome_is_published(
    publisher: StatusPublisher, js: FakeJetStream, generation: int, changed: Result
) -> None:
    await publisher.publish("acme", "shop", 1, BASE)
    assert await publisher.publish("acme", "shop", generation, changed) is not None
    assert len(js.published) == 2


async def test_dedupe_is_per_project_and_purge_forgets(
    publisher: StatusPublisher, js: FakeJetStream
) -> None:
    result = Result("Ready", "Reconciled")
    await publisher.publish("acme", "shop", 1, result)
    assert await publisher.publish("acme", "web", 1, result) is not None
    await publisher.purge("acme", "shop")
    assert js.purged == [(subjects.STATUS_STREAM, "vpcbus.status.vpc.acme.shop")]
    assert await publisher.publish("acme", "shop", 1, result) is not None
    assert await publisher.publish("acme", "web", 1, result) is None
    assert len(js.published) == 3


async def test_a_restarted_publisher_does_not_republish_what_the_stream_holds(
    js: FakeJetStream,
) -> None:
    """The dedupe memory starts empty in a new process: the first outcome of a project is
    compared with the status already stored, so a restart does not wake every peer of every
    project with an unchanged status (bench/), while a changed one is still published."""
    first = StatusPublisher(cast(JetStreamContext, js), "vpc")
    facts = dataclasses.replace(BASE, addresses=FACTS)
    await first.publish("acme", "shop", 1, facts)
    await first.publish("acme", "web", 1, BASE)
    restarted = StatusPublisher(cast(JetStreamContext, js), "vpc")
    assert await restarted.publish("acme", "shop", 1, facts) is None
    assert restarted.published("acme.shop")
    assert await restarted.publish("acme", "web", 2, BASE) is not None  # a new generation
    assert await restarted.publish("acme", "new", 1, BASE) is not None  # nothing stored
    assert await restarted.publish("acme", "shop", 1, facts, force=True) is not None
    assert [s for s, _, _ in js.published].count("vpcbus.status.vpc.acme.shop") == 2
    assert len(js.published) == 5


async def test_a_project_created_here_is_published_without_reading_the_stream_first(
    js: FakeJetStream,
) -> None:
    """A record this process just created (``created``): its first status goes out without
    the read of a stored one. Only that first publish; later ones are de-duplicated as ever."""
    first = StatusPublisher(cast(JetStreamContext, js), "vpc")
    await first.publish("acme", "shop", 1, BASE)  # an older incarnation's, say
    restarted = StatusPublisher(cast(JetStreamContext, js), "vpc")
    restarted.created("acme.shop")
    js.reads = 0
    assert await restarted.publish("acme", "shop", 1, BASE) is not None  # not compared
    assert js.reads == 0
    assert await restarted.publish("acme", "shop", 1, BASE) is None
    # Without the hint the stored status is read and an unchanged one is not republished.
    other = StatusPublisher(cast(JetStreamContext, js), "vpc")
    assert await other.publish("acme", "shop", 1, BASE) is None
    assert js.reads == 1
    # Known to this process already: the hint changes nothing.
    restarted.created("acme.shop")
    assert await restarted.publish("acme", "shop", 1, BASE) is None
    assert len(js.published) == 2
