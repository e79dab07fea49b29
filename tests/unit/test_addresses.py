"""IPAM's address book over an in-memory KV, and the IPAM reconcile policy.

The book is the allocation math that matters: lowest free address first (with a hint so a
busy pool is not rescanned from the start), sticky per holder, unique across replicas
because every address is a key created with compare-and-set.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.kv import KeyValue

from tests.unit.fakes import FakeKV
from vpcbus_ipam.addresses import AddressBook, Holding, address_key, namespace_key
from vpcbus_ipam.pools import Pool, parse_pools
from vpcbus_ipam.reconciler import IpamReconciler, Policy, gateway_holder
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import ServiceStatus, State
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.reconciling import Context
from vpcbus_runtime.records import ProjectRecord


def pool(cidr: str = "10.9.0.0/29", gateway: str = "10.9.0.1", *exclude: str) -> Pool:
    return parse_pools({"p": {"cidr": cidr, "gateway": gateway, "exclude": list(exclude)}})["p"]


async def started(kv: FakeKV) -> AddressBook:
    book = AddressBook(cast(KeyValue, kv))
    await asyncio.wait_for(book.start(), 2)
    return book


@pytest.fixture
async def kv() -> FakeKV:
    return FakeKV()


@pytest.fixture
async def book(kv: FakeKV) -> AsyncIterator[AddressBook]:
    b = await started(kv)
    yield b
    await b.stop()


async def test_lowest_free_first_then_exhaustion(book: AddressBook) -> None:
    p = pool()  # /29, gateway .1: .2 .. .6 are allocatable
    got = [await book.allocate(p, f"h{i}") for i in range(5)]
    assert got == [IPv4Address(f"10.9.0.{i}") for i in range(2, 7)]
    assert await book.allocate(p, "h5") is None  # exhausted: reported, not raised
    assert book.in_use("p") == 5


async def test_allocation_is_sticky_per_holder(book: AddressBook) -> None:
    p = pool()
    first = await book.allocate(p, "h")
    assert await book.allocate(p, "h") == first
    assert book.held_by("h") == ("p", first)
    assert book.in_use("p") == 1


async def test_released_addresses_are_reused_lowest_first(book: AddressBook, kv: FakeKV) -> None:
    p = pool()
    for i in range(5):
        await book.allocate(p, f"h{i}")
    assert await book.release("h1") == address_key("p", IPv4Address("10.9.0.3"))
    assert await book.release("h3") == address_key("p", IPv4Address("10.9.0.5"))
    assert address_key("p", IPv4Address("10.9.0.3")) not in kv.data
    assert await book.allocate(p, "new-a") == IPv4Address("10.9.0.3")
    assert await book.allocate(p, "new-b") == IPv4Address("10.9.0.5")
    assert await book.release("nobody") is None


async def test_gateway_and_excluded_addresses_are_never_handed_out(book: AddressBook) -> None:
    p = pool("10.9.0.0/28", "10.9.0.5", "10.9.0.1..10.9.0.3", "10.9.0.9")
    got: list[IPv4Address] = []
    while (a := await book.allocate(p, f"h{len(got)}")) is not None:
        got.append(a)
    assert [str(a) for a in got] == [f"10.9.0.{i}" for i in (4, 6, 7, 8, 10, 11, 12, 13, 14)]


async def test_holdings_are_stored_as_one_key_per_address(book: AddressBook, kv: FakeKV) -> None:
    a = await book.allocate(pool(), "project/acme.shop/default-gw")
    assert a is not None
    value, _ = kv.data[f"pool.p.{a}"]
    holding = Holding.model_validate_json(value)
    assert (holding.holder, holding.pool, holding.ip) == (
        "project/acme.shop/default-gw",
        "p",
        str(a),
    )


async def test_a_replica_that_has_not_yet_seen_an_allocation_skips_it(kv: FakeKV) -> None:
    a, b = await started(kv), await started(kv)
    try:
        p = pool()
        first = await a.allocate(p, "ha")
        # b's watcher has not run yet: b still thinks .2 is free, and create() tells it no.
        second = await b.allocate(p, "hb")
        assert first == IPv4Address("10.9.0.2") and second == IPv4Address("10.9.0.3")
    finally:
        await a.stop()
        await b.stop()


async def test_a_restarted_replica_sees_existing_holdings_before_allocating(kv: FakeKV) -> None:
    a = await started(kv)
    p = pool()
    held = await a.allocate(p, "old")
    await a.stop()
    b = await started(kv)  # ready only after the initial values are loaded
    try:
        assert b.held_by("old") == ("p", held)
        assert await b.allocate(p, "old") == held
        assert await b.allocate(p, "new") != held
    finally:
        await b.stop()


async def test_namespace_claims_are_first_come(kv: FakeKV, book: AddressBook) -> None:
    key = namespace_key("a-b-c")
    assert await book.claim(key, "a-b.c") == "a-b.c"
    assert await book.claim(key, "a.b-c") == "a-b.c"
    other = await started(kv)
    try:
        await kv.settle()
        assert await other.claim(key, "a.b-c") == "a-b.c"
    finally:
        await other.stop()
    await book.unclaim(key, "a.b-c")  # not the holder: nothing happens
    assert key in kv.data
    await book.unclaim(key, "a-b.c")
    assert key not in kv.data
    assert await book.claim(key, "a.b-c") == "a.b-c"


@settings(deadline=None, max_examples=60)
@given(
    st.sampled_from(["10.9.0.0/29", "10.9.0.0/28", "10.9.0.0/27"]),
    st.lists(st.sampled_from(["10.9.0.3", "10.9.0.6..10.9.0.8", "10.9.0.20"]), max_size=2),
    st.lists(
        st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 1), st.integers(0, 40)),
        min_size=1,
        max_size=60,
    ),
    st.booleans(),
)
def test_two_replicas_never_hand_out_one_address_twice(
    cidr: str, exclude: list[str], ops: list[tuple[str, int, int]], settle: bool
) -> None:
    p = pool(cidr, "10.9.0.1", *exclude)
    capacity = p.capacity()

    async def scenario() -> None:
        kv = FakeKV()
        books = [await started(kv), await started(kv)]
        given_out: dict[str, IPv4Address] = {}  # holder -> what allocate() answered
        try:
            for op, replica, n in ops:
                holder = f"r{replica}-h{n}"  # a holder is always served by the same replica
                if op == "release":
                    if await books[replica].release(holder) is not None:
                        del given_out[holder]
                elif (got := await books[replica].allocate(p, holder)) is None:
                    # Exhaustion is reported when the pool is full (or, before this replica
                    # has heard of a release, when it believes it is).
                    assert len(kv.data) == capacity or not settle
                else:
                    assert holder not in given_out or given_out[holder] == got  # sticky
                    given_out[holder] = got
                if settle:
                    await kv.settle()
                # Every holder was told a different, allocatable address ...
                addresses = list(given_out.values())
                assert len(set(addresses)) == len(addresses)
                assert not any(p.reserved(a) for a in addresses)
                # ... and the store agrees on who holds it.
                for who, address in given_out.items():
                    value, _ = kv.data[address_key("p", address)]
                    assert Holding.model_validate_json(value).holder == who
                assert len(kv.data) == len(given_out) <= capacity
        finally:
            for b in books:
                await b.stop()

    asyncio.run(scenario())


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2**32 - 1))
def test_concurrent_allocations_are_unique_and_fill_the_pool(seed: int) -> None:
    p = pool("10.9.0.0/27")
    rng = random.Random(seed)

    async def scenario() -> None:
        kv = FakeKV()
        books = [await started(kv) for _ in range(3)]
        try:
            holders = [f"h{i}" for i in range(p.capacity() + 3)]
            rng.shuffle(holders)
            calls = [books[i % 3].allocate(p, h) for i, h in enumerate(holders)]
            got = await asyncio.gather(*calls)
            given_out = [a for a in got if a is not None]
            assert len(set(given_out)) == len(given_out)
            assert sorted(given_out) == list(p.candidates())  # full, no gaps
            assert got.count(None) == 3
        finally:
            for b in books:
                await b.stop()

    asyncio.run(scenario())


# -- the IPAM reconcile policy ----------------------------------------------------------------


class Peers:
    def __init__(self) -> None:
        self.vpc: ServiceStatus | None = None

    async def status(self, service: ServiceName, org: str, project: str) -> ServiceStatus | None:
        return self.vpc if service == "vpc" else None


def record(org: str, name: str, generation: int = 1, **spec: str) -> ProjectRecord:
    body = {"cidrBlock": "10.0.0.0/24", "egressNetworkType": "cloud", **spec}
    return ProjectRecord(
        organization=org,
        name=name,
        generation=generation,
        event_id=f"e{generation}",
        spec=ProjectSpec.model_validate({"organization": org, "name": name, **body}),
    )


def ctx(rec: ProjectRecord | None, peers: Peers, org: str = "acme", name: str = "shop") -> Context:
    return Context(f"{org}.{name}", org, name, rec, peers)


@pytest.fixture
async def ipam(book: AddressBook) -> IpamReconciler:
    return IpamReconciler(
        book,
        Policy(
            pools=parse_pools(
                {
                    "cloud": {"cidr": "100.65.0.0/29", "gateway": "100.65.0.1"},
                    "public": {"cidr": "203.0.113.0/29", "gateway": "203.0.113.1"},
                }
            )
        ),
    )


async def test_admission_reports_the_gateway_eip(ipam: IpamReconciler) -> None:
    result = await ipam.reconcile(ctx(record("acme", "shop", gwLanIp="10.0.0.254"), Peers()))
    assert (result.state, result.reason) == ("Ready", "Allocated")
    facts = result.addresses
    assert facts is not None
    assert (facts.cidr_block, facts.gateway_ip) == ("10.0.0.0/24", "10.0.0.254")
    eip = facts.eip("default-gw")
    assert eip is not None
    assert (eip.ip_address, eip.network, eip.prefix_length, eip.gateway) == (
        "100.65.0.2",
        "cloud",
        29,
        "100.65.0.1",
    )
    assert eip.owners == ["Snat/acme-shop"]
    assert list(result.objects) == ["EIP/default-gw=100.65.0.2"]
    # A re-run is idempotent: same address.
    again = await ipam.reconcile(ctx(record("acme", "shop", gwLanIp="10.0.0.254"), Peers()))
    assert again.addresses == facts
    assert await ipam.owned_keys() == ["acme.shop"]


async def test_public_projects_are_disabled_by_default(ipam: IpamReconciler) -> None:
    with pytest.raises(PermanentError) as info:
        await ipam.reconcile(ctx(record("acme", "shop", egressNetworkType="public"), Peers()))
    assert info.value.reason == "PublicProjectsDisabled"
    allowed = IpamReconciler(ipam.book, Policy(ipam.policy.pools, allow_public_projects=True))
    result = await allowed.reconcile(
        ctx(record("acme", "shop", egressNetworkType="public"), Peers())
    )
    eip = result.addresses.eip("default-gw") if result.addresses else None
    assert eip is not None and eip.network == "public"


async def test_unknown_network_and_overlap_are_permanent(book: AddressBook) -> None:
    only_cloud = IpamReconciler(
        book, Policy(parse_pools({"cloud": {"cidr": "100.65.0.0/16"}}), allow_public_projects=True)
    )
    with pytest.raises(PermanentError) as info:
        await only_cloud.reconcile(ctx(record("a", "b", egressNetworkType="public"), Peers()))
    assert info.value.reason == "UnknownNetwork"
    with pytest.raises(PermanentError) as info:
        await only_cloud.reconcile(ctx(record("a", "b", cidrBlock="100.64.0.0/10"), Peers()))
    assert info.value.reason == "CidrOverlapsExternalNetwork"
    assert "100.65.0.0/16" in info.value.message


async def test_egress_network_type_is_immutable(book: AddressBook) -> None:
    ipam = IpamReconciler(
        book,
        Policy(
            parse_pools(
                {
                    "cloud": {"cidr": "100.65.0.0/29"},
                    "public": {"cidr": "203.0.113.0/29"},
                }
            ),
            allow_public_projects=True,
        ),
    )
    await ipam.reconcile(ctx(record("acme", "shop"), Peers()))
    with pytest.raises(PermanentError) as info:
        await ipam.reconcile(ctx(record("acme", "shop", 2, egressNetworkType="public"), Peers()))
    assert info.value.reason == "EgressNetworkTypeImmutable"


async def test_two_projects_with_one_backing_namespace_conflict(ipam: IpamReconciler) -> None:
    first = await ipam.reconcile(ctx(record("a-b", "c"), Peers(), "a-b", "c"))
    assert first.state == "Ready"
    with pytest.raises(PermanentError) as info:
        await ipam.reconcile(ctx(record("a", "b-c"), Peers(), "a", "b-c"))
    assert info.value.reason == "NamespaceConflict"
    assert "a-b/c" in info.value.message


async def test_same_cidr_in_two_projects_is_fine_and_gets_two_eips(ipam: IpamReconciler) -> None:
    one = await ipam.reconcile(ctx(record("acme", "one"), Peers(), "acme", "one"))
    two = await ipam.reconcile(ctx(record("acme", "two"), Peers(), "acme", "two"))
    assert one.addresses and two.addresses
    assert one.addresses.cidr_block == two.addresses.cidr_block
    eips = {a.eips[0].ip_address for a in (one.addresses, two.addresses)}
    assert len(eips) == 2


async def test_exhausted_pool_is_an_error_result_with_requeue(ipam: IpamReconciler) -> None:
    results = [
        await ipam.reconcile(ctx(record("acme", f"p{i}"), Peers(), "acme", f"p{i}"))
        for i in range(6)
    ]
    assert [r.state for r in results] == ["Ready"] * 5 + ["Error"]
    assert results[-1].reason == "NoAvailableIPs" and results[-1].requeue_after


def vpc_status(state: State, generation: int) -> ServiceStatus:
    return ServiceStatus.model_validate(
        {
            "service": "vpc",
            "organization": "acme",
            "project": "shop",
            "namespace": "acme-shop",
            "generation": generation,
            "state": state,
            "reason": "x",
            "observedAt": "2030-01-01T00:00Z",
        }
    )


async def test_addresses_return_only_after_the_vpc_is_torn_down(
    ipam: IpamReconciler, kv: FakeKV
) -> None:
    peers = Peers()
    await ipam.reconcile(ctx(record("acme", "shop"), peers))
    tombstone = ProjectRecord(
        organization="acme", name="shop", generation=2, event_id="e2", spec=None
    )
    for vpc in (None, vpc_status("Ready", 1), vpc_status("Deleted", 1)):
        peers.vpc = vpc
        result = await ipam.reconcile(ctx(tombstone, peers))
        assert (result.state, result.reason) == ("Pending", "WaitingForVpcTeardown")
        assert ipam.book.held_by(gateway_holder("acme.shop")) is not None
    peers.vpc = vpc_status("Deleted", 2)
    result = await ipam.reconcile(ctx(tombstone, peers))
    assert (result.state, result.reason) == ("Deleted", "Released")
    assert ipam.book.held_by(gateway_holder("acme.shop")) is None
    assert not kv.data  # the EIP and the namespace claim are both gone
    # Idempotent once released.
    assert (await ipam.reconcile(ctx(tombstone, peers))).state == "Deleted"
    assert await ipam.owned_keys() == []
