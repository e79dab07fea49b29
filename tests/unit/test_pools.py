"""IPAM's pure pool configuration and candidate math (vpcbus_ipam.pools)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpcbus_ipam.pools import (
    DEFAULT_POOLS,
    Pool,
    Range,
    load_pools,
    overlapping_pool,
    parse_pools,
    subnet_reserved,
)


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


# -- configuration ---------------------------------------------------------------------------


def test_default_is_one_cloud_pool_and_no_public_pool() -> None:
    for raw in (None, ""):
        pools = load_pools(raw)
        assert set(pools) == {"cloud"}
        cloud = pools["cloud"]
        assert cloud.network == IPv4Network("100.65.0.0/16")
        assert cloud.gateway == ip("100.65.0.1")
        assert cloud.exclude == ()
        assert "public" not in pools  # public projects are disabled unless configured
    # load_pools must not share mutable state with the module default
    assert DEFAULT_POOLS["cloud"]["cidr"] == "100.65.0.0/16"


def test_vpcbus_pools_json_replaces_the_defaults() -> None:
    raw = json.dumps(
        {
            "cloud": {"cidr": "100.66.0.0/24", "gateway": "100.66.0.254", "exclude": []},
            "public": {"cidr": "203.0.113.0/28", "exclude": ["203.0.113.2..203.0.113.4"]},
        }
    )
    pools = load_pools(raw)
    assert set(pools) == {"cloud", "public"}
    assert pools["cloud"].gateway == ip("100.66.0.254")
    # gateway defaults to the first address after the network address
    assert pools["public"].gateway == ip("203.0.113.1")
    assert pools["public"].exclude == (Range(ip("203.0.113.2"), ip("203.0.113.4")),)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"p": {"cidr": "10.0.0.1/24"}}, "host bits"),
        ({"p": {"cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}}, "outside"),
        ({"p": {"cidr": "10.0.0.0/24", "exclude": "10.0.0.5"}}, "must be a list"),
        ({"p": {"cidr": "10.0.0.0/24", "exclude": ["10.0.0.9..10.0.0.5"]}}, "ends before"),
        ({"p": {"cidr": "10.0.0.0/24", "exclude": ["10.0.0"]}}, "Expected 4 octets"),
        ({"p": {"cidr": "nope"}}, "Expected 4 octets"),
    ],
)
def test_bad_pool_configuration_is_refused(
    config: dict[str, dict[str, object]], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        parse_pools(config)


def test_load_pools_refuses_invalid_json() -> None:
    with pytest.raises(ValueError, match="Expecting property name"):
        load_pools("{not json")


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("10.0.0.5", "10.0.0.5", "10.0.0.5"),
        ("10.0.0.5..10.0.0.9", "10.0.0.5", "10.0.0.9"),
        (" 10.0.0.5 .. 10.0.0.9 ", "10.0.0.5", "10.0.0.9"),
    ],
)
def test_range_parse(text: str, first: str, last: str) -> None:
    r = Range.parse(text)
    assert (r.first, r.last) == (ip(first), ip(last))
    assert ip(first) in r and ip(last) in r
    assert ip(first) - 1 not in r and ip(last) + 1 not in r
    assert "10.0.0.5" not in r  # only addresses, not strings


# -- candidates ------------------------------------------------------------------------------


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    prefix = draw(st.integers(24, 30))
    base = draw(st.integers(1, 2**8 - 1)) << 24 | draw(st.integers(0, 2**24 - 1))
    network = IPv4Network((base, prefix), strict=False)
    size = network.num_addresses
    gateway = network.network_address + draw(st.integers(1, size - 2))  # usable addresses only
    excludes = []  # single addresses and ranges, possibly reaching outside the network
    for _ in range(draw(st.integers(0, 3))):
        first = min(
            max(int(network.network_address) + draw(st.integers(-4, size + 4)), 0), 2**32 - 1
        )
        last = min(first + draw(st.integers(0, 8)), 2**32 - 1)
        excludes.append(
            f"{IPv4Address(first)}..{IPv4Address(last)}"
            if last > first
            else f"{IPv4Address(first)}"
        )
    return parse_pools({"p": {"cidr": str(network), "gateway": str(gateway), "exclude": excludes}})[
        "p"
    ]


def allocatable(pool: Pool) -> list[IPv4Address]:
    """Brute force: every address of the network but network, broadcast, gateway, excluded."""
    net = pool.network
    return [
        a
        for a in (net.network_address + i for i in range(net.num_addresses))
        if a not in (net.network_address, net.broadcast_address, pool.gateway)
        and not any(r.first <= a <= r.last for r in pool.exclude)
    ]


@settings(deadline=None, max_examples=100)
@given(pools())
def test_candidates_are_exactly_the_allocatable_addresses_lowest_first(pool: Pool) -> None:
    got = list(pool.candidates())
    assert got == allocatable(pool)
    assert got == sorted(set(got))  # unique, ascending
    assert pool.capacity() == len(got)
    for address in got:
        assert not pool.reserved(address)
        assert address in pool.network


@settings(deadline=None, max_examples=100)
@given(pools(), st.data())
def test_candidates_from_a_hint_skip_only_lower_offsets(pool: Pool, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, pool.network.num_addresses + 2))
    got = list(pool.candidates(start))
    assert got == [a for a in allocatable(pool) if pool.offset(a) >= start]


@settings(deadline=None, max_examples=100)
@given(pools())
def test_reserved_addresses(pool: Pool) -> None:
    net = pool.network
    assert pool.reserved(net.network_address)
    assert pool.reserved(net.broadcast_address)
    assert pool.reserved(pool.gateway)
    assert pool.reserved(net.network_address - 1)
    if int(net.broadcast_address) < 2**32 - 1:
        assert pool.reserved(net.broadcast_address + 1)
    for r in pool.exclude:
        for a in (r.first, r.last):
            assert pool.reserved(a)


def test_default_cloud_pool_capacity() -> None:
    cloud = load_pools(None)["cloud"]
    # 65536 minus network, broadcast and gateway (.1)
    assert cloud.capacity() == 2**16 - 3
    first = next(cloud.candidates())
    assert first == ip("100.65.0.2")
    assert cloud.offset(first) == 2


def test_tiny_pools_have_no_candidates() -> None:
    for cidr in ("10.0.0.0/31", "10.0.0.0/32"):
        pool = parse_pools({"p": {"cidr": cidr, "gateway": cidr.split("/")[0]}})["p"]
        assert list(pool.candidates()) == []


def test_overlapping_pool_and_subnet_reservations() -> None:
    pools = load_pools(None)
    assert overlapping_pool(IPv4Network("100.65.3.0/24"), pools) is pools["cloud"]
    assert overlapping_pool(IPv4Network("100.0.0.0/8"), pools) is pools["cloud"]
    assert overlapping_pool(IPv4Network("100.66.0.0/24"), pools) is None
    assert overlapping_pool(IPv4Network("10.0.0.0/8"), pools) is None
    net = IPv4Network("10.0.0.0/24")
    assert subnet_reserved(net, ip("10.0.0.1")) == {
        ip("10.0.0.0"),
        ip("10.0.0.255"),
        ip("10.0.0.1"),
    }


@pytest.mark.parametrize(
    ("name", "spec", "problem"),
    [
        ("cloud", {"cidr": "100.65.0.0/16", "gateway": "100.65.0.0"}, "not a usable address"),
        ("cloud", {"cidr": "100.65.0.0/16", "gateway": "100.65.255.255"}, "not a usable address"),
        ("a.b", {"cidr": "100.65.0.0/16"}, "DNS label"),
        ("Cloud", {"cidr": "100.65.0.0/16"}, "DNS label"),
    ],
)
def test_pool_config_errors_are_refused(name: str, spec: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_pools({name: spec})
