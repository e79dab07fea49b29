"""``vpcbus_runtime.ovn.dry_run`` against a real OVN NB ``ovsdb-server``: a transaction inside
a dry run is recorded (inserted rows, changed columns, deleted rows) and aborted, so the
database stays byte-identical, while the function's result comes back as usual and other
tasks' transactions keep writing."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest

from vpcbus.embedded.ovn import OvnCentral
from vpcbus_runtime import ovn as nbdb
from vpcbus_runtime.ovn import NbSession, Txn

pytestmark = [pytest.mark.connected]

IDS = nbdb.ownership("vpc", "acme.shop")
NAMED = [("Logical_Switch_Port", "dr-web"), ("Logical_Switch", "dr-sw")]
NAMED += [("Logical_Router", "dr-rt")]


def dump(central: OvnCentral) -> str:
    argv = ["ovsdb-client", "dump", central.nb_db, "OVN_Northbound"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def build(api: Any, txn: Txn) -> str:
    """A switch with a port and a router with a SNAT rule."""
    ls = nbdb.insert(api, txn, "Logical_Switch", name="dr-sw", external_ids=IDS)
    lsp = nbdb.insert(api, txn, "Logical_Switch_Port", name="dr-web",
                     addresses=["0e:00:00:00:00:02 10.0.0.2"], external_ids=IDS)  # fmt: skip
    ls.addvalue("ports", lsp)
    lr = nbdb.insert(api, txn, "Logical_Router", name="dr-rt", external_ids=IDS)
    nat = nbdb.insert(api, txn, "NAT", type="snat", logical_ip="10.0.0.0/24",
                     external_ip="100.65.0.2", external_ids=IDS)  # fmt: skip
    lr.addvalue("nat", nat)
    return "built"


def drift(api: Any, txn: Txn) -> int:
    """What a reconcile might do: change a column, rewrite one with its own value, add a
    port to the switch, drop the NAT rule."""
    web, ls, lr = (nbdb.find(api, t, n) for t, n in NAMED)
    assert web is not None and ls is not None and lr is not None
    nbdb.converge(web, addresses=["0e:00:00:00:00:02 10.0.0.9"])
    web.external_ids = dict(web.external_ids)  # the same value: not a change
    new = nbdb.insert(
        api, txn, "Logical_Switch_Port", name="dr-db", addresses=["0e:00:00:00:00:03 10.0.0.3"]
    )
    ls.addvalue("ports", new)
    for nat in list(lr.nat):
        lr.delvalue("nat", nat)
        nat.delete()
    return 42


def ports(api: Any) -> dict[str, list[str]]:
    return {p.name: list(p.addresses) for p in nbdb.rows(api, "Logical_Switch_Port")}


async def test_a_dry_run_records_what_it_would_write_and_writes_nothing(
    ovn: OvnCentral, nb: NbSession
) -> None:
    assert await nb.transact(build) == "built"
    before = dump(ovn)
    with nbdb.dry_run() as plan:
        assert await nb.transact(drift) == 42  # the function's result, as without a dry run
    assert plan.transactions == 1
    assert [(c.op, c.object, c.detail, c.project) for c in plan.changes] == [
        ("update", "Logical_Switch_Port/dr-web",
         "addresses: [0e:00:00:00:00:02 10.0.0.2] -> [0e:00:00:00:00:02 10.0.0.9]", "acme.shop"),
        ("insert", "Logical_Switch_Port/dr-db", "addresses=[0e:00:00:00:00:03 10.0.0.3]", ""),
        ("delete", "NAT/snat:10.0.0.0/24->100.65.0.2",
         "external_ip=100.65.0.2, logical_ip=10.0.0.0/24, type=snat", "acme.shop"),
    ]  # fmt: skip  # (the switch's new port and the router's lost rule are implied)
    assert dump(ovn) == before
    # The IDL's replica is as it was too: the aborted rows are gone from it.
    assert await nb.read(ports) == {"dr-web": ["0e:00:00:00:00:02 10.0.0.2"]}
    # ... and from its name index: a reconcile looking the new port up must not find it.
    assert await nb.read(lambda api: nbdb.find(api, "Logical_Switch_Port", "dr-db")) is None
    assert await nb.read(lambda api: len(nbdb.owned(api, "NAT", "vpc", "acme.shop"))) == 1
    # Outside the dry run the same function writes.
    assert await nb.transact(drift) == 42
    assert await nb.read(ports) == {
        "dr-web": ["0e:00:00:00:00:02 10.0.0.9"], "dr-db": ["0e:00:00:00:00:03 10.0.0.3"],
    }  # fmt: skip
    with nbdb.dry_run() as plan:
        await nb.transact(drift)  # converged: only the new port it would add again
    assert [(c.op, c.object) for c in plan.changes] == [("insert", "Logical_Switch_Port/dr-db")]


async def test_a_reference_to_a_row_that_exists_is_named(nb: NbSession) -> None:
    def balancer(api: Any, txn: Txn) -> None:
        nbdb.insert(api, txn, "Load_Balancer", name="dr-lb", protocol="tcp", external_ids=IDS)
        nbdb.insert(api, txn, "Logical_Router", name="dr-lr", external_ids=IDS)

    def attach(api: Any, txn: Txn) -> None:
        lr, lb = nbdb.find(api, "Logical_Router", "dr-lr"), nbdb.find(api, "Load_Balancer", "dr-lb")
        assert lr is not None and lb is not None
        nbdb.ensure_member(lr, "load_balancer", lb)

    await nb.transact(balancer)
    with nbdb.dry_run() as plan:
        await nb.transact(attach)
    assert [(c.op, c.object, c.detail) for c in plan.changes] == [
        ("update", "Logical_Router/dr-lr", "load_balancer: +dr-lb")
    ]


async def test_a_dry_run_is_this_tasks_only(nb: NbSession) -> None:
    """Other tasks (the reconciles a service keeps running) write during a dry run."""
    name = "dr-other"

    def add(api: Any, txn: Txn) -> None:
        nbdb.insert(api, txn, "Logical_Switch", name=name, external_ids=IDS)

    started, release = asyncio.Event(), asyncio.Event()

    async def dry() -> nbdb.Plan:
        with nbdb.dry_run() as plan:
            started.set()
            await release.wait()
            await nb.transact(lambda api, txn: nbdb.insert(api, txn, "Logical_Switch", name="dr-x"))
        return plan

    task = asyncio.create_task(dry())
    await started.wait()
    await nb.transact(add)  # while the other task is in its dry run
    release.set()
    plan = await task
    assert [(c.op, c.object) for c in plan.changes] == [("insert", "Logical_Switch/dr-x")]
    names_ = await nb.read(lambda api: {s.name for s in nbdb.rows(api, "Logical_Switch")})
    assert name in names_ and "dr-x" not in names_
    assert not nbdb.dry_running()
