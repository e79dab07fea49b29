"""Services' statuses -> the ``status`` of Kube-DC objects (:func:`status_patches`). Pure.

Project ``status.ready`` (all four services Ready at the generation the bridge published)
with a ``Ready`` condition and ``status.namespace``; EIp ``ipAddress``, ``ready``,
``ownershipType``, ``owners``, ``ovnEIpRef`` (and ``deleteReleased`` on the EIps of a FIp's or
Service's own EIP, which the bridge writes); FIp ``eip``, ``externalIP``,
``resolvedTargetIP``, ``targetVMInterface``, ``ovnFip``; LoadBalancer Service
``status.loadBalancer.ingress``. Only statuses that differ from what the object shows are
returned, so the bridge writes nothing when nothing changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from vpcbus_bridge.mapping import members, objects, progress
from vpcbus_bridge.mapping.events import Published
from vpcbus_bridge.mapping.members import Problem
from vpcbus_bridge.mapping.objects import EIP, FIP, PROJECT, SERVICE, Obj, Snapshot, Watched
from vpcbus_proto import names, subjects
from vpcbus_proto.status import AddressFacts, ServiceStatus, project_ready

#: Services' statuses by project key (``org.project``) and service name.
Statuses = Mapping[str, Mapping[str, ServiceStatus]]


@dataclass(frozen=True)
class StatusPatch:
    """A ``status`` to apply to one object."""

    watched: Watched
    namespace: str
    name: str
    status: Obj

    def manifest(self) -> Obj:
        return {
            "apiVersion": self.watched.api_version,
            "kind": self.watched.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "status": self.status,
        }


def ovn_eip_name(namespace: str, eip: str, network: str, child_ref: str | None = None) -> str:
    """The Kube-OVN ``OvnEip`` behind an EIP: ``<ns>-ext-<network>`` for the gateway EIP (as
    Kube-DC names it), ``<ns>-eip-<name>`` for the others."""
    if child_ref:
        return child_ref
    if eip == objects.GATEWAY_EIP:
        return f"{namespace}-ext-{network}" if network else ""
    return f"{namespace}-eip-{eip}"


def own_ovn_eip_name(namespace: str, eip: str, facts: AddressFacts) -> str | None:
    """The OvnEip behind a FIP's or LoadBalancer Service's own EIP (``fip-<fip>-xxxxx``,
    ``slb-<svc>-xxxxx``): ``<ns>-fip-<fip>`` or ``<ns>-slb-<svc>``, as the NAT backend
    names it; None when no FIP or Service of IPAM's facts uses ``eip``."""
    fip = next((f for f in facts.fips if f.eip == eip), None)
    if fip is not None:
        return f"{namespace}-fip-{fip.name}"
    lb = next((s for s in facts.services if s.eip == eip), None)
    return f"{namespace}-slb-{lb.name}" if lb is not None else None


def ovn_fip_name(namespace: str, fip: str) -> str:
    """The Kube-OVN ``OvnFip`` behind a FIP: ``<ns>-fip-<name>``."""
    return f"{namespace}-fip-{fip}"


def status_patches(
    snapshot: Snapshot,
    statuses: Statuses,
    published: Mapping[str, Published],
    problems: list[Problem],
    now: str,
) -> list[StatusPatch]:
    """The status each Project, EIp, FIp and LoadBalancer Service should show, for those
    whose current status differs (``now`` stamps a condition that changes)."""
    bad = {(p.short, p.namespace, p.name): p.message for p in problems}
    owners = objects.projects_by_namespace(snapshot)
    out = []
    for (org, name), obj in snapshot.get(PROJECT.short, {}).items():
        if (org, name) not in owners.values():
            continue
        record = published.get(objects.project_key(org, name))
        problem = bad.get((PROJECT.short, org, name))
        sts = statuses.get(names.project_key(org, name), {})
        ready, reason, message = _project_ready(sts, record, problem)
        status = {
            "ready": ready,
            "namespace": names.namespace(org, name),
            "conditions": [_condition(obj, ready, reason, message, now)],
        }
        out.append(StatusPatch(PROJECT, org, name, status))
    for (ns, name), obj in snapshot.get(EIP.short, {}).items():
        if ns in owners and objects.alive(obj):
            ipam = statuses.get(names.project_key(*owners[ns]), {}).get("ipam")
            problem = bad.get((EIP.short, ns, name))
            out.append(StatusPatch(EIP, ns, name, _eip_status(obj, ipam, problem, now)))
    for (ns, name), obj in snapshot.get(FIP.short, {}).items():
        if ns in owners and objects.alive(obj):
            ipam = statuses.get(names.project_key(*owners[ns]), {}).get("ipam")
            problem = bad.get((FIP.short, ns, name))
            out.append(StatusPatch(FIP, ns, name, _fip_status(obj, ipam, problem, now)))
    for (ns, name), obj in snapshot.get(SERVICE.short, {}).items():
        if ns in owners and objects.alive(obj) and members.is_load_balancer(obj):
            ipam = statuses.get(names.project_key(*owners[ns]), {}).get("ipam")
            lb = ipam.addresses.service(name) if ipam and ipam.addresses else None
            ingress = [{"ip": lb.ingress_ip}] if lb and lb.ingress_ip else []
            out.append(StatusPatch(SERVICE, ns, name, {"loadBalancer": {"ingress": ingress}}))
    current = {
        (k.short, ns, n): o
        for k in (PROJECT, EIP, FIP, SERVICE)
        for (ns, n), o in snapshot.get(k.short, {}).items()
    }
    return [
        p
        for p in out
        if not _contains(current[(p.watched.short, p.namespace, p.name)].get("status"), p.status)
    ]


