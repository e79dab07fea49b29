"""``vpcbus_runtime.ovn.insert`` writes a new row's columns without ``Row.__setattr__`` where
no index or read-only rule needs it. Against a real OVN NB ``ovsdb-server``: the rows it
commits equal those that python-ovs' own ``setattr`` path commits, every column of every
table the services write; a new row is readable at once and found by name in its own
transaction; a value python-ovs cannot convert fails the transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from vpcbus.embedded.ovn import OvnCentral
from vpcbus_runtime import ovn as nbdb
from vpcbus_runtime.errors import TemporaryError
from vpcbus_runtime.ovn import NbSession, Txn

pytestmark = [pytest.mark.connected]


@pytest.fixture
def reader(ovn: OvnCentral) -> Iterator[NbSession]:
    session = NbSession(ovn.nb_db)
    yield session
    session.close()


def by_setattr(api: Any, txn: Txn, table: str, **columns: Any) -> Any:
    """What ``insert`` did before: python-ovs' ``setattr`` for every column."""
    schema = api.tables[table]
    row = txn.insert(schema)
    nbdb.set_columns(row, schema, columns)
    return row


def project(make: Any, tag: str) -> Any:
    """One project's rows of every table VPC, NAT and DNS write, made with ``make``; only the
    names and the project key depend on ``tag``."""

    def fn(api: Any, txn: Txn) -> None:
        ids = {"vpcbus-owner": "vpc", "vpcbus-project": f"acme.{tag}"}
        lrp = make(api, txn, "Logical_Router_Port", name=f"{tag}-lrp", mac="0a:00:00:00:00:01",
                   networks=["10.0.0.1/24"], external_ids=ids)  # fmt: skip
        route = make(api, txn, "Logical_Router_Static_Route", ip_prefix="0.0.0.0/0",
                     nexthop="100.65.0.1", external_ids=ids)  # fmt: skip
        snat = make(api, txn, "NAT", type="snat", external_ip="100.65.0.9",
                    logical_ip="10.0.0.0/24", external_ids=ids)  # fmt: skip
        vips = {"100.65.0.9:80": "10.0.0.5:8080,10.0.0.6:8080"}
        lb = make(api, txn, "Load_Balancer", name=f"{tag}-lb", protocol="tcp", vips=vips,
                  external_ids=ids)  # fmt: skip
        make(api, txn, "Logical_Router", name=f"{tag}-lr", options={"chassis": "c1"},
             external_ids=ids, ports=[lrp], static_routes=[route], nat=[snat],
             load_balancer=[lb])  # fmt: skip
        lsp = make(api, txn, "Logical_Switch_Port", name=f"{tag}-lsp", type="router",
                   addresses=["router"], options={"router-port": "peer-lrp"},
                   port_security=[], external_ids=ids)  # fmt: skip
        dns = make(api, txn, "DNS", records={"gw.svc": "10.0.0.1"}, external_ids=ids)
        make(api, txn, "Logical_Switch", name=f"{tag}-ls", ports=[lsp], dns_records=[dns],
             other_config={"subnet": "10.0.0.0/24"}, external_ids=ids)  # fmt: skip

    return fn


def snapshot(api: Any, tag: str) -> dict[str, list[dict[str, Any]]]:
    """The project's committed rows, columns as plain values, names and references by name."""

    def plain(value: Any) -> Any:
        if hasattr(value, "_table"):  # a referenced row
            return ("ref", value._table.name)
        if isinstance(value, list):
            return sorted((plain(v) for v in value), key=repr)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    out: dict[str, list[dict[str, Any]]] = {}
    for table in ("Logical_Router", "Logical_Router_Port", "Logical_Router_Static_Route", "NAT",
                  "Load_Balancer", "Logical_Switch", "Logical_Switch_Port", "DNS"):  # fmt: skip
        rows = [r for r in nbdb.rows(api, table) if r.external_ids.get("vpcbus-project") == tag]
        assert rows, f"no {table} row of {tag}"
        out[table] = [
            {c: plain(getattr(r, c)) for c in api.tables[table].columns if c != "name"}
            for r in rows
        ]
    return out


async def test_inserted_rows_equal_those_of_the_setattr_path(
    nb: NbSession, reader: NbSession
) -> None:
    await nb.transact(project(nbdb.insert, "fast"))
    await nb.transact(project(by_setattr, "slow"))
    await reader.sync()
    fast = await reader.read(lambda api: snapshot(api, "acme.fast"))
    slow = await reader.read(lambda api: snapshot(api, "acme.slow"))
    for rows in (fast, slow):  # the project key differs; nothing else may
        for table in rows.values():
            for row in table:
                row["external_ids"].pop("vpcbus-project")
    assert fast == slow


async def test_a_new_row_is_readable_and_found_by_name_in_its_transaction(nb: NbSession) -> None:
    def fn(api: Any, txn: Txn) -> tuple[Any, ...]:
        lsp = nbdb.insert(api, txn, "Logical_Switch_Port", name="inserted-lsp", type="router")
        switch = nbdb.insert(api, txn, "Logical_Switch", name="inserted-ls")
        found = nbdb.find(api, "Logical_Switch", "inserted-ls")
        nbdb.ensure_member(switch, "ports", lsp)
        return (found is switch, switch.acls, switch.external_ids, lsp.type, lsp.addresses)

    assert await nb.transact(fn) == (True, [], {}, "router", [])


async def test_a_value_python_ovs_cannot_convert_fails_the_transaction(nb: NbSession) -> None:
    def fn(api: Any, txn: Txn) -> None:
        nbdb.insert(api, txn, "Logical_Router", name="bad-router", options={"a": 1})

    with pytest.raises(TemporaryError):
        await nb.transact(fn)
    assert await nb.read(lambda api: nbdb.find(api, "Logical_Router", "bad-router")) is None
