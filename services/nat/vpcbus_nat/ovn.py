"""The NAT applier: converge or remove one project's NAT rows in one NB transaction.

A rule whose translated side changed is replaced, never patched: a new row means OVN
flushes the old conntrack state with it (Kube-DC's FIP-patching bug, kube-dc-networking §1.3).
"""

from __future__ import annotations

from typing import Any

from vpcbus_nat.desired import DesiredNat
from vpcbus_runtime import ovn
from vpcbus_runtime.errors import PeerRowsMissingError
from vpcbus_runtime.ovn import OWNER, PROJECT, Row, Txn

SERVICE = "nat"

#: The NB tables and columns this service reads and writes; its session replicates only these.
TABLES = {
    "Logical_Router": ("name", "nat", "load_balancer"),
    "NAT": ("type", "external_ip", "logical_ip", "external_ids"),
    "Load_Balancer": ("name", "protocol", "vips", "external_ids"),
}
#: The reference columns whose holders a teardown looks up (an index each, see NbSession).
REFS = {"Logical_Router": ("nat", "load_balancer")}


def _mine(row: Row, key: str) -> bool:
    ids = row.external_ids
    return bool(ids.get(OWNER) == SERVICE and ids.get(PROJECT) == key)


def converge_nat(api: Any, txn: Txn, want: DesiredNat) -> list[str]:
    router = ovn.find(api, "Logical_Router", want.router)
    if router is None:
        raise PeerRowsMissingError("RouterMissing", f"router {want.router} does not exist yet")
    ids = ovn.ownership(SERVICE, want.key)
    existing = [n for n in router.nat if _mine(n, want.key)]
    kept: list[Row] = []
    for rule in want.rules:
        match = next(
            (
                n
                for n in existing
                if (n.type, n.logical_ip, n.external_ip)
                == (rule.type, rule.logical_ip, rule.external_ip)
                and n not in kept
            ),
            None,
        )
        if match is None:
            match = ovn.insert(
                api, txn, "NAT", type=rule.type, external_ip=rule.external_ip,
                logical_ip=rule.logical_ip, external_ids=ids,
            )  # fmt: skip
            router.addvalue("nat", match)
        kept.append(match)
    for stale in existing:
        if stale not in kept:
            router.delvalue("nat", stale)
            stale.delete()
    objects = [f"NAT/{r.type}:{r.logical_ip}->{r.external_ip}" for r in want.rules]
    return objects + _converge_balancers(api, txn, router, want, ids)


def _converge_balancers(
    api: Any, txn: Txn, router: Row, want: DesiredNat, ids: dict[str, str]
) -> list[str]:
    """The project's load balancers: one row per service and protocol, attached to its router;
    VIPs are converged in place, rows of services that went are removed."""
    existing = {lb.name: lb for lb in ovn.owned(api, "Load_Balancer", SERVICE, want.key)}
    objects = []
    for b in want.balancers:
        lb = existing.pop(b.name, None)
        if lb is None:
            lb = ovn.insert(api, txn, "Load_Balancer", name=b.name, protocol=b.protocol,
                            vips=dict(b.vips), external_ids=ids)  # fmt: skip
        else:
            ovn.converge(lb, protocol=b.protocol, vips=dict(b.vips))
        ovn.ensure_member(router, "load_balancer", lb)
        objects += [f"LB/{b.protocol}:{vip}->{backends}" for vip, backends in b.vips]
    for stale in existing.values():  # attached to this router only (teardown: any router)
        if any(m.uuid == stale.uuid for m in router.load_balancer):
            router.delvalue("load_balancer", stale)
        stale.delete()
    return objects


def teardown_nat(api: Any, txn: Txn, key: str) -> int:
    """Remove the project's NAT rules and load balancers from whichever routers hold them
    (found by index, :data:`REFS`), then the rows."""
    removed = 0
    for column, table in (("nat", "NAT"), ("load_balancer", "Load_Balancer")):
        for row in ovn.owned(api, table, SERVICE, key):
            for router in ovn.holders(api, "Logical_Router", column, row.uuid):
                router.delvalue(column, row)
            row.delete()
            removed += 1
    return removed


def owned_projects(api: Any) -> set[str]:
    return ovn.owned_projects(api, ("NAT", "Load_Balancer"), SERVICE)
