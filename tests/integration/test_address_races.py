"""Address books of several replicas racing for the same NICs, against a real nats-server.

The bench of issue 3 found this: two replicas allocate for one NIC at once, one adopts the
address the other just claimed, the other's binding wins, and the loser used to give that
very address back, leaving the winner's binding (already reported Ready) on a free address.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import nats
import pytest
from nats.js.kv import KeyValue

from vpcbus.embedded.natsd import NatsServer
from vpcbus_ipam.addresses import AddressBook, address_key, binding_key
from vpcbus_ipam.pools import project_subnet
from vpcbus_runtime import bus

pytestmark = pytest.mark.connected

REPLICAS = 3
NICS = 120


@pytest.fixture
async def books(nats_server: NatsServer) -> AsyncIterator[list[AddressBook]]:
    """One address book per replica, each on its own connection, over one fresh bucket."""
    bucket = f"race-{uuid.uuid4().hex[:8]}"
    conns = [await nats.connect(nats_server.url) for _ in range(REPLICAS)]
    kvs: list[KeyValue] = [await bus.ensure_bucket(nc.jetstream(), bucket) for nc in conns]
    out = [AddressBook(kv) for kv in kvs]
    for book in out:
        await book.start()
    yield out
    for book in out:
        await book.stop()
    await conns[0].jetstream().delete_key_value(bucket)
    for nc in conns:
        await nc.close()


async def test_replicas_racing_for_the_same_nics_leave_each_bound_address_held(
    books: list[AddressBook],
) -> None:
    space = project_subnet("o.p", IPv4Network("10.0.0.0/22"), IPv4Address("10.0.0.1"))
    holders = [f"pod/n{i}/default" for i in range(NICS)]

    got = await asyncio.gather(*(b.ensure(space, h) for h in holders for b in books))

    kv = books[0].kv
    for i, holder in enumerate(holders):
        answers = {g.ip for g in got[i * REPLICAS : (i + 1) * REPLICAS]}
        assert len(answers) == 1, f"{holder}: the replicas disagree: {answers}"
        ip = answers.pop()
        bound = json.loads((await kv.get(binding_key(space.prefix, holder))).value or b"")
        held = json.loads((await kv.get(address_key(space.prefix, IPv4Address(ip)))).value or b"")
        assert (bound["ip"], held["holder"], held["held"]) == (ip, holder, True)
    ips = [g.ip for g in got[::REPLICAS]]
    assert len(set(ips)) == NICS


async def test_a_lagging_replica_adopts_an_allocation_without_freeing_it(
    books: list[AddressBook],
) -> None:
    """Replica B has not seen A's writes yet (its watcher lags; here: stopped). Serving the
    same NIC, B loses the address race, adopts A's claim, loses the binding race too, and
    must then take A's binding as it is: not free the address under it."""
    space = project_subnet("o.p", IPv4Network("10.0.0.0/24"), IPv4Address("10.0.0.1"))
    a, b = books[0], books[1]
    await b.stop()
    holder = "vm/web/default"
    first = await a.ensure(space, holder)
    kv = a.kv
    address = await kv.get(address_key(space.prefix, IPv4Address(first.ip)))
    binding = await kv.get(binding_key(space.prefix, holder))

    again = await b.ensure(space, holder)

    assert again == first
    after = await kv.get(address_key(space.prefix, IPv4Address(first.ip)))
    assert (after.revision, after.value) == (address.revision, address.value)
    assert (await kv.get(binding_key(space.prefix, holder))).revision == binding.revision