def _project_ready(
    sts: Mapping[str, ServiceStatus], record: Published | None, problem: str | None
) -> tuple[bool, str, str]:
    if problem is not None:
        return False, "InvalidSpec", problem
    if record is None or record.deleted:
        return False, "Pending", "not published yet"
    lag = progress.behind(sts, "Ready", record.generation, subjects.SERVICES)
    if lag is None:
        if project_ready(dict(sts)):  # all Ready at the generation, and at one and the same
            return True, "Reconciled", "ipam, vpc, nat and dns are Ready"
        return False, "Pending", "the services are at different generations"
    st = lag.status
    if st is None:
        return False, "Pending", f"{lag.service}: no status yet"
    if lag.why == "generation":
        return False, "Pending", f"{lag.service}: not at generation {record.generation} yet"
    return False, _reason(st.reason), f"{lag.service}: {st.state}: {st.message}".rstrip(": ")


def _eip_status(obj: Obj, ipam: ServiceStatus | None, problem: str | None, now: str) -> Obj:
    meta, spec = objects.meta(obj), obj.get("spec") or {}
    addr = ipam.addresses.eip(meta["name"]) if ipam and ipam.addresses else None
    member = ipam.member(f"eip.{meta['name']}") if ipam else None
    if problem is not None:
        ready, reason, message = False, "InvalidSpec", problem
    elif addr is not None and addr.ready:
        ready, reason, message = True, "Allocated", f"{addr.ip_address} on {addr.network}"
    elif member is not None and member.state == "Error":
        ready, reason, message = False, _reason(member.reason), member.message
    else:
        ready, reason = False, _reason(addr.reason) if addr and addr.reason else "Pending"
        message = "waiting for IPAM"
    network = addr.network if addr else spec.get("externalNetworkType") or ""
    auto = objects.written_by_bridge(obj) and meta["name"] != objects.GATEWAY_EIP
    ovn_eip = ovn_eip_name(meta["namespace"], meta["name"], network, spec.get("childRef"))
    if auto and ipam is not None and ipam.addresses is not None:
        ovn_eip = own_ovn_eip_name(meta["namespace"], meta["name"], ipam.addresses) or ovn_eip
    return {
        **({"deleteReleased": True} if auto else {}),  # a FIp's or Service's own: goes with it
        "ready": ready,
        "ipAddress": addr.ip_address if addr else "",
        "ownershipType": addr.ownership_type if addr else "Released",
        "ovnEIpRef": ovn_eip,
        "owners": [
            dict(zip(("type", "ownerRef"), o.split("/", 1), strict=False))
            for o in (addr.owners if addr else [])
        ],
        "conditions": [_condition(obj, ready, reason, message, now)],
    }


def _fip_status(obj: Obj, ipam: ServiceStatus | None, problem: str | None, now: str) -> Obj:
    meta = objects.meta(obj)
    fip = ipam.addresses.fip(meta["name"]) if ipam and ipam.addresses else None
    member = ipam.member(f"fip.{meta['name']}") if ipam else None
    if problem is not None:
        ready, reason, message = False, "InvalidSpec", problem
    elif fip is not None and fip.ready:
        ready, reason, message = True, "Bound", f"{fip.external_ip} -> {fip.target_ip}"
    elif member is not None and member.state == "Error":
        ready, reason, message = False, _reason(member.reason), member.message
    else:
        ready, reason = False, _reason(fip.reason) if fip and fip.reason else "Pending"
        message = "waiting for IPAM"
    status: Obj = {
        "ready": ready,
        "eip": fip.eip if fip else "",
        "externalIP": fip.external_ip if fip else "",
        "ovnFip": ovn_fip_name(meta["namespace"], meta["name"]) if ready else "",
        "resolvedTargetIP": fip.target_ip if fip else "",
        "conditions": [_condition(obj, ready, reason, message, now)],
    }
    if fip is not None and fip.vm_name:
        status["targetVMInterface"] = {
            "vmName": fip.vm_name,
            "interfaceName": fip.interface,
            "ipAddress": fip.target_ip,
            "mac": fip.mac_address,
        }
    return status


_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")


def _reason(reason: str) -> str:
    """A condition reason as the CRDs' pattern allows it (CamelCase), else ``Pending``."""
    return reason if _REASON.fullmatch(reason) else "Pending"


def _condition(obj: Obj, ready: bool, reason: str, message: str, now: str) -> Obj:
    """The ``Ready`` condition; its transition time moves only when its status does."""
    state = "True" if ready else "False"
    old = next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    since = old["lastTransitionTime"] if old and old.get("status") == state else now
    return {
        "type": "Ready",
        "status": state,
        "reason": reason,
        "message": message[:32768],
        "observedGeneration": int(objects.meta(obj).get("generation") or 0),
        "lastTransitionTime": since,
    }


def _empty(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _contains(have: object, want: object) -> bool:
    """``have`` already shows everything ``want`` sets (an empty value matches absence)."""
    if _empty(want):
        return _empty(have)
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return have == want
