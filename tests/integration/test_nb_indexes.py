"""The owner and reference indexes of a replica (``vpcbus_runtime.ovsidl.OwnerIndex`` /
``RefIndex``) against a sweep of the same replica, on a real NB ``ovsdb-server``.

``ovn.owned``, ``ovn.shared`` and ``ovn.holders`` answer from the indexes (the server's rows)
plus the transaction's own rows. Random transactions insert, re-own, move and delete rows;
inside each one, with its changes pending, and again after it committed, every answer must be
the sweep's. Then the teardowns that use them remove what a sweep would find, including rows
where the services never put them (the fallbacks)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from vpcbus_dns import ovn as dns_ovn
from vpcbus_nat import ovn as nat_ovn
from vpcbus_runtime import ovn as nbdb
from vpcbus_runtime.ovn import OWNER, PROJECT, NbSession, Txn
from vpcbus_vpc import ovn as vpc_ovn

pytestmark = [pytest.mark.connected]

OWNERS = ("nat", "vpc", None)
PROJECTS = ("ix.a", "ix.b", None)
Answers = dict[str, list[tuple[Any, ...]]]


def _ids(rng: random.Random) -> dict[str, str]:
    owner, project = rng.choice(OWNERS), rng.choice(PROJECTS)
    ids = {"other": str(rng.randrange(3))}
    if owner is not None:
        ids[OWNER] = owner
    if project is not None:
        ids[PROJECT] = project
    return ids


def _step(api: Any, txn: Txn, rng: random.Random, serial: list[int]) -> None:
    """One random change: a new router or NAT row, new ids, a NAT row moved or deleted, a
    router deleted (OVSDB collects the NAT rows only it held)."""
    routers = list(api.tables["Logical_Router"].rows.values())
    # A rule moved or deleted once per transaction: python-ovs sends a row's removes before
    # its inserts, so a rule moved, then deleted, would stay on the router it moved to.
    nats = [r for r in api.tables["NAT"].rows.values() if r.uuid not in txn._txn_rows]
    op = rng.randrange(6)
    if op == 0 or not routers:
        serial[0] += 1
        nbdb.insert(api, txn, "Logical_Router", name=f"ix-r{serial[0]}", external_ids=_ids(rng))
    elif op == 1 or not nats:
        row = nbdb.insert(
            api, txn, "NAT", type="snat", external_ip="192.0.2.1",
            logical_ip=f"10.{rng.randrange(250)}.0.0/24", external_ids=_ids(rng),
        )  # fmt: skip
        rng.choice(routers).addvalue("nat", row)
    elif op == 2:
        rng.choice(routers + nats).external_ids = _ids(rng)
    elif op == 3:
        row = rng.choice(nats)
        for router in routers:
            if any(m.uuid == row.uuid for m in router.nat):
                router.delvalue("nat", row)
        rng.choice(routers).addvalue("nat", row)
    elif op == 4:
        row = rng.choice(nats)
        for router in routers:
            if any(m.uuid == row.uuid for m in router.nat):
                router.delvalue("nat", row)
        row.delete()
    elif len(routers) > 3:
        rng.choice(routers).delete()


def _answers(api: Any) -> tuple[Answers, Answers]:
    """What the indexes answer, and what a sweep of the rows finds, each sorted."""
    got: Answers = {}
    want: Answers = {}
    for table in ("Logical_Router", "NAT"):
        live = list(api.tables[table].rows.values())
        for owner in ("nat", "vpc"):
            for project in ("ix.a", "ix.b", None):
                tag = f"{table} {owner} {project}"
                got[tag] = sorted(r.uuid for r in nbdb.owned(api, table, owner, project))
                want[tag] = sorted(
                    r.uuid for r in live
                    if r.external_ids.get(OWNER) == owner
                    and project in (None, r.external_ids.get(PROJECT))
                )  # fmt: skip
            got[f"{table} {owner} shared"] = sorted(r.uuid for r in nbdb.shared(api, table, owner))
            want[f"{table} {owner} shared"] = sorted(
                r.uuid for r in live
                if r.external_ids.get(OWNER) == owner and PROJECT not in r.external_ids
            )  # fmt: skip
    routers = list(api.tables["Logical_Router"].rows.values())
    for row in api.tables["NAT"].rows.values():
        got[f"holders {row.uuid}"] = sorted(
            r.uuid for r in nbdb.holders(api, "Logical_Router", "nat", row.uuid)
        )
        want[f"holders {row.uuid}"] = sorted(
            r.uuid for r in routers if any(m.uuid == row.uuid for m in r.nat)
        )
    return got, want


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_indexes_answer_as_a_sweep_pending_and_committed(ovn: Any, seed: int) -> None:
    session = NbSession(ovn.nb_db, refs={"Logical_Router": ("nat",)})
    rng = random.Random(seed)
    serial = [seed * 1000]
    found = 0  # non-empty answers: the indexes had something to answer about
    try:
        for _ in range(40):

            def change(api: Any, txn: Txn) -> tuple[Answers, Answers]:
                for _ in range(rng.randrange(1, 4)):
                    _step(api, txn, rng, serial)
                return _answers(api)

            got, want = await session.transact(change)
            assert got == want, "with the transaction's changes pending"
            got, want = await session.read(_answers)
            assert got == want, "committed"
            found += sum(1 for rows in got.values() if rows)
        assert found > 200
    finally:
        session.close()


async def test_teardowns_find_rows_the_services_did_not_put_there(ovn: Any) -> None:
    """A project's port on a switch other than an external one, its NAT rule and load
    balancer on two routers, its DNS row on two switches: each teardown removes them all."""
    session = NbSession(ovn.nb_db, refs={**nat_ovn.REFS, **dns_ovn.REFS})
    key = "td.p"

    def build(api: Any, txn: Txn) -> None:
        vpc_ids = nbdb.ownership("vpc", key)
        ext = nbdb.insert(api, txn, "Logical_Switch", name="td-ext",
                          external_ids=nbdb.ownership("vpc", None))  # fmt: skip
        foreign = nbdb.insert(api, txn, "Logical_Switch", name="td-foreign")
        mine = nbdb.insert(api, txn, "Logical_Switch", name="td-default", external_ids=vpc_ids)
        for name, switch in (("td-ext-p", ext), ("td-foreign-p", foreign), ("td-lan-p", mine)):
            port = nbdb.insert(api, txn, "Logical_Switch_Port", name=name, external_ids=vpc_ids)
            switch.addvalue("ports", port)
        routers = [
            nbdb.insert(api, txn, "Logical_Router", name="td", external_ids=vpc_ids),
            nbdb.insert(api, txn, "Logical_Router", name="td-foreign"),
        ]
        nat_ids, dns_ids = nbdb.ownership("nat", key), nbdb.ownership("dns", key)
        rule = nbdb.insert(api, txn, "NAT", type="snat", external_ip="192.0.2.9",
                           logical_ip="10.9.0.0/24", external_ids=nat_ids)  # fmt: skip
        lb = nbdb.insert(api, txn, "Load_Balancer", name="td-lb", protocol="tcp",
                         external_ids=nat_ids)  # fmt: skip
        zone = nbdb.insert(api, txn, "DNS", records={"a": "10.9.0.2"}, external_ids=dns_ids)
        for router in routers:
            router.addvalue("nat", rule)
            router.addvalue("load_balancer", lb)
        for switch in (mine, foreign):
            switch.addvalue("dns_records", zone)

    await session.transact(build)
    try:
        assert await session.transact(lambda api, txn: nat_ovn.teardown_nat(api, txn, key)) == 2
        assert await session.transact(lambda api, txn: dns_ovn.teardown_zone(api, txn, key)) == 1
        removed = await session.transact(lambda api, txn: vpc_ovn.teardown_vpc(api, txn, key))
        assert removed == [
            "Logical_Switch_Port/td-ext-p", "Logical_Switch_Port/td-foreign-p",
            "Logical_Switch/td-default", "Logical_Router/td",
        ]  # fmt: skip

        def left(api: Any) -> dict[str, list[str]]:
            return {
                table: sorted(
                    str(getattr(r, "name", r.uuid)) for r in api.tables[table].rows.values()
                    if r.external_ids.get(PROJECT) == key
                )
                for table in ("Logical_Switch", "Logical_Switch_Port", "Logical_Router",
                              "NAT", "Load_Balancer", "DNS")
            }  # fmt: skip

        assert await session.read(left) == {
            t: [] for t in ("Logical_Switch", "Logical_Switch_Port", "Logical_Router",
                            "NAT", "Load_Balancer", "DNS")
        }  # fmt: skip
        names = await session.read(lambda api: sorted(
            r.name for r in api.tables["Logical_Switch"].rows.values() if r.name.startswith("td")
        ))  # fmt: skip
        assert names == ["td-ext", "td-foreign"]  # shared and foreign switches stay
    finally:
        session.close()


async def test_find_answers_as_ovsdbapps_lookup(nb: NbSession) -> None:
    """``ovn.find`` reads the name index itself; ovsdbapp's ``_lookup`` is the reference,
    for committed rows, rows this transaction inserted or renamed, and rows it deleted."""

    def build(api: Any, txn: Txn) -> None:
        for name in ("fd-a", "fd-b", "fd-c"):
            nbdb.insert(api, txn, "Logical_Switch", name=name)

    await nb.transact(build)

    def lookup(api: Any, name: str) -> Any:
        try:
            return api._lookup("Logical_Switch", name)
        except Exception:
            return None

    def compare(api: Any, txn: Txn) -> list[tuple[str, Any, Any]]:
        nbdb.insert(api, txn, "Logical_Switch", name="fd-new")
        gone = nbdb.find(api, "Logical_Switch", "fd-b")
        assert gone is not None
        gone.delete()
        renamed = nbdb.find(api, "Logical_Switch", "fd-c")
        assert renamed is not None
        renamed.name = "fd-c2"
        names = ("fd-a", "fd-b", "fd-c", "fd-c2", "fd-new", "fd-none")
        return [(n, nbdb.find(api, "Logical_Switch", n), lookup(api, n)) for n in names]

    seen = await nb.transact(compare)
    assert [(n, f is None) for n, f, _ in seen] == [
        ("fd-a", False), ("fd-b", True), ("fd-c", True), ("fd-c2", False), ("fd-new", False),
        ("fd-none", True),
    ]  # fmt: skip
    assert all(f is g for _, f, g in seen)
