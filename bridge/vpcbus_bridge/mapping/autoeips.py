"""EIp objects for the EIPs IPAM allocates on its own (:func:`plan`). Pure.

Kube-DC shows every address a project holds as an ``EIp``, also those nobody asked for by
name: the gateway's ``default-gw`` (``spec.childRef: <ns>-ext-<network>``), a FIp's own
``fip-<fip>-xxxxx`` and a LoadBalancer Service's own ``slb-<svc>-xxxxx``
(``spec.externalNetworkType``, owned by the FIp or Service through an ownerReference, so
they go with it). The bridge writes those from IPAM's ``addresses.eips`` with its field
manager, labelled ``vpcbus.io/owner: bridge`` (their status is written like any EIp's, with
``deleteReleased: true``), and deletes them once IPAM no longer reports them. The label keeps
them out of the mapping's inputs: they are never published back as user EIPs. An EIp someone
else made (a user's, Kube-DC's own ``default-gw``) is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vpcbus_bridge.mapping import objects
from vpcbus_bridge.mapping.objects import EIP, FIP, SERVICE, Obj, Snapshot
from vpcbus_proto import names
from vpcbus_proto.status import AddressFacts, ServiceStatus

#: Services' statuses by project key (``org.project``) and service name.
Statuses = Mapping[str, Mapping[str, ServiceStatus]]


@dataclass(frozen=True)
class Plan:
    """EIp manifests to apply (those that differ from the snapshot) and EIps to delete."""

    apply: list[Obj]
    delete: list[tuple[str, str]]


def plan(snapshot: Snapshot, statuses: Statuses, *, deletions: bool) -> Plan:
    """What to write so the EIps the bridge wrote match IPAM's own EIPs; deletions only
    with ``deletions`` (the status stream read to its end)."""
    eips = snapshot.get(EIP.short, {})
    wanted: dict[tuple[str, str], Obj] = {}
    reported: set[tuple[str, str]] = set()
    live: set[str] = set()
    for ns, (org, project) in objects.projects_by_namespace(snapshot).items():
        live.add(names.project_key(org, project))
        ipam = statuses.get(names.project_key(org, project), {}).get("ipam")
        if ipam is None or ipam.state == "Deleted" or ipam.addresses is None:
            continue
        for eip in ipam.addresses.eips:
            reported.add((ns, eip.name))
            current = eips.get((ns, eip.name))
            if current is not None and not objects.written_by_bridge(current):
                continue  # a user's EIp, or Kube-DC's own default-gw
            made = _manifest(
                ns, f"{org}.{project}", eip.name, eip.network, ipam.addresses, snapshot
            )
            if made is not None:
                wanted[(ns, eip.name)] = made
    apply = [m for key, m in wanted.items() if not _shows(eips.get(key), m)]
    stale = []
    if deletions:
        for (ns, name), obj in eips.items():
            ours = objects.written_by_bridge(obj) and objects.alive(obj)
            if ours and (ns, name) not in reported and _released(obj, statuses, live):
                stale.append((ns, name))
    return Plan(apply, stale)


def _manifest(
    ns: str, key: str, name: str, network: str, facts: AddressFacts, snapshot: Snapshot
) -> Obj | None:
    """The EIp of one of IPAM's own EIPs; None for an EIP that is not IPAM's own (a user EIP
    whose object is gone) or whose owner is not (or no longer) there."""
    meta: Obj = {
        "name": name,
        "namespace": ns,
        "labels": {
            objects.MANAGED_BY_LABEL: "vpcbus",
            objects.OWNER_LABEL: objects.BRIDGE_OWNER,
            objects.PROJECT_LABEL: key,
        },
    }
    if name == objects.GATEWAY_EIP:
        spec: Obj = {"childRef": f"{ns}-ext-{network}"}
    else:
        owner = _owner(ns, name, facts, snapshot)
        if owner is None:
            return None
        meta["ownerReferences"] = [owner]
        spec = {"externalNetworkType": network}
    return {"apiVersion": EIP.api_version, "kind": EIP.kind, "metadata": meta, "spec": spec}


def _owner(ns: str, name: str, facts: AddressFacts, snapshot: Snapshot) -> Obj | None:
    """The FIp or Service whose own EIP this is (it names no EIp of its own choosing)."""
    for fip in facts.fips:
        obj = snapshot.get(FIP.short, {}).get((ns, fip.name))
        if fip.eip == name and obj is not None and not (obj.get("spec") or {}).get("eip"):
            return _reference(FIP.api_version, FIP.kind, obj)
    for lb in facts.services:
        obj = snapshot.get(SERVICE.short, {}).get((ns, lb.name))
        notes = (objects.meta(obj).get("annotations") or {}) if obj is not None else {}
        bound = notes.get(objects.BIND_EIP) or notes.get(objects.BIND_DEFAULT_GW) == "true"
        if lb.eip == name and obj is not None and not bound:
            return _reference(SERVICE.api_version, SERVICE.kind, obj)
    return None


def _reference(api_version: str, kind: str, obj: Obj) -> Obj | None:
    meta = objects.meta(obj)
    if not meta.get("uid") or not objects.alive(obj):
        return None
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True}  # fmt: skip


def _shows(current: Obj | None, want: Obj) -> bool:
    """The snapshot's object already has the manifest's spec and labels (ownerReferences
    are not kept in the snapshot; they follow the name, which IPAM derives from the owner)."""
    if current is None or not objects.alive(current):
        return False
    labels = objects.meta(current).get("labels") or {}
    wanted = want["metadata"]["labels"]
    return current.get("spec") == want["spec"] and all(
        labels.get(k) == v for k, v in wanted.items()
    )


def _released(obj: Obj, statuses: Statuses, live: set[str]) -> bool:
    """The project's IPAM status says the EIP is gone: the project is live and IPAM's
    addresses (known) lack it (the caller checked), or the project is gone and IPAM's status
    says Deleted or is gone too."""
    key = (objects.meta(obj).get("labels") or {}).get(objects.PROJECT_LABEL, "")
    ipam = statuses.get(key, {}).get("ipam")
    if key in live:
        return ipam is not None and (ipam.state == "Deleted" or ipam.addresses is not None)
    return ipam is None or ipam.state == "Deleted"
