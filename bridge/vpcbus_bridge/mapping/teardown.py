"""The bridge's finalizer: deleting a Project, EIp or FIp waits for the teardown (:func:`plan`).

Pure. Kube-DC keeps a Project ``Terminating`` until its SNAT, EIPs, subnet and VPC are gone,
and an EIp until its OvnEip is; the bridge does the same with one finalizer,
:data:`~.objects.FINALIZER`. It is added to every live Project with a valid identity and to
every EIp and FIp it bridges as a member (not the gateway EIp nor the EIps it writes itself:
they go with their project). Once an object has a ``deletionTimestamp``, the mapping no longer
desires its event, so the removal event is published; the finalizer is removed when that
removal has been torn down by every service:

* a Project: each service's status for it is ``Deleted`` at (at least) the generation of the
  published ``project.deleted``, or absent (never reported, or purged after its tombstone);
  and no EIp the bridge wrote is left in its namespace;
* an EIp or FIp: no service lists the member other than ``Deleted`` at the removal's
  generation, and IPAM no longer reports its address.

An object whose event was never published has nothing to tear down. Decisions rest on the
statuses, so the caller asks for removals only once the status stream has been read up to
its end (a restarted bridge must not take "no status yet" for "purged").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vpcbus_bridge.mapping import objects, progress
from vpcbus_bridge.mapping.events import Published
from vpcbus_bridge.mapping.objects import EIP, FIP, PROJECT, Obj, Snapshot, Watched
from vpcbus_proto import names
from vpcbus_proto.status import ServiceStatus

#: Services' statuses by project key (``org.project``) and service name.
Statuses = Mapping[str, Mapping[str, ServiceStatus]]


@dataclass(frozen=True)
class FinalizerChange:
    """Add (``keep``) or remove the bridge's finalizer on one object."""

    watched: Watched
    namespace: str
    name: str
    uid: str
    keep: bool

    def manifest(self) -> Obj:
        """What the bridge applies with its field manager: it owns the finalizer while it
        applies it, and applying without it releases (removes) it. The uid makes the apply
        fail on a namesake created meanwhile instead of touching it."""
        meta: Obj = {"name": self.name, "namespace": self.namespace}
        if self.uid:
            meta["uid"] = self.uid
        if self.keep:
            meta["finalizers"] = [objects.FINALIZER]
        return {"apiVersion": self.watched.api_version, "kind": self.watched.kind, "metadata": meta}


def plan(
    snapshot: Snapshot,
    statuses: Statuses,
    published: Mapping[str, Published],
    *,
    removals: bool,
) -> list[FinalizerChange]:
    """The finalizers to add, and (with ``removals``) those whose teardown is done."""
    out = []
    for (org, name), obj in snapshot.get(PROJECT.short, {}).items():
        if names.is_label(org) and names.is_label(name):
            key = objects.project_key(org, name)
            done = removals and _project_done(
                published.get(key),
                statuses.get(names.project_key(org, name), {}),
                snapshot,
                org,
                name,
            )
            out.extend(_change(PROJECT, obj, done))
    owners = objects.projects_by_namespace(snapshot)
    for watched in (EIP, FIP):
        for (ns, name), obj in snapshot.get(watched.short, {}).items():
            if not bridged_member(watched, obj):
                continue
            if objects.alive(obj) and ns not in owners:
                continue  # not (or no longer) in a project: nothing to wait for
            project = _project_of(ns, watched, name, snapshot, published)
            done = removals and (
                project is None
                or _member_done(
                    watched, name, project, published, statuses.get(names.project_key(*project), {})
                )
            )
            out.extend(_change(watched, obj, done))
    return out


def bridged_member(watched: Watched, obj: Obj) -> bool:
    """An EIp or FIp the bridge publishes as a member (what gets its finalizer)."""
    if watched is FIP:
        return True
    spec = obj.get("spec") or {}
    name = objects.meta(obj)["name"]
    return not (
        spec.get("childRef") or name == objects.GATEWAY_EIP or objects.written_by_bridge(obj)
    )


def _change(watched: Watched, obj: Obj, done: bool) -> list[FinalizerChange]:
    meta = objects.meta(obj)
    has = objects.FINALIZER in objects.finalizers(obj)
    uid = str(meta.get("uid") or "")
    if objects.alive(obj) and not has:
        return [FinalizerChange(watched, meta.get("namespace", ""), meta["name"], uid, True)]
    if not objects.alive(obj) and has and done:
        return [FinalizerChange(watched, meta.get("namespace", ""), meta["name"], uid, False)]
    return []


def _project_done(
    record: Published | None,
    sts: Mapping[str, ServiceStatus],
    snapshot: Snapshot,
    org: str,
    name: str,
) -> bool:
    if record is not None:
        if not record.deleted:
            return False  # its removal is not published yet
        if progress.behind(sts, "Deleted", record.generation) is not None:
            return False
    ns = names.namespace(org, name)
    return not any(
        n == ns and objects.written_by_bridge(o)
        for (n, _), o in snapshot.get(EIP.short, {}).items()
    )


def _project_of(
    ns: str, watched: Watched, name: str, snapshot: Snapshot, published: Mapping[str, Published]
) -> tuple[str, str] | None:
    """(org, project) of a member's namespace: from a Project (alive or not), else from what
    was published for the member (its project may be gone already); None: never published."""
    for org, project in snapshot.get(PROJECT.short, {}):
        if names.is_label(org) and names.is_label(project) and names.namespace(org, project) == ns:
            return org, project
    for record in published.values():
        ref = record.ref
        if (
            record.family == watched.short
            and ref.get("name") == name
            and names.namespace(ref.get("organization", ""), ref.get("project", "")) == ns
        ):
            return ref["organization"], ref["project"]
    return None


def _member_done(
    watched: Watched,
    name: str,
    project: tuple[str, str],
    published: Mapping[str, Published],
    sts: Mapping[str, ServiceStatus],
) -> bool:
    member = f"{watched.short}.{name}"
    record = published.get(objects.member_key(*project, member))
    if record is None:
        return True
    if not record.deleted:
        return False
    for status in sts.values():
        state = status.member(member)
        if state is not None and (state.state != "Deleted" or state.generation < record.generation):
            return False
    ipam = sts.get("ipam")
    facts = ipam.addresses if ipam is not None and ipam.state != "Deleted" else None
    if facts is None:
        return True
    return (facts.eip(name) if watched is EIP else facts.fip(name)) is None
