"""IPAM's address book over an in-memory KV: allocation through compare-and-set.

Every address is a key created or updated with compare-and-set and every holder has one
binding key, so two replicas over one bucket never hand out an address twice; a claim
that a crash left without its binding is adopted or swept. ``FakeKV.before_write`` lets a
test run a second replica at an exact point between two writes of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fakes import FakeKV
from tests.unit.ipam_fixtures import (
    Clock,
    check_store,
    crashed_claim,
    ip,
    pool,
    started,
    stored,
)
from vpcbus_ipam.addresses import AddressBook, Binding, Holding, binding_key, namespace_key
from vpcbus_ipam.allocator import AllocationError
from vpcbus_ipam.pools import Pool, project_subnet

P = pool()  # gateway .1: .2 .. .6


async def addr(book: AddressBook, holder: str, space: Pool = P) -> str:
    return (await book.ensure(space, holder)).ip


def mac_of(a: IPv4Address) -> str:
    """A default MAC derived from the address (as OVN's dynamic addresses are)."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in a.packed)


async def test_lowest_free_first_sticky_and_exhaustion(
    book: AddressBook, kv: FakeKV, clock: Clock
) -> None:
    assert [await addr(book, f"h{i}") for i in range(5)] == [f"10.9.0.{i}" for i in range(2, 7)]
    assert await book.ensure(P, "h0") == Binding(ip="10.9.0.2")
    with pytest.raises(AllocationError) as info:
        await book.ensure(P, "h5")
    assert info.value.reason == "NoAvailableIPs"
    holdings, bindings = stored(kv, "pool.p")
    assert holdings[ip("10.9.0.3")] == Holding(holder="h1", at=clock.now)
    assert bindings["h1"] == Binding(ip="10.9.0.3")
    assert book.held("pool.p") == {f"h{i}": ip(f"10.9.0.{i + 2}") for i in range(5)}
    check_store(kv, P)


async def test_release_quarantines_and_the_holder_gets_its_address_back(
    book: AddressBook, kv: FakeKV, clock: Clock
) -> None:
    for holder in "abc":
        await book.ensure(P, holder)
    assert await book.release(P, "b") == ip("10.9.0.3")
    assert stored(kv, "pool.p")[0][ip("10.9.0.3")] == Holding(holder="b", held=False, at=clock.now)
    assert book.binding("pool.p", "b") is None and "bind.pool.p.b" not in kv.data
    assert await addr(book, "d") == "10.9.0.5"  # .3 is quarantined for everyone else
    clock.advance(3600)
    assert await addr(book, "b") == "10.9.0.3"  # sticky, also after the quarantine
    await book.release(P, "b")
    clock.advance(59)
    assert await addr(book, "e") == "10.9.0.6"
    clock.advance(1)
    assert await addr(book, "f") == "10.9.0.3"  # quarantine over: reused, lowest first
    assert await book.release(P, "nobody") is None
    check_store(kv, P)


async def test_a_static_change_moves_the_nic_keeps_its_mac_and_quarantines_the_old_address(
    book: AddressBook, kv: FakeKV, clock: Clock
) -> None:
    first = await book.ensure(P, "vm", default_mac=mac_of)
    assert first == Binding(ip="10.9.0.2", mac="0a:58:0a:09:00:02")
    clock.advance(1)
    moved = await book.ensure(P, "vm", static=ip("10.9.0.5"), default_mac=mac_of)
    assert moved == Binding(ip="10.9.0.5", mac=first.mac, static=True)
    assert stored(kv, "pool.p")[0][ip("10.9.0.2")] == Holding(holder="vm", held=False, at=clock.now)
    assert await addr(book, "other") == "10.9.0.3"
    with pytest.raises(AllocationError) as info:  # refused: the NIC keeps what it has
        await book.ensure(P, "vm", static=ip("10.9.0.3"))
    assert (info.value.reason, info.value.message) == (
        "IPConflict",
        "10.9.0.3 is already held by other",
    )
    with pytest.raises(AllocationError) as info:
        await book.ensure(P, "other", static=ip("10.9.0.2"))
    assert info.value.reason == "IPQuarantined"
    assert book.binding("pool.p", "vm") == moved
    # Dropping the static request keeps the address; a requested MAC replaces the old one.
    again = await book.ensure(P, "vm", mac="0a:00:00:00:00:01")
    assert again == Binding(ip="10.9.0.5", mac="0a:00:00:00:00:01")
    check_store(kv, P)


async def test_a_restarted_replica_sees_every_holding_before_it_allocates(kv: FakeKV) -> None:
    first = await started(kv)
    held = await first.ensure(P, "old")
    await first.stop()
    second = await started(kv)  # ready only once the initial values are loaded
    try:
        assert second.held("pool.p") == {"old": ip(held.ip)}
        assert await second.ensure(P, "old") == held
        assert await addr(second, "new") == "10.9.0.3"
    finally:
        await second.stop()


# -- crashes and failed writes ----------------------------------------------------------------


async def test_a_claim_a_crash_left_unbound_is_adopted_by_its_holder(
    book: AddressBook, kv: FakeKV, clock: Clock
) -> None:
    revision = await crashed_claim(kv, "pool.p.10.9.0.4", "vm", clock.now)
    assert await addr(book, "x") == "10.9.0.2"  # .4 is taken, though nobody is bound
    assert await book.ensure(P, "vm") == Binding(ip="10.9.0.4")
    assert kv.data["pool.p.10.9.0.4"][1] == revision  # adopted as it is, not rewritten
    check_store(kv, P)


async def test_a_claim_a_crash_left_for_a_gone_holder_is_released(
    book: AddressBook, kv: FakeKV, clock: Clock
) -> None:
    await crashed_claim(kv, "pool.p.10.9.0.2", "gone", clock.now)
    assert await book.release(P, "gone") == ip("10.9.0.2")
    assert stored(kv, "pool.p")[0][ip("10.9.0.2")].held is False
    clock.advance(60)
    assert await addr(book, "next") == "10.9.0.2"


async def test_release_frees_every_address_the_holder_holds_and_no_other(
    book: AddressBook, kv: FakeKV, clock: Clock
) -> None:
    """A holder with its bound address and one a crash left claimed: both are released (found
    through the holder index); the other holders keep theirs."""
    for holder in "abc":
        await book.ensure(P, holder)  # .2 .3 .4
    await crashed_claim(kv, "pool.p.10.9.0.6", "b", clock.now)
    assert await book.release(P, "b") in {ip("10.9.0.3"), ip("10.9.0.6")}
    holdings = stored(kv, "pool.p")[0]
    assert sorted(a for a in holdings if holdings[a].held) == [ip("10.9.0.2"), ip("10.9.0.4")]
    assert {holdings[a].holder for a in (ip("10.9.0.3"), ip("10.9.0.6"))} == {"b"}
    assert await book.release(P, "b") is None  # nothing held any more
    check_store(kv, P)


async def test_a_claim_that_failed_midway_leaves_its_address_allocatable(
    book: AddressBook, kv: FakeKV
) -> None:
    async def store_down(key: str) -> None:
        raise ConnectionError("nats: connection closed")

    kv.before_write = store_down  # the first write to land (a's claim of .2) fails
    a, b = await asyncio.gather(book.ensure(P, "a"), book.ensure(P, "b"), return_exceptions=True)
    assert isinstance(a, ConnectionError)
    assert b == Binding(ip="10.9.0.3")  # chosen while .2 was being claimed
    assert [await addr(book, h) for h in "cdef"] == ["10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    check_store(kv, P)


# -- two replicas -----------------------------------------------------------------------------


async def test_two_replicas_serving_one_nic_at_once_agree_on_one_address(kv: FakeKV) -> None:
    """Replica b serves the same NIC between a's address claim and a's binding; a loses
    the binding race and must not give back the address b just bound, which a third NIC
    would otherwise get while b reports it as the first NIC's."""
    a, b = await started(kv), await started(kv)
    seen: list[Binding] = []

    async def b_serves_it_too(key: str) -> None:
        if not key.startswith("bind."):
            kv.before_write = b_serves_it_too  # wait for a's binding write
            return
        seen.append(await b.ensure(P, "vm"))
        kv.before_write = then_another_nic

    async def then_another_nic(key: str) -> None:
        kv.before_write = another_nic  # after a's next write has landed

    async def another_nic(key: str) -> None:
        await kv.settle()
        seen.append(await b.ensure(P, "other"))

    kv.before_write = b_serves_it_too
    try:
        got = await a.ensure(P, "vm")
        kv.before_write = None
        assert seen[0] == got == Binding(ip="10.9.0.2")
        assert all(s.ip != got.ip for s in seen[1:])
        assert check_store(kv, P)["vm"] == got
    finally:
        kv.before_write = None
        await a.stop()
        await b.stop()


OPS = st.tuples(
    st.sampled_from(["ensure", "ensure", "static", "release"]),
    st.integers(0, 1),  # replica
    st.integers(0, 5),  # holder
    st.integers(1, 15),  # static: host offset (.7 excluded, .1 the gateway)
)


async def run_op(book: AddressBook, space: Pool, op: tuple[str, int, int, int]) -> object:
    kind, _, n, offset = op
    if kind == "release":
        return await book.release(space, f"h{n}")
    static = space.network.network_address + offset if kind == "static" else None
    return await book.ensure(space, f"h{n}", static=static)


def check_batch(
    batch: list[tuple[str, int, int, int]], results: list[object], bindings: dict[str, Binding]
) -> None:
    """Calls for one holder with the same request agree with each other and with the store."""
    by_holder: dict[str, list[tuple[tuple[str, int], object]]] = {}
    for (kind, _, n, offset), result in zip(batch, results, strict=True):
        request = (kind, offset if kind == "static" else 0)
        by_holder.setdefault(f"h{n}", []).append((request, result))
    for holder, calls in by_holder.items():
        if len({request for request, _ in calls}) == 1 and calls[0][0][0] != "release":
            for _, answer in calls:
                assert not isinstance(answer, Binding) or answer == bindings[holder], calls


@settings(deadline=None, max_examples=60)
@given(
    st.lists(st.lists(OPS, min_size=1, max_size=4), min_size=1, max_size=10),
    st.booleans(),
    st.sampled_from([0.0, 3600.0]),
)
def test_two_replicas_never_hand_out_one_address_twice(
    batches: list[list[tuple[str, int, int, int]]], settle: bool, quarantine: float
) -> None:
    """Batches of concurrent calls on two replicas over one bucket, for disjoint and for
    the same holders; the store stays consistent after every batch."""
    space = pool("10.9.0.0/28", "10.9.0.1", "10.9.0.7")

    async def scenario() -> None:
        kv = FakeKV()
        books = [await started(kv, quarantine), await started(kv, quarantine)]
        released: set[str] = set()  # may hold a stale binding until next ensured
        try:
            for batch in batches:
                calls = [run_op(books[op[1]], space, op) for op in batch]
                results = await asyncio.gather(*calls, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException) and not isinstance(
                        result, AllocationError
                    ):
                        raise result
                ensured = {
                    f"h{n}"
                    for (_, _, n, _), r in zip(batch, results, strict=True)
                    if isinstance(r, Binding)
                }
                released = released - ensured | {f"h{n}" for k, _, n, _ in batch if k == "release"}
                bindings = check_store(kv, space, stale_ok=released)
                check_batch(batch, results, bindings)
                if settle:
                    await kv.settle()
            await kv.settle()
            for b in books:  # both mirrors end where the store is
                assert b.held(space.prefix) == {h: ip(a.ip) for h, a in bindings.items()}
        finally:
            for b in books:
                await b.stop()

    asyncio.run(scenario())


@settings(deadline=None, max_examples=25)
@given(st.permutations(range(32)))
def test_three_replicas_filling_a_space_at_once_hand_out_each_address_once(
    order: list[int],
) -> None:
    space = pool("10.9.0.0/27")  # 29 addresses for 32 NICs

    async def scenario() -> None:
        kv = FakeKV()
        books = [await started(kv) for _ in range(3)]
        try:
            calls = [books[i % 3].ensure(space, f"h{n}") for i, n in enumerate(order)]
            got = await asyncio.gather(*calls, return_exceptions=True)
            refused = [g for g in got if isinstance(g, AllocationError)]
            assert [e.reason for e in refused] == ["NoAvailableIPs"] * 3
            bindings = check_store(kv, space)
            assert sorted(ip(b.ip) for b in bindings.values()) == list(space.candidates())
            assert {
                f"h{n}": g for n, g in zip(order, got, strict=True) if isinstance(g, Binding)
            } == (bindings)
        finally:
            for b in books:
                await b.stop()

    asyncio.run(scenario())


# -- expiry, dropping a subnet, namespace claims ----------------------------------------------


async def test_expire_forgets_ended_quarantines_of_gone_holders(
    book: AddressBook, kv: FakeKV, clock: Clock
) -> None:
    for holder in "bac":
        await book.ensure(P, holder)
    await book.release(P, "a")
    await book.release(P, "b")
    assert await book.expire(P, keep=lambda h: False) == []  # still quarantined
    clock.advance(60)
    assert await book.expire(P, keep=lambda h: h == "b") == ["a=10.9.0.3"]
    assert "pool.p.10.9.0.3" not in kv.data and "pool.p.10.9.0.2" in kv.data
    assert set(book.slots("pool.p")) == {ip("10.9.0.2"), ip("10.9.0.4")}
    assert await addr(book, "a") == "10.9.0.2"  # forgotten: the lowest free, not its .3
    assert await addr(book, "b") == "10.9.0.3"
    assert await book.expire(P, keep=lambda h: False) == []  # held ones stay
    await kv.settle()
    assert set(book.slots("pool.p")) == set(stored(kv, "pool.p")[0])


async def test_drop_space_forgets_a_deleted_projects_subnet(book: AddressBook, kv: FakeKV) -> None:
    subnet = project_subnet("acme.shop", IPv4Network("10.0.0.0/24"), ip("10.0.0.1"))
    await book.ensure(subnet, "vm/a/default")
    await book.ensure(subnet, "vm/b/default")
    await book.release(subnet, "vm/b/default")
    await book.ensure(P, "kept")
    assert await book.drop_space(subnet.prefix) == 3  # two addresses, one binding
    assert sorted(kv.data) == ["bind.pool.p.kept", "pool.p.10.9.0.2"]
    await kv.settle()  # the watcher's late copies of the dropped keys change nothing
    assert book.spaces() == ["pool.p"]
    assert book.held(subnet.prefix) == {} and book.bindings(subnet.prefix) == {}
    assert await addr(book, "vm/b/default", subnet) == "10.0.0.2"


async def test_namespace_claims_are_first_come(kv: FakeKV, book: AddressBook) -> None:
    key = namespace_key("a-b-c")
    assert await book.claim(key, "a-b.c") == "a-b.c"
    assert await book.claim(key, "a.b-c") == "a-b.c"
    other = await started(kv)
    try:
        assert await other.claim(key, "a.b-c") == "a-b.c"  # it learns from the store
        await book.unclaim(key, "a.b-c")  # not the holder: nothing happens
        assert key in kv.data
        await book.unclaim(key, "a-b.c")
        assert key not in kv.data
        await kv.settle()
        assert other.claim_of(key) is None
        assert await other.claim(key, "a.b-c") == "a.b-c"
        await kv.settle()
        assert book.claims() == {key: "a.b-c"}
    finally:
        await other.stop()


# -- a project's own holders in a shared pool ---------------------------------------------

HOLDER_OPS = st.tuples(
    st.sampled_from(["ensure", "release", "crash", "bind"]),
    st.integers(0, 1),  # replica
    st.sampled_from(["o.a", "o.b", "o.c"]),
    st.sampled_from(["eip/x", "fip/y", "svc/z", "default-gw"]),
    st.integers(2, 14),  # the address of a crashed claim
)


@settings(deadline=None, max_examples=60)
@given(st.lists(HOLDER_OPS, min_size=1, max_size=25))
def test_a_projects_holders_in_a_shared_pool_are_exactly_what_a_full_scan_finds(
    ops: list[tuple[str, int, str, str, int]],
) -> None:
    """The per-project index the sweep uses instead of scanning the whole external pool
    (bench/) names the same holders, addresses, strays and bindings as the scan, on every
    replica, through allocations, releases, moves and what a crash left behind (a claim
    without its binding, a binding without its address key)."""
    space = pool("10.9.0.0/28", "10.9.0.1")

    async def scenario() -> None:
        kv = FakeKV()
        books = [await started(kv, 0.0), await started(kv, 0.0)]
        try:
            for kind, replica, key, member, n in ops:
                holder = f"project/{key}/{member}"
                if kind == "ensure":
                    with contextlib.suppress(AllocationError):
                        await books[replica].ensure(space, holder)
                elif kind == "release":
                    await books[replica].release(space, holder)
                elif kind == "bind":  # a binding a crash left without its address key
                    if books[replica].binding(space.prefix, holder) is None:
                        bound = Binding(ip=f"10.9.0.{n}").model_dump_json().encode()
                        await kv.put(binding_key(space.prefix, holder), bound)
                elif ip(f"10.9.0.{n}") not in books[replica].slots(space.prefix):
                    await crashed_claim(kv, f"{space.prefix}.10.9.0.{n}", holder, 1.0)
                await kv.settle()
            for book in books:
                # every holder with an address key (held or quarantined) or a binding
                slots = book.slots(space.prefix)
                everyone = {s.holder for s in slots.values()} | set(book.bindings(space.prefix))
                for key in ("o.a", "o.b", "o.c"):
                    ours = book.project_holders(space.prefix, key)
                    assert ours == {h for h in everyone if h.startswith(f"project/{key}/")}
                    held = book.held(space.prefix, ours)
                    assert set(held) == {h for h in book.held(space.prefix) if h in ours}
                    for h, a in held.items():  # one of its held addresses (a stray: several)
                        assert slots[a].holder == h and slots[a].held
                    assert sorted(book.strays(space.prefix, ours)) == sorted(
                        s for s in book.strays(space.prefix) if s[0] in ours
                    )
                    assert book.bindings(space.prefix, ours) == {
                        h: b for h, b in book.bindings(space.prefix).items() if h in ours
                    }
        finally:
            for b in books:
                await b.stop()

    asyncio.run(scenario())
