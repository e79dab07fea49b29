"""Helpers shared by the IPAM unit tests: small spaces, a book over FakeKV, a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from ipaddress import IPv4Address, IPv4Network
from typing import cast

from nats.js.kv import KeyValue

from tests.unit.fakes import FakeKV
from vpcbus_ipam.addresses import AddressBook, Binding, Holding
from vpcbus_ipam.pools import Pool, Range


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def pool(cidr: str = "10.9.0.0/29", gateway: str = "10.9.0.1", *exclude: str) -> Pool:
    """External pool ``p`` (key prefix ``pool.p``); the default has .2 .. .6 to hand out."""
    return Pool("p", IPv4Network(cidr), ip(gateway), tuple(Range.parse(r) for r in exclude))


async def started(kv: FakeKV, quarantine: float = 60.0) -> AddressBook:
    book = AddressBook(cast(KeyValue, kv), quarantine=quarantine)
    await asyncio.wait_for(book.start(), 2)
    return book


async def crashed_claim(kv: FakeKV, key: str, holder: str, at: float) -> int:
    """What a replica that died between claiming an address and binding it leaves: the
    address key alone. Returns its revision."""
    revision = await kv.put(key, Holding(holder=holder, at=at).model_dump_json().encode())
    await kv.settle()  # running replicas have seen it
    return revision


class Clock:
    """Stands in for the ``time`` module of the code under test (only ``time()``)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stored(kv: FakeKV, prefix: str) -> tuple[dict[IPv4Address, Holding], dict[str, Binding]]:
    """What the store says about space ``prefix``: address keys and holder bindings."""
    holdings, bindings = {}, {}
    for key, (value, _) in kv.data.items():
        if key.startswith(f"{prefix}."):
            holdings[ip(key.removeprefix(f"{prefix}."))] = Holding.model_validate_json(value)
        elif key.startswith(f"bind.{prefix}."):
            bindings[key.removeprefix(f"bind.{prefix}.")] = Binding.model_validate_json(value)
    return holdings, bindings


def check_store(
    kv: FakeKV, space: Pool, stale_ok: Collection[str] = frozenset()
) -> dict[str, Binding]:
    """The store is consistent: every held address is its holder's bound one and none is
    reserved; every binding names an address its holder holds, except for holders in
    ``stale_ok`` (released while another call re-bound them: dropped when next read).
    Returns the valid bindings."""
    holdings, bindings = stored(kv, space.prefix)
    held = {a: h.holder for a, h in holdings.items() if h.held}
    valid = {h: b for h, b in bindings.items() if held.get(ip(b.ip)) == h}
    assert set(bindings) - set(valid) <= set(stale_ok), (bindings, holdings)
    assert sorted(held.items()) == sorted((ip(b.ip), h) for h, b in valid.items())
    assert not any(space.reserved(a) for a in held)
    return valid
