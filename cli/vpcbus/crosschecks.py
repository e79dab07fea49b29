"""The doctor's own look at OVN NB: what no single service can see.

:func:`cross_check` is pure: it takes a plain snapshot of NB (:func:`snapshot`, read by
:mod:`vpcbus.doctor` through ``vpcbus_runtime.ovn.NbSession``), the statuses the services
published and the project keys any service has a record of, and finds

* ``duplicate``: one IP, or one MAC, on two ports of one logical switch (router ports count
  with their router port's addresses): Kube-OVN's "duplicate IPv4 address found on logical
  switch port" (kube-ovn.md §4, #5);
* ``missing`` / ``mismatch``: a NIC IPAM addressed without a port carrying that MAC and
  address; a workload port IPAM has no allocation for (its address is free for IPAM to hand
  out again: #4304); a router port without the gateway or ``default-gw`` EIP IPAM reports;
  a SNAT rule on another address than that EIP. Checked once VPC (and NAT) report Ready at
  IPAM's generation: before, they are still building;
* ``orphan``: a row owned by vpcbus for a project no service has a record of.

Object names are those of the services' findings (``<table>/<name>``), so the doctor reports
a row once when a service found it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from vpcbus_proto import names
from vpcbus_proto.doctor import Finding, Kind
from vpcbus_proto.status import ServiceStatus
from vpcbus_runtime import ovn

SERVICE = "cross-check"
ROLE, WORKLOAD, MEMBER = "vpcbus-role", "workload", "vpcbus-member"
GATEWAY_EIP = "default-gw"
#: NB tables whose rows carry vpcbus ownership.
OWNED_TABLES = (
    "Logical_Router", "Logical_Router_Port", "Logical_Router_Static_Route", "Logical_Switch",
    "Logical_Switch_Port", "ACL", "NAT", "Load_Balancer", "DNS",
)  # fmt: skip


@dataclass(frozen=True)
class Port:
    name: str
    switch: str
    addresses: tuple[str, ...]
    ids: Mapping[str, str]
    router_port: str  # options:router-port, or ""


@dataclass(frozen=True)
class Owned:
    table: str
    name: str
    owner: str
    project: str


@dataclass
class NbView:
    """What the cross-check reads of NB, as plain values."""

    ports: list[Port] = field(default_factory=list)
    switch_projects: dict[str, str] = field(default_factory=dict)  # switch -> project key
    router_ports: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    snat: dict[str, list[str]] = field(default_factory=dict)  # project key -> external IPs
    owned: list[Owned] = field(default_factory=list)


def snapshot(api: Any) -> NbView:
    """Read NB (``NbSession.read``: under the IDL lock) into an :class:`NbView`."""
    view = NbView()
    for ls in ovn.rows(api, "Logical_Switch"):
        view.switch_projects[ls.name] = ls.external_ids.get(ovn.PROJECT, "")
        for p in ls.ports:
            peer = p.options.get("router-port", "")
            view.ports.append(Port(p.name, ls.name, tuple(p.addresses), dict(p.external_ids), peer))
    for lrp in ovn.rows(api, "Logical_Router_Port"):
        view.router_ports[lrp.name] = (lrp.mac, tuple(lrp.networks))
    for nat in ovn.owned(api, "NAT", "nat"):
        if nat.type == "snat":
            key = nat.external_ids.get(ovn.PROJECT, "")
            view.snat.setdefault(key, []).append(nat.external_ip)
    for table in OWNED_TABLES:
        for row in ovn.rows(api, table):
            ids = row.external_ids
            if ids.get(ovn.OWNER):
                view.owned.append(
                    Owned(table, ovn.label(row), ids[ovn.OWNER], ids.get(ovn.PROJECT, ""))
                )
    return view


def cross_check(
    view: NbView,
    statuses: Mapping[str, Mapping[str, ServiceStatus]],
    records: set[str],
    only: str | None = None,
) -> list[Finding]:
    """Every finding (of project ``only``, when given)."""
    out = [*_duplicates(view), *_allocations(view, statuses), *_orphans(view, records)]
    return [f for f in out if only is None or f.project == only]


def _finding(project: str, kind: Kind, obj: str, detail: str) -> Finding:
    return Finding(service=SERVICE, project=project or "-", kind=kind, object=obj, detail=detail)


def _addresses(port: Port, router_ports: Mapping[str, tuple[str, tuple[str, ...]]]) -> Iterator[
    tuple[str, list[str]]
]:  # fmt: skip
    """(MAC, IPs) of each address entry of the port; ``router``: its router port's."""
    for entry in port.addresses:
        tokens = entry.split()
        if tokens == ["router"]:
            mac, networks = router_ports.get(port.router_port, ("", ()))
            if mac:
                yield mac, [n.split("/")[0] for n in networks]
        elif tokens and tokens[0] not in ("unknown", "dynamic"):
            yield tokens[0], [t for t in tokens[1:] if _is_ip(t)]


