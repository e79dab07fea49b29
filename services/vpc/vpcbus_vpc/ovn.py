"""The VPC applier: converge or remove one project's VPC rows in one NB transaction.

Every function here runs inside :meth:`vpcbus_runtime.ovn.NbSession.transact`, in the IDL
thread. Only rows owned by ``vpc`` for the project are touched, plus the shared external
switches (owned by ``vpc`` with no project), which are created on demand and never removed
by a project's teardown.

Workload ports (one per NIC IPAM addressed) also carry ``vpcbus-role=workload`` and
``vpcbus-member=<member key>``: converge adds, updates and removes exactly those on the project
switch. A project may have thousands, so the switch's ports are read once per converge (every
read of a set column of an IDL row rebuilds it) and matched by name in a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpcbus_runtime import ovn
from vpcbus_runtime.ovn import OWNER, PROJECT, Row, Txn
from vpcbus_vpc.desired import DesiredVpc, PortPair, WorkloadPort, external_switch

SERVICE = "vpc"
ROLE = "vpcbus-role"
MEMBER = "vpcbus-member"
WORKLOAD = "workload"

#: The NB tables and columns this service reads and writes; its session replicates only these.
TABLES = {
    "Logical_Router": ("name", "options", "external_ids", "ports", "static_routes"),
    "Logical_Router_Port": ("name", "mac", "networks", "external_ids"),
    "Logical_Router_Static_Route": ("ip_prefix", "nexthop", "external_ids"),
    "Logical_Switch": ("name", "external_ids", "ports", "acls"),
    "Logical_Switch_Port": (
        "name",
        "type",
        "addresses",
        "options",
        "external_ids",
        "port_security",
    ),
    "ACL": ("direction", "priority", "match", "action", "external_ids"),
}


def ensure_external_switch(api: Any, txn: Txn, network: str) -> Row:
    """The shared external switch of ``network`` with its localnet port."""
    name = external_switch(network)
    ids = ovn.ownership(SERVICE, None, **{ROLE: "external", "vpcbus-network": network})
    ls = ovn.find(api, "Logical_Switch", name)
    if ls is None:
        ls = ovn.insert(api, txn, "Logical_Switch", name=name, external_ids=ids)
    lsp = ovn.upsert(
        api, txn, "Logical_Switch_Port", f"{name}-localnet", type="localnet",
        addresses=["unknown"], options={"network_name": network}, external_ids=ids,
    )  # fmt: skip
    ovn.ensure_member(ls, "ports", lsp)
    return ls


def _router_port(api: Any, txn: Txn, router: Row, pair: PortPair, ids: dict[str, str]) -> None:
    lrp = ovn.upsert(
        api, txn, "Logical_Router_Port", pair.router_port, mac=pair.mac,
        networks=[pair.network], external_ids=ids,
    )  # fmt: skip
    ovn.ensure_member(router, "ports", lrp)


def _switch_port(api: Any, txn: Txn, switch: Row, pair: PortPair, ids: dict[str, str]) -> None:
    options = {"router-port": pair.router_port}
    if pair.nat_addresses:
        options["nat-addresses"] = "router"
    lsp = ovn.upsert(
        api, txn, "Logical_Switch_Port", pair.switch_port, type="router",
        addresses=["router"], options=options, external_ids=ids,
    )  # fmt: skip
    ovn.ensure_member(switch, "ports", lsp)


def _routes(txn: Txn, api: Any, router: Row, want: DesiredVpc, ids: dict[str, str]) -> None:
    mine = [r for r in router.static_routes if r.external_ids.get(OWNER) == SERVICE]
    for route in want.routes:
        match = next((r for r in mine if r.ip_prefix == route.prefix), None)
        if match is None:
            match = ovn.insert(api, txn, "Logical_Router_Static_Route", ip_prefix=route.prefix,
                               nexthop=route.nexthop, external_ids=ids)  # fmt: skip
            router.addvalue("static_routes", match)
        else:
            mine.remove(match)
            ovn.converge(match, nexthop=route.nexthop, external_ids=ids)
    for stale in mine:
        router.delvalue("static_routes", stale)
        stale.delete()


def _drop_stale_ports(
    api: Any, want: DesiredVpc, router: Row, switch: Row, switch_ports: _SwitchPorts
) -> None:
    """Remove the project's ports that the desired VPC no longer has.

    Only :func:`converge_vpc` attaches a project's ports: router ports to the project's
    router, switch ports to its switch or to an external switch ``S``, always as a pair
    ``<router>-<S>`` / ``<S>-<router>`` (:mod:`.desired`). So the places to look are the
    project's router and switch and, for each stale router port, its peer by name, instead
    of every router and switch in the NB, which cost O(projects) per reconcile (issue 9).
    Teardown still sweeps everything the project owns. Workload ports are
    :func:`_workload_ports`'s.
    """
    keep_lrp = {want.lan.router_port, want.external.router_port}
    keep_lsp = {want.lan.switch_port, want.external.switch_port}
    prefix = f"{want.router}-"
    for lrp in list(router.ports):
        if _mine(lrp, want.key) and lrp.name not in keep_lrp:
            router.delvalue("ports", lrp)
            lrp.delete()
            peer_switch = lrp.name.removeprefix(prefix)
            peer = ovn.find(api, "Logical_Switch_Port", f"{peer_switch}-{want.router}")
            ls = ovn.find(api, "Logical_Switch", peer_switch)
            if peer is not None and ls is not None and _mine(peer, want.key):
                _drop_port(ls, peer, keep_lsp)
    for lsp in switch_ports.others:
        if _mine(lsp, want.key) and lsp.name not in keep_lsp:
            switch.delvalue("ports", lsp)
            lsp.delete()


def _drop_port(ls: Row, lsp: Row, keep: set[str]) -> None:
    if lsp.name not in keep and any(p.uuid == lsp.uuid for p in ls.ports):
        ls.delvalue("ports", lsp)
        lsp.delete()


def _mine(row: Row, key: str) -> bool:
    ids = row.external_ids
    return bool(ids.get(OWNER) == SERVICE and ids.get(PROJECT) == key)


def _is_workload(lsp: Row) -> bool:
    return bool(lsp.external_ids.get(ROLE) == WORKLOAD)


@dataclass
class _SwitchPorts:
    """The project switch's ports, read once per converge: every read of an IDL row's set
    or map column rebuilds it, which a project with thousands of ports cannot afford."""

    #: the project's workload ports by name, with their external_ids as read
    workloads: dict[str, tuple[Row, dict[str, str]]]
    #: every other port on the switch
    others: list[Row]

    @classmethod
    def read(cls, switch: Row, key: str) -> _SwitchPorts:
        out = cls({}, [])
        for lsp in switch.ports:
            ids = lsp.external_ids
            mine = ids.get(OWNER) == SERVICE and ids.get(PROJECT) == key
            if mine and ids.get(ROLE) == WORKLOAD:
                out.workloads[lsp.name] = (lsp, ids)
            else:
                out.others.append(lsp)
        return out


def _workload_ports(
    api: Any, txn: Txn, switch: Row, switch_ports: _SwitchPorts, want: DesiredVpc,
    ids: dict[str, str],
) -> dict[str, str]:  # fmt: skip
    """Converge the NICs' ports on the project switch; drop the project's workload ports
    that no NIC wants (detached). Returns the ports that could not be bound: port -> why."""
    conflicts: dict[str, str] = {}
    for port in want.workloads:
        port_ids = {**ids, ROLE: WORKLOAD, MEMBER: port.member}
        lsp, current = switch_ports.workloads.get(port.name, (None, None))
        if lsp is None:
            taken = _new_workload_port(api, txn, switch, port, port_ids)
            if taken is not None:
                conflicts[port.name] = taken
            continue
        if current != port_ids:
            lsp.external_ids = port_ids
        ovn.converge(lsp, addresses=[port.address], port_security=[port.address])
    wanted = {port.name for port in want.workloads}
    for name, (lsp, _ids) in switch_ports.workloads.items():
        if name not in wanted:
            switch.delvalue("ports", lsp)
            lsp.delete()
    return conflicts


def _new_workload_port(
    api: Any, txn: Txn, switch: Row, port: WorkloadPort, ids: dict[str, str]
) -> str | None:
    """A new port on the switch, unless its (unique) name is taken by a row that is not one
    of the project's workload ports: then why, and that row is left alone."""
    taken = ovn.find(api, "Logical_Switch_Port", port.name)
    if taken is not None:
        owner = taken.external_ids.get(PROJECT) or taken.external_ids.get(OWNER) or "nobody"
        return f"port {port.name} already exists and is not this NIC's (owner: {owner})"
    lsp = ovn.insert(api, txn, "Logical_Switch_Port", name=port.name, external_ids=ids,
                     addresses=[port.address], port_security=[port.address])  # fmt: skip
    switch.addvalue("ports", lsp)
    return None


