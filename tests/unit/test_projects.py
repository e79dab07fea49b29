"""ProjectSpec / ProjectRef validation: the structural rules every service applies alike."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vpcbus_proto.projects import ProjectRef, ProjectSpec

#: The ranges the requirement says a project subnet may not touch, stated independently
#: of the implementation: "this network", loopback, link-local, multicast, class E.
RESERVED = [
    IPv4Network("0.0.0.0/8"),
    IPv4Network("127.0.0.0/8"),
    IPv4Network("169.254.0.0/16"),
    IPv4Network("224.0.0.0/4"),
    IPv4Network("240.0.0.0/4"),
]


def spec(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "organization": "acme",
        "name": "shop",
        "cidrBlock": "10.0.0.0/24",
        "egressNetworkType": "cloud",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def rejected(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        ProjectSpec.model_validate(body)
    return str(info.value)


@st.composite
def networks(draw: st.DrawFn, min_prefix: int = 8, max_prefix: int = 29) -> IPv4Network:
    prefix = draw(st.integers(min_prefix, max_prefix))
    address = draw(st.integers(0, 2**32 - 1))
    return IPv4Network((address, prefix), strict=False)


#: First octets outside 0/8, 127/8 and 224/3 (169 is kept: only 169.254/16 is reserved).
UNICAST_OCTETS = [o for o in range(1, 224) if o != 127]


@st.composite
def allowed_networks(draw: st.DrawFn) -> IPv4Network:
    prefix = draw(st.integers(8, 29))
    address = (draw(st.sampled_from(UNICAST_OCTETS)) << 24) | draw(st.integers(0, 2**24 - 1))
    net = IPv4Network((address, prefix), strict=False)
    assume(not any(net.overlaps(r) for r in RESERVED))
    return net


# -- cidrBlock ---------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(networks())
def test_every_network_8_to_29_is_accepted_unless_it_touches_a_reserved_range(
    net: IPv4Network,
) -> None:
    body = spec(cidrBlock=str(net))
    if any(net.overlaps(r) for r in RESERVED):
        assert "reserved range" in rejected(body)
        return
    parsed = ProjectSpec.model_validate(body)
    assert parsed.cidr_block == str(net)
    assert parsed.network == net
    # The default gateway is the first usable address.
    assert parsed.gateway == next(iter(net.hosts()))
    assert parsed.gateway == net.network_address + 1


@settings(deadline=None, max_examples=100)
@given(networks(min_prefix=0, max_prefix=7) | networks(min_prefix=30, max_prefix=32))
def test_prefixes_outside_8_to_29_are_rejected(net: IPv4Network) -> None:
    message = rejected(spec(cidrBlock=str(net)))
    assert "cidrBlock" in message
    if not any(net.overlaps(r) for r in RESERVED):
        assert ("too large" if net.prefixlen < 8 else "too small") in message


@settings(deadline=None, max_examples=100)
@given(allowed_networks(), st.data())
def test_host_bits_set_are_rejected(net: IPv4Network, data: st.DataObject) -> None:
    host = data.draw(st.integers(1, net.num_addresses - 1))
    text = f"{net.network_address + host}/{net.prefixlen}"
    assert "not a valid IPv4 CIDR" in rejected(spec(cidrBlock=text))


@pytest.mark.parametrize(
    ("cidr", "words"),
    [
        ("10.0.0.0/30", "too small"),
        ("10.0.0.0/32", "too small"),
        ("10.0.0.0/7", "too large"),
        ("10.0.0.1/24", "not a valid IPv4 CIDR"),
        ("10.0.0.0", "needs a prefix length"),
        ("10.0.0.0/33", "not a valid IPv4 CIDR"),
        ("fd00::/64", "not a valid IPv4 CIDR"),
        ("10.0.0.0/24 ", "not a valid IPv4 CIDR"),
        ("010.0.0.0/24", "not a valid IPv4 CIDR"),
        ("", "not a valid IPv4 CIDR"),
        ("127.0.0.0/24", "reserved range 127.0.0.0/8"),
        ("169.254.10.0/24", "reserved range 169.254.0.0/16"),
        ("169.0.0.0/8", "reserved range 169.254.0.0/16"),  # overlaps, not contained
        ("0.0.0.0/8", "reserved range 0.0.0.0/8"),
        ("224.0.0.0/24", "reserved range 224.0.0.0/4"),
        ("250.0.0.0/16", "reserved range 240.0.0.0/4"),
    ],
)
def test_bad_cidr_blocks_name_the_problem(cidr: str, words: str) -> None:
    message = rejected(spec(cidrBlock=cidr))
    assert "cidrBlock" in message and words in message


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "192.168.7.0/29", "100.64.0.0/10", "8.8.8.0/24"])
def test_boundary_and_public_ranges_are_structurally_fine(cidr: str) -> None:
    # Overlap with an external pool is IPAM's call, not the contract's.
    assert ProjectSpec.model_validate(spec(cidrBlock=cidr)).cidr_block == cidr


def test_netmask_notation_is_normalised_to_prefix_notation() -> None:
    parsed = ProjectSpec.model_validate(spec(cidrBlock="10.1.2.0/255.255.255.0"))
    assert parsed.cidr_block == "10.1.2.0/24"


@pytest.mark.parametrize("value", [None, 24, ["10.0.0.0/24"], {"cidr": "10.0.0.0/24"}])
def test_cidr_block_must_be_a_string(value: object) -> None:
    body = spec()
    body["cidrBlock"] = value
    with pytest.raises(ValidationError):
        ProjectSpec.model_validate(body)


# -- gwLanIp -------------------------------------------------------------------------------


@settings(deadline=None, max_examples=100)
@given(allowed_networks(), st.data())
def test_gw_lan_ip_anywhere_usable_is_accepted_and_becomes_the_gateway(
    net: IPv4Network, data: st.DataObject
) -> None:
    offset = data.draw(st.integers(1, net.num_addresses - 2))
    gw = net.network_address + offset
    parsed = ProjectSpec.model_validate(spec(cidrBlock=str(net), gwLanIp=str(gw)))
    assert parsed.gateway == gw


@settings(deadline=None, max_examples=100)
@given(allowed_networks(), st.booleans())
def test_gw_lan_ip_at_network_or_broadcast_is_rejected(net: IPv4Network, low: bool) -> None:
    gw = net.network_address if low else net.broadcast_address
    assert "network or broadcast" in rejected(spec(cidrBlock=str(net), gwLanIp=str(gw)))


@settings(deadline=None, max_examples=100)
@given(allowed_networks(), st.integers(0, 2**32 - 1))
def test_gw_lan_ip_outside_the_block_is_rejected(net: IPv4Network, address: int) -> None:
    gw = IPv4Address(address)
    assume(gw not in net)
    assert "outside cidrBlock" in rejected(spec(cidrBlock=str(net), gwLanIp=str(gw)))


@pytest.mark.parametrize("gw", ["10.0.0", "10.0.0.256", "fd00::1", "10.0.0.1/24", "", "gw"])
def test_gw_lan_ip_must_be_an_ipv4_address(gw: str) -> None:
    assert "not an IPv4 address" in rejected(spec(gwLanIp=gw))


def test_explicit_gateway_is_kept_and_default_is_first_usable() -> None:
    assert ProjectSpec.model_validate(spec()).gateway == IPv4Address("10.0.0.1")
    explicit = ProjectSpec.model_validate(spec(gwLanIp="10.0.0.254"))
    assert explicit.gateway == IPv4Address("10.0.0.254")
    assert explicit.gw_lan_ip == "10.0.0.254"


# -- identity, extra fields, aliases ----------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"organization": "Acme"},
        {"organization": ""},
        {"name": "shop_1"},
        {"name": "-shop"},
        {"name": "shop\n"},
        {"organization": "x" * 64},
        {"egressNetworkType": "internet"},
        {"egressNetworkType": "Cloud"},
    ],
)
def test_bad_identity_or_egress_is_rejected(overrides: dict[str, Any]) -> None:
    rejected(spec(**overrides))


def test_backing_namespace_longer_than_63_is_rejected() -> None:
    org, name = "o" * 40, "p" * 22  # 40 + 1 + 22 = 63: fits
    assert ProjectSpec.model_validate(spec(organization=org, name=name)).namespace == (
        f"{org}-{name}"
    )
    assert "longer than 63" in rejected(spec(organization=org, name=name + "p"))
    with pytest.raises(ValidationError, match="longer than 63"):
        ProjectRef(organization=org, name=name + "p")


@pytest.mark.parametrize(
    "extra",
    [
        {"vpc": "x"},
        {"cidr_blocks": "10.0.0.0/24"},
        {"gwLanIP": "10.0.0.1"},  # wrong case is an unknown field, not an alias
        {"spec": {}},
    ],
)
def test_unknown_fields_are_rejected(extra: dict[str, Any]) -> None:
    body = {**spec(), **extra}
    message = rejected(body)
    assert "Extra inputs are not permitted" in message
    assert next(iter(extra)) in message


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    net = draw(allowed_networks())
    body = spec(
        organization=draw(st.sampled_from(["acme", "a", "org-1", "0"])),
        name=draw(st.sampled_from(["shop", "p", "web-2", "9"])),
        cidrBlock=str(net),
        egressNetworkType=draw(st.sampled_from(["cloud", "public"])),
    )
    if draw(st.booleans()):
        body["gwLanIp"] = str(net.broadcast_address - draw(st.integers(1, 3)))
    return body


@settings(deadline=None, max_examples=100)
@given(valid_bodies())
def test_camel_case_round_trip(body: dict[str, Any]) -> None:
    parsed = ProjectSpec.model_validate(body)
    wire = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire == body  # the wire form is exactly the camelCase the user wrote
    assert ProjectSpec.model_validate(wire) == parsed
    assert ProjectSpec.model_validate_json(parsed.model_dump_json(by_alias=True)) == parsed
    # snake_case names are accepted too (populate_by_name), with the same result.
    snake = parsed.model_dump(mode="json", by_alias=False)
    assert "cidr_block" in snake
    assert ProjectSpec.model_validate(snake) == parsed
    assert parsed.ref == ProjectRef(organization=parsed.organization, name=parsed.name)
    assert parsed.key == f"{parsed.organization}.{parsed.name}"


def test_spec_is_frozen() -> None:
    parsed = ProjectSpec.model_validate(spec())
    with pytest.raises(ValidationError):
        parsed.cidr_block = "10.9.0.0/24"  # type: ignore[misc]
