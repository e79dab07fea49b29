"""``vpcbus_runtime.ovsidl.NbIdl`` keeps python-ovs' replica. Against a real NB
``ovsdb-server`` with rows of every kind of column (maps, sets, references, enums, integers,
optional scalars), its rows and their values, and the rows ovsdbapp's name indexes find,
equal those of stock ovsdbapp's IDL: after the first load and after updates, a rename (the
index moves) and deletes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.ovn_northbound import impl_idl

from vpcbus.embedded.ovn import OvnCentral
from vpcbus_runtime.ovsidl import HashIndex, NbIdl

pytestmark = [pytest.mark.connected]

SKIPPED = {"NB_Global"}  # the tests' own sync writes go there, through one IDL at a time


def api_for(nb_db: str, idl_class: type[Any]) -> Any:
    helper = idlutils.get_schema_helper(nb_db, "OVN_Northbound")
    helper.register_all()
    conn = connection.Connection(idl=idl_class(nb_db, helper), timeout=30)
    api_class = type("Api", (impl_idl.OvnNbApiIdlImpl,), {"_ovsdb_connection": None})
    return api_class(conn)


@pytest.fixture
def apis(ovn: OvnCentral) -> Iterator[tuple[Any, Any]]:
    populate(ovn)
    stock, ours = api_for(ovn.nb_db, connection.OvsdbIdl), api_for(ovn.nb_db, NbIdl)
    yield stock, ours
    for api in (stock, ours):
        api.ovsdb_connection.stop()


def populate(ovn: OvnCentral) -> None:
    ovn.nbctl(
        "ls-add", "sw1", "--", "set", "Logical_Switch", "sw1", "external_ids:vpcbus-owner=vpc",
        "other_config:subnet=10.0.0.0/24",
        "--", "lsp-add", "sw1", "p1",
        "--", "lsp-set-addresses", "p1", "00:00:00:00:00:01 10.0.0.2", "unknown",
        "--", "lsp-set-port-security", "p1", "00:00:00:00:00:01 10.0.0.2",
        "--", "lsp-add", "sw1", "p2", "--", "lsp-set-type", "p2", "router",
        "--", "lsp-set-options", "p2", "router-port=lrp1",
        "--", "lr-add", "r1",
        "--", "lrp-add", "r1", "lrp1", "00:00:00:00:01:01", "10.0.0.1/24", "fd00::1/64",
        "--", "lr-route-add", "r1", "0.0.0.0/0", "192.168.0.1",
        "--", "lr-nat-add", "r1", "snat", "192.168.0.10", "10.0.0.0/24",
        "--", "acl-add", "sw1", "to-lport", "1000", "ip4 && tcp.dst == 22", "allow-related",
        "--", "lb-add", "lb1", "10.0.0.100:80", "10.0.0.2:80", "tcp",
        "--", "ls-lb-add", "sw1", "lb1",
        "--", "pg-add", "pg1", "p1",
        "--", "create", "Address_Set", "name=as1", 'addresses="10.0.0.1","10.0.0.2"',
        "--", "--id=@d", "create", "DNS", 'records={"a.example"="10.0.0.5"}',
        "--", "add", "Logical_Switch", "sw1", "dns_records", "@d",
        "--", "ls-add", "sw2", "--", "lsp-add", "sw2", "p3",
        "--", "create", "Logical_Switch", "external_ids:unnamed=1",  # its name is the default
    )  # fmt: skip


def plain(value: Any) -> Any:
    """A replica's value with references as UUIDs, comparable across IDLs."""
    if isinstance(value, ovs_idl.Row):
        return value.uuid
    if isinstance(value, list):
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


def snapshot(api: Any) -> dict[str, dict[Any, dict[str, Any]]]:
    return {
        name: {
            row.uuid: {column: plain(getattr(row, column)) for column in table.columns}
            for row in table.rows.values()
        }
        for name, table in api.idl.tables.items()
        if name not in SKIPPED
    }