def converge_vpc(api: Any, txn: Txn, want: DesiredVpc) -> dict[str, str]:
    """Converge the project's rows; returns the workload ports it could not bind."""
    ids = ovn.ownership(SERVICE, want.key, **{"vpcbus-namespace": want.namespace})
    router = ovn.upsert(api, txn, "Logical_Router", want.router,
                        options=want.router_options, external_ids=ids)  # fmt: skip
    switch = ovn.upsert(api, txn, "Logical_Switch", want.switch, external_ids=ids)
    switch_ports = _SwitchPorts.read(switch, want.key)
    _router_port(api, txn, router, want.lan, ids)
    _switch_port(api, txn, switch, want.lan, ids)
    ext_switch = ensure_external_switch(api, txn, want.external_network)
    _router_port(api, txn, router, want.external, ids)
    _switch_port(api, txn, ext_switch, want.external, ids)
    _routes(txn, api, router, want, ids)
    _drop_stale_ports(api, want, router, switch, switch_ports)
    _acls(api, txn, switch, want, ids)
    return _workload_ports(api, txn, switch, switch_ports, want, ids)


def _acls(api: Any, txn: Txn, switch: Row, want: DesiredVpc, ids: dict[str, str]) -> None:
    """The switch's ACLs are exactly ``want.acls``: a changed one is replaced."""
    current = list(getattr(switch, "acls", []))
    keep = []
    for acl in want.acls:
        match = next(
            (a for a in current
             if (a.direction, a.priority, a.match, a.action)
             == (acl.direction, acl.priority, acl.match, acl.action) and a not in keep),
            None,
        )  # fmt: skip
        if match is None:
            match = ovn.insert(
                api, txn, "ACL", direction=acl.direction, priority=acl.priority,
                match=acl.match, action=acl.action, external_ids=ids,
            )  # fmt: skip
            switch.addvalue("acls", match)
        keep.append(match)
    for stale in current:
        if stale not in keep and stale.external_ids.get(OWNER) == SERVICE:
            switch.delvalue("acls", stale)
            stale.delete()


