"""IPAM's doctor: one project's addresses in the address book, checked and never written.

Called by :meth:`vpcbus_ipam.reconciler.IpamReconciler.audit` for ``vpcbus.svc.ipam.doctor``
(IPAM's reconcile writes KV, so it cannot be dry-run as VPC's, NAT's and DNS's can). The
rules are the sweep's, report-only: what the sweep would free is a ``leak`` (an address of a
removed member, or of a holder no member names once ``grace`` is over: before, its member
record may still be in flight from another replica, and it is not reported); what a crash
between the two writes of an allocation or a release leaves is ``duplicate`` (a holder with a
second address), ``unbound`` (an address without its holder's binding) or ``dangling`` (a
binding without its address). ``outside``: a held address outside its space's network or on
its network, broadcast or gateway address (a changed cidrBlock: the next reconcile moves the
NIC). ``orphan``: keys of a project with no live record, which its teardown frees.

Uniqueness of an address is the store's (one key per address), so "two holders of one
address" cannot happen and is not checked; one MAC bound twice in a subnet is.

The objects named are the KV keys of ``vpcbus-ipam-addresses``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from vpcbus_ipam.addresses import AddressBook, address_key, binding_key, ip_of, namespace_key
from vpcbus_ipam.pools import Pool
from vpcbus_proto.doctor import Finding, Kind

SERVICE = "ipam"


@dataclass(frozen=True)
class Wanted:
    """Who may hold addresses of a live project, and whose release is due."""

    nics: frozenset[str]  # holders in the project subnet
    external: frozenset[str]  # holders in the pools (the gateway EIP among them)
    removed: frozenset[str]  # holders of removed members: the next reconcile releases them


def audit(
    book: AddressBook,
    pools: Mapping[str, Pool],
    key: str,
    namespace: str,
    subnet: Pool | None,
    wanted: Wanted | None,
    *,
    now: float,
    grace: float,
) -> list[Finding]:
    """The project's findings. ``wanted`` None: the project has no live record (orphans);
    ``subnet``: the project subnet as its record defines it (None: unknown)."""

    def found(kind: Kind, obj: str, detail: str) -> Finding:
        return Finding(service=SERVICE, project=key, kind=kind, object=obj, detail=detail)

    out = []
    space = f"subnet.{key}"
    if wanted is None:
        keys = book.slots(space)
        held = sum(1 for s in keys.values() if s.held)
        if keys or book.bindings(space):
            detail = f"{len(keys)} address keys ({held} held), {len(book.bindings(space))} bindings"
            out.append(found("orphan", f"{space}.*", f"the project has no live record: {detail}"))
    else:
        out += _space(book, space, subnet, lambda _h: True, wanted, found, now, grace)
    mine = f"project/{key}/"
    for pool in pools.values():
        out += _space(book, pool.prefix, pool, lambda h: h.startswith(mine), wanted, found, now,
                      grace)  # fmt: skip
    claim = namespace_key(namespace)
    if wanted is None and book.claim_of(claim) == key:
        out.append(found("orphan", claim, "namespace claim of a project with no live record"))
    return out


def _space(
    book: AddressBook,
    space: str,
    pool: Pool | None,
    mine: Callable[[str], bool],
    wanted: Wanted | None,
    found: Callable[[Kind, str, str], Finding],
    now: float,
    grace: float,
) -> list[Finding]:
    """The findings of one space: its held addresses, then its bindings."""
    slots = book.slots(space)
    binds = {h: b for h, b in book.bindings(space).items() if mine(h)}
    held: dict[str, list[IPv4Address]] = {}
    for ip, slot in sorted(slots.items()):
        if slot.held and mine(slot.holder):
            held.setdefault(slot.holder, []).append(ip)
    out = []
    for holder, ips in held.items():
        for ip in ips:
            obj, old = address_key(space, ip), now - slots[ip].at >= grace
            if wanted is None:
                out.append(found("orphan", obj, f"{holder}: the project has no live record"))
                continue
            if holder in wanted.removed:
                out.append(found("leak", obj, f"{holder}: member removed, address not released"))
            elif holder not in (wanted.nics if space.startswith("subnet.") else wanted.external):
                if old:  # (else its member record may be in flight)
                    out.append(found("leak", obj, f"{holder}: no live member names it"))
            elif holder not in binds and old:
                out.append(found("unbound", obj, f"{holder} holds it without a binding"))
            elif holder in binds and ip_of(binds[holder].ip) != ip and old:
                out.append(found("duplicate", obj, f"{holder} holds {_ips(ips)}, bound to "
                                 f"{binds[holder].ip}"))  # fmt: skip
            if pool is not None and _outside(pool, ip):
                out.append(found("outside", obj, f"{holder}: {ip} is not usable in {pool.network}"))
    for holder, bound in sorted(binds.items()):
        at = slots.get(ip_of(bound.ip))
        if at is not None and at.held and at.holder == holder:
            continue
        if at is not None and at.holder == holder and now - at.at < grace:
            continue  # released just now: the binding goes next
        why = "free" if at is None else "released" if not at.held else f"held by {at.holder}"
        kind: Kind = "orphan" if wanted is None else "dangling"
        out.append(found(kind, binding_key(space, holder), f"bound to {bound.ip}, which is {why}"))
    if space.startswith("subnet."):
        macs: dict[str, list[str]] = {}
        for holder, bound in sorted(binds.items()):
            if bound.mac:
                macs.setdefault(bound.mac, []).append(holder)
        for mac, holders in sorted(macs.items()):
            if len(holders) > 1:
                out.append(
                    found("duplicate", f"{space} mac {mac}", f"bound to {', '.join(holders)}")
                )
    return out


def _outside(pool: Pool, ip: IPv4Address) -> bool:
    """Outside the network, or its network, broadcast or gateway address (an excluded address
    may be held: excludes changed later apply to new allocations only)."""
    net = pool.network
    return ip not in net or ip in (net.network_address, net.broadcast_address, pool.gateway)


def _ips(ips: list[IPv4Address]) -> str:
    return " and ".join(str(ip) for ip in ips)
