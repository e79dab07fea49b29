"""The DNS applier: one ``DNS`` row per project, referenced only by the project switch."""

from __future__ import annotations

from typing import Any

from vpcbus_dns.desired import DesiredZone
from vpcbus_runtime import ovn
from vpcbus_runtime.errors import PeerRowsMissingError
from vpcbus_runtime.ovn import Txn

SERVICE = "dns"

#: The NB tables and columns this service reads and writes; its session replicates only these.
TABLES = {"DNS": ("records", "external_ids"), "Logical_Switch": ("name", "dns_records")}
#: The reference columns whose holders a teardown looks up (an index each, see NbSession).
REFS = {"Logical_Switch": ("dns_records",)}


def converge_zone(api: Any, txn: Txn, want: DesiredZone, *, adopt: bool = True) -> list[str]:
    """``adopt``: also look for detached rows of the project in the whole ``DNS`` table
    (O(projects)): keep one, delete the others. Worth it only where :func:`strays` found some."""
    switch = ovn.find(api, "Logical_Switch", want.switch)
    if switch is None:
        raise PeerRowsMissingError("SwitchMissing", f"switch {want.switch} does not exist yet")
    ids = ovn.ownership(SERVICE, want.key)
    # The zone hangs off the project switch: look there first.
    rows = [r for r in switch.dns_records if _mine(r, want.key)]
    if adopt:
        attached = {r.uuid for r in rows}
        rows += [r for r in ovn.owned(api, "DNS", SERVICE, want.key) if r.uuid not in attached]
    row = rows[0] if rows else ovn.insert(api, txn, "DNS", external_ids=ids)
    for extra in rows[1:]:
        _detach(api, extra)
        extra.delete()
    ovn.converge(row, records=dict(want.records), external_ids=ids)
    ovn.ensure_member(switch, "dns_records", row)
    return want.objects()


def served_records(api: Any, switch_name: str, key: str) -> dict[str, str] | None:
    """The records the project's switch answers with (its DNS row of ours); None when the
    switch has none."""
    switch = ovn.find(api, "Logical_Switch", switch_name)
    rows = [r for r in switch.dns_records if _mine(r, key)] if switch is not None else []
    if not rows:
        return None
    return {str(name): str(value) for name, value in rows[0].records.items()}


def _mine(row: Any, key: str) -> bool:
    ids = row.external_ids
    return bool(ids.get(ovn.OWNER) == SERVICE and ids.get(ovn.PROJECT) == key)


def _detach(api: Any, dns: Any) -> None:
    for ls in ovn.holders(api, "Logical_Switch", "dns_records", dns.uuid):
        ls.delvalue("dns_records", dns)


def teardown_zone(api: Any, txn: Txn, key: str) -> int:
    rows = ovn.owned(api, "DNS", SERVICE, key)
    for row in rows:
        _detach(api, row)
        row.delete()
    return len(rows)


def owned_projects(api: Any) -> set[str]:
    return ovn.owned_projects(api, ("DNS",), SERVICE)


def strays(api: Any) -> set[str]:
    """Projects with a DNS row of ours that is not their switch's zone: detached (by hand,
    or the switch was remade) or one too many. One pass over the switches and the rows."""
    attached = {
        dns.uuid: ls.name for ls in ovn.rows(api, "Logical_Switch") for dns in ls.dns_records
    }
    out: set[str] = set()
    seen: set[str] = set()
    for row in ovn.owned(api, "DNS", SERVICE):
        key = row.external_ids.get(ovn.PROJECT, "")
        if row.uuid not in attached or key in seen:
            out.add(key)
        seen.add(key)
    return out