def teardown_vpc(api: Any, txn: Txn, key: str) -> list[str]:
    """Remove the project's ports on shared switches, then its switch with its ports (the
    workload ports among them), then its router.

    Rows are found by owner (:func:`ovn.owned`), not by a sweep of every switch: a port of
    the project that is not on its own switch is looked for on the external switches, which
    is where :func:`converge_vpc` puts them, and on every other switch only if it is not
    there (bench/: the sweep made deleting 1,000 projects O(projects) each)."""
    removed = []
    switches = ovn.owned(api, "Logical_Switch", SERVICE, key)
    inside = {p.uuid for ls in switches for p in ls.ports}
    ports = sorted(ovn.owned(api, "Logical_Switch_Port", SERVICE, key), key=lambda p: p.name)
    for lsp in ports:
        if lsp.uuid in inside:
            continue
        holders = _holders(api, lsp, switches)
        for ls in holders:
            ls.delvalue("ports", lsp)
        if holders:
            removed.append(f"Logical_Switch_Port/{lsp.name}")
        lsp.delete()  # a port no switch holds is garbage OVSDB collects anyway
    for ls in switches:
        workloads = 0
        for lsp in list(ls.ports):  # OVSDB would collect them with the switch; say so
            workloads += _is_workload(lsp)
            lsp.delete()
        removed.append(f"Logical_Switch/{ls.name}")
        if workloads:
            removed.append(f"{workloads} workload ports")
        ls.delete()
    for lr in ovn.owned(api, "Logical_Router", SERVICE, key):
        removed.append(f"Logical_Router/{lr.name}")
        lr.delete()
    return removed


def _holders(api: Any, lsp: Row, own: list[Row]) -> list[Row]:
    """The switches other than ``own`` holding ``lsp``: the external ones first."""
    shared = [ls for ls in ovn.shared(api, "Logical_Switch", SERVICE)
              if ovn.has_member(ls, "ports", lsp.uuid)]  # fmt: skip
    if shared:
        return shared
    skip = {ls.uuid for ls in own}
    return [ls for ls in ovn.holders(api, "Logical_Switch", "ports", lsp.uuid)
            if ls.uuid not in skip]  # fmt: skip


def owned_projects(api: Any) -> set[str]:
    return ovn.owned_projects(api, ("Logical_Router", "Logical_Switch"), SERVICE)