def _is_ip(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def _duplicates(view: NbView) -> list[Finding]:
    used: dict[tuple[str, str, str], set[str]] = {}  # (switch, "ip"|"mac", value) -> ports
    for port in view.ports:
        for mac, ips in _addresses(port, view.router_ports):
            used.setdefault((port.switch, "mac", mac.lower()), set()).add(port.name)
            for ip in ips:
                used.setdefault((port.switch, "ip", ip), set()).add(port.name)
    return [
        _finding(view.switch_projects.get(switch, ""), "duplicate",
                 f"Logical_Switch/{switch} {what} {value}", f"on ports {', '.join(sorted(ports))}")
        for (switch, what, value), ports in sorted(used.items())
        if len(ports) > 1
    ]  # fmt: skip


def _settled(st: Mapping[str, ServiceStatus], service: str, ipam: ServiceStatus) -> bool:
    """``service`` reports Ready at IPAM's generation: it has built what IPAM reports."""
    found = st.get(service)
    return found is not None and found.state == "Ready" and found.generation == ipam.generation


def _allocations(
    view: NbView, statuses: Mapping[str, Mapping[str, ServiceStatus]]
) -> list[Finding]:
    ports = {p.name: p for p in view.ports}
    out = []
    for key, st in sorted(statuses.items()):
        ipam = st.get("ipam")
        if ipam is None or ipam.state != "Ready" or ipam.addresses is None:
            continue
        if not _settled(st, "vpc", ipam):
            continue
        facts, vpc = ipam.addresses, st["vpc"]
        ns = names.namespace(ipam.organization, ipam.project)
        listed = set()
        for nic in facts.workloads:
            name = names.workload_port(ns, nic.name, nic.interface)
            listed.add(name)
            bound = vpc.member(nic.member)
            if bound is not None and bound.state == "Error":
                continue  # VPC says why it has no port (its status and error event)
            want, port = f"{nic.mac_address} {nic.ip_address}", ports.get(name)
            obj = f"Logical_Switch_Port/{name}"
            if port is None:
                out.append(_finding(key, "missing", obj, f"IPAM gave {nic.member} {want}"))
            elif want not in port.addresses:
                have = list(port.addresses)
                out.append(_finding(key, "mismatch", obj, f"NB {have}, IPAM {want} ({nic.member})"))
        for port in view.ports:
            ids = port.ids
            if (
                ids.get(ovn.PROJECT) == key
                and ids.get(ROLE) == WORKLOAD
                and port.name not in listed
            ):
                out.append(_finding(key, "mismatch", f"Logical_Switch_Port/{port.name}",
                                    f"{ids.get(MEMBER, '?')} has no IPAM allocation, so its "
                                    f"{list(port.addresses)} may be handed out again"))  # fmt: skip
        out += _router(view, key, facts.gateway_ip, f"{ns}-{ns}-default", "gateway")
        gw = facts.eip(GATEWAY_EIP)
        if gw is not None:
            out += _router(view, key, gw.ip_address, f"{ns}-ext-{gw.network}", GATEWAY_EIP)
            snat = view.snat.get(key, [])
            if _settled(st, "nat", ipam) and gw.ip_address not in snat:
                obj = f"NAT/snat:{facts.cidr_block}->{gw.ip_address}"
                out.append(_finding(key, "mismatch" if snat else "missing", obj,
                                    f"SNAT on {snat or 'nothing'}, IPAM's {GATEWAY_EIP} is "
                                    f"{gw.ip_address}"))  # fmt: skip
    return out


def _router(view: NbView, key: str, ip: str, port: str, what: str) -> list[Finding]:
    found = view.router_ports.get(port)
    have = [n.split("/")[0] for n in found[1]] if found else []
    if ip in have:
        return []
    kind: Kind = "mismatch" if found else "missing"
    return [_finding(key, kind, f"Logical_Router_Port/{port}",
                     f"networks {have}, IPAM's {what} is {ip}")]  # fmt: skip


def _orphans(view: NbView, records: set[str]) -> list[Finding]:
    return [
        _finding(row.project, "orphan", f"{row.table}/{row.name}",
                 f"owned by {row.owner} for {row.project}, which no service has a record of")
        for row in view.owned
        if row.project and row.project not in records
    ]  # fmt: skip
