"""A second NB session sees what the first committed once it has synced
(``NbSession.sync``), against a real OVN NB ``ovsdb-server``. This is what NAT and DNS rely on
when VPC reports a project Ready: its router and switch exist, even if their own replica has
not received them yet (``PeerRowsMissingError``: ``transact`` syncs and runs once more)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from vpcbus.embedded.ovn import OvnCentral
from vpcbus_runtime import ovn as nbdb
from vpcbus_runtime.errors import PeerRowsMissingError
from vpcbus_runtime.ovn import NbSession, Txn

pytestmark = [pytest.mark.connected]

ROUNDS = 150


@pytest.fixture
def peer(ovn: OvnCentral) -> Iterator[NbSession]:
    """Another service's session to the same NB."""
    session = NbSession(ovn.nb_db)
    yield session
    session.close()


def create(name: str) -> Any:
    def fn(api: Any, txn: Txn) -> None:
        nbdb.insert(api, txn, "Logical_Router", name=name,
                    external_ids=nbdb.ownership("vpc", f"acme.{name}"))  # fmt: skip

    return fn


async def test_a_synced_replica_has_every_row_committed_before(
    nb: NbSession, peer: NbSession
) -> None:
    await nb.transact(create("sync-warmup"))
    await peer.sync()
    for i in range(ROUNDS):
        await nb.transact(create(f"sync-{i}"))  # committed: "VPC is Ready"
        await peer.sync()

        def lookup(api: Any, name: str = f"sync-{i}") -> Any:
            return nbdb.find(api, "Logical_Router", name)

        found = await peer.read(lookup)
        assert found is not None, f"round {i}: the synced replica lacks the committed router"


async def test_a_function_that_misses_a_peers_rows_runs_again_after_a_sync(
    nb: NbSession, peer: NbSession
) -> None:
    await nb.transact(create("retry-warmup"))
    await peer.sync()
    misses = 0

    def converge(name: str) -> Any:
        def fn(api: Any, txn: Txn) -> str:
            nonlocal misses
            router = nbdb.find(api, "Logical_Router", name)
            if router is None:
                misses += 1
                raise PeerRowsMissingError("RouterMissing", f"router {name} does not exist yet")
            return str(router.name)

        return fn

    for i in range(ROUNDS):
        await nb.transact(create(f"retry-{i}"))
        assert await peer.transact(converge(f"retry-{i}")) == f"retry-{i}"
    # A router that nobody made is still missing after the sync: the error reaches the caller.
    with pytest.raises(PeerRowsMissingError):
        await peer.transact(converge("never-made"))
    assert misses >= 2  # never-made, twice