def looked_up(api: Any) -> dict[tuple[str, str, Any], set[Any]]:
    """For each name index, each value of a row and what the index finds for it."""
    found = {}
    for name, table in api.idl.tables.items():
        for index_name, index in table.rows.indexes.items():
            column = index.columns[0].column
            for row in list(table.rows.values()):
                value = getattr(row, column)
                hits = idlutils.index_lookup_all(table, **{column: value})
                found[(name, index_name, value)] = {r.uuid for r in hits}
    return found


def ranges(api: Any) -> dict[tuple[str, str], list[Any]]:
    """For each index, its rows in order, and those of a range (not an equality) and of
    ``values.irange`` (the index entries ovsdbapp's conditions read)."""
    found = {}
    for name, table in api.idl.tables.items():
        for index_name, index in table.rows.indexes.items():
            rows = list(index)
            column = index.columns[0].column
            ordered = [(getattr(r, column), r.uuid) for r in rows]
            if len(rows) >= 2:
                low = table.rows.IndexEntry(**{column: getattr(rows[0], column)})
                high = table.rows.IndexEntry(**{column: getattr(rows[-2], column)})
                ordered += [r.uuid for r in index.irange(low, high)]
                ordered += [e.uuid for e in index.values.irange(high, high)]
            found[(name, index_name)] = ordered
    return found


def sync(api: Any, n: int) -> None:
    """Commit through ``api``'s IDL: its replica then holds every earlier commit."""
    api.db_set("NB_Global", ".", ("external_ids", {"test-sync": str(n)})).execute(check_error=True)


def assert_same(stock: Any, ours: Any, n: int) -> None:
    """The replicas are equal once both have synced. ovn-northd writes NB rows too (``up`` of
    a new port): a write that lands between the two syncs is in one replica only until the
    next, so a difference gets a few more syncs; one that stays fails."""
    for attempt in range(20):
        sync(stock, n * 100 + attempt)
        sync(ours, n * 100 + attempt)
        if snapshot(ours) == snapshot(stock):
            break
        time.sleep(0.1)
    assert snapshot(ours) == snapshot(stock)
    assert looked_up(ours) == looked_up(stock)
    assert ranges(ours) == ranges(stock)


def test_the_replica_and_its_lookups_equal_stock_ovsdbapps(
    ovn: OvnCentral, apis: tuple[Any, Any]
) -> None:
    stock, ours = apis
    indexes = [i for t in ours.idl.tables.values() for i in t.rows.indexes.values()]
    assert indexes and all(isinstance(i, HashIndex) for i in indexes)
    assert snapshot(ours)["Logical_Switch_Port"]  # loaded, not two empty replicas
    assert_same(stock, ours, 1)
    assert ours.lookup("Logical_Switch", "sw1").name == "sw1"

    ovn.nbctl(
        "acl-del", "sw1",
        "--", "set", "Logical_Switch", "sw1", "name=sw1-renamed", "external_ids:extra=1",
        "--", "lsp-del", "p3", "--", "lr-route-del", "r1", "0.0.0.0/0",
        "--", "lsp-set-addresses", "p1", "00:00:00:00:00:01 10.0.0.3",
        "--", "ls-add", "sw3",
    )  # fmt: skip
    assert_same(stock, ours, 2)
    assert ours.lookup("Logical_Switch", "sw1-renamed").name == "sw1-renamed"
    with pytest.raises(idlutils.RowNotFound):
        ours.lookup("Logical_Switch", "sw1")  # the old name left the index
    assert ours.lookup("Logical_Switch", "sw3").name == "sw3"

    for api in (stock, ours):  # rows a transaction of the IDL itself inserts and changes
        with api.transaction(check_error=True) as txn:
            txn.add(api.ls_add(f"by-{type(api.idl).__name__}"))
            txn.add(api.lsp_add("sw3", f"p-{type(api.idl).__name__}", addresses=["unknown"]))
            txn.add(api.db_set("Logical_Switch", "sw3", ("external_ids", {"by": "txn"})))
    assert_same(stock, ours, 3)
    assert ours.lookup("Logical_Switch_Port", "p-NbIdl").addresses == ["unknown"]

    ovn.nbctl("ls-del", "sw2", "--", "lr-del", "r1", "--", "lb-del", "lb1")
    assert_same(stock, ours, 4)
    with pytest.raises(idlutils.RowNotFound):
        ours.lookup("Logical_Router", "r1")
