"""The VPC service's Kube-OVN backend: the project's ``Vpc`` and ``Subnet`` as custom
resources, server-side applied with our own field manager (``VPCBUS_BACKEND=kube-ovn``).

The same contract as the OVN backend (:class:`vpcbus_vpc.reconciler.VpcReconciler`): build
once IPAM reports the project Ready at the record's generation, tear down once NAT and DNS
have released it. Kube-OVN builds the network from the objects asynchronously, so the result
is ``Ready`` only when each kind's own readiness rule holds (kube-ovn.md section 1.2: Vpc
``status.standby``, Subnet's ``Ready`` condition), else ``Pending`` with a requeue: waiting
for the controller is not an error. Objects are found by their ownership labels, so pruning
and teardown see exactly this service's slice of a project.

Kube-OVN creates the switch ports of pods and VMs itself, so this backend reports no
per-NIC member status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from vpcbus_kubeovn import meta
from vpcbus_kubeovn import vpc as manifests
from vpcbus_proto.doctor import Finding, Kind
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.kube import KubeClient, Object
from vpcbus_runtime.reconciling import Context, Result
from vpcbus_vpc.reconciler import GATEWAY_EIP

SERVICE = "vpc"
FIELD_MANAGER = "vpcbus-vpc"
#: The kinds of this service's slice, in deletion order.
KINDS: tuple[str, ...] = tuple(k for k in meta.DELETION_ORDER if k in ("Vpc", "Subnet"))
#: How soon a project waiting for Kube-OVN (readiness, a finalizer) is looked at again.
REQUEUE_SECONDS = 2.0

log = structlog.get_logger()


def selector(key: str | None = None) -> str:
    """The label selector of this service's objects (of one project, with ``key``)."""
    terms = [f"{meta.MANAGED_BY}=vpcbus", f"{meta.OWNER}={manifests.OWNER}"]
    if key is not None:
        terms.append(f"{meta.PROJECT}={key}")
    return ",".join(terms)


def not_ready(obj: Object) -> str | None:
    """Why a Kube-OVN object is not ready yet by its kind's own rule; None when it is."""
    status: dict[str, Any] = obj.get("status") or {}
    name = f"{obj['kind']} {obj['metadata']['name']}"
    if obj["kind"] == "Vpc":
        return None if status.get("standby") is True else f"{name}: status.standby is not true"
    if obj["kind"] == "Subnet":
        conditions = status.get("conditions") or []
        ready = [c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"]
        if ready and ready[0].get("status") == "True":
            return None
        why = f" ({ready[0].get('reason')})" if ready and ready[0].get("reason") else ""
        return f"{name}: condition Ready is not True{why}"
    return None


class KubeVpcReconciler:
    watches: Sequence[ServiceName] = ("ipam", "nat", "dns")
    purge_after: Sequence[ServiceName] = ("ipam",)

    def __init__(self, kube: KubeClient, *, requeue_after: float = REQUEUE_SECONDS) -> None:
        self.kube = kube
        self.requeue_after = requeue_after

    def close(self) -> None:
        """Nothing to do synchronously: the client's pool closes with the process."""

    def wants_peer(self, status: ServiceStatus) -> bool:
        """As the OVN backend: IPAM feeds the build, NAT and DNS matter only once Deleted."""
        return status.service == "ipam" or status.state == "Deleted"

    async def _listed(self, kind: str, key: str | None = None) -> list[Object]:
        items, _ = await self.kube.list(meta.KUBEOVN, kind, label_selector=selector(key))
        return items

    async def owned_keys(self) -> Sequence[str]:
        keys: set[str] = set()
        for kind in KINDS:
            for obj in await self._listed(kind):
                key = (obj["metadata"].get("labels") or {}).get(meta.PROJECT)
                if key:
                    keys.add(key)
        return sorted(keys)

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            if record is not None:
                for peer in ("nat", "dns"):
                    # As the OVN backend: no status means the peer holds nothing of ours.
                    status = await ctx.peers.status(peer, ctx.organization, ctx.project)
                    if status is not None and (
                        status.state != "Deleted" or status.generation < record.generation
                    ):
                        return Result(
                            "Pending",
                            f"WaitingFor{peer.capitalize()}Teardown",
                            f"the Vpc is removed after {peer} releases it",
                            requeue_after=self.requeue_after,
                        )
            return await self._teardown(ctx.key)
        ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
        if (
            ipam is None
            or ipam.generation != record.generation
            or ipam.state != "Ready"
            or ipam.addresses is None
            or ipam.addresses.eip(GATEWAY_EIP) is None
        ):
            detail = f"ipam: {ipam.state} {ipam.reason} {ipam.message}" if ipam else "ipam: -"
            return Result("Pending", "WaitingForIpam", detail.strip())
        gw = ipam.addresses.eip(GATEWAY_EIP)
        assert gw is not None
        want = manifests.manifests(record.spec, gateway_ip=gw.gateway)
        stored = [await self.kube.apply(m, field_manager=FIELD_MANAGER) for m in want]
        await self._prune(ctx.key, {(m["kind"], m["metadata"]["name"]) for m in want})
        objects = [f"{m['kind']}/{m['metadata']['name']}" for m in want]
        waiting = [why for obj in stored if (why := not_ready(obj)) is not None]
        if waiting:
            return Result(
                "Pending", "WaitingForKubeOvn", "; ".join(waiting),
                requeue_after=self.requeue_after, objects=objects,
            )  # fmt: skip
        message = f"Vpc {manifests.vpc_name(record.spec)} standby, subnet ready"
        return Result("Ready", "Reconciled", message, objects=objects)

    async def _prune(self, key: str, keep: set[tuple[str, str]]) -> None:
        """Delete this project's objects of ours that the desired state no longer has."""
        for kind in KINDS:
            for obj in await self._listed(kind, key):
                name = obj["metadata"]["name"]
                if (kind, name) not in keep:
                    await self.kube.delete(meta.KUBEOVN, kind, name)
                    log.info("pruned", kind=kind, name=name, project=key)

    async def _teardown(self, key: str) -> Result:
        """Delete kind by kind in deletion order; a kind still present after its delete
        (a finalizer: the Vpc waits for its subnets to go) is waited for, not stepped over."""
        for kind in KINDS:
            for obj in await self._listed(kind, key):
                await self.kube.delete(meta.KUBEOVN, kind, obj["metadata"]["name"])
            left = await self._listed(kind, key)
            if left:
                names = ", ".join(o["metadata"]["name"] for o in left)
                return Result(
                    "Pending", "WaitingForDeletion", f"{kind} {names} still terminating",
                    requeue_after=self.requeue_after,
                )  # fmt: skip
        log.info("vpc torn down", project=key)
        return Result("Deleted", "TornDown")

    # -- doctor: read-only, as the dry run of the OVN backend -----------------------------

    def will_repair(self, key: str) -> None:
        """No memo to drop: every reconcile applies the whole slice."""

    async def audit(self, ctx: Context) -> Sequence[Finding]:
        """This project's objects against its desired slice; writes nothing."""

        def finding(kind: Kind, obj: str, detail: str = "") -> Finding:
            return Finding(service=SERVICE, project=ctx.key, kind=kind, object=obj, detail=detail)

        have: dict[tuple[str, str], Object] = {}
        for k in KINDS:
            have.update({(k, o["metadata"]["name"]): o for o in await self._listed(k, ctx.key)})
        record = ctx.record
        if record is None or record.spec is None:
            return [finding("orphan", f"{k}/{n}") for k, n in have]
        ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
        gw = ipam.addresses.eip(GATEWAY_EIP) if ipam and ipam.addresses else None
        if gw is None:
            return [finding("blocked", f"project/{ctx.key}", "no gateway EIP from ipam")]
        out = []
        want = manifests.manifests(record.spec, gateway_ip=gw.gateway)
        for m in want:
            ident = (m["kind"], m["metadata"]["name"])
            found = have.pop(ident, None)
            if found is None:
                out.append(finding("missing", "/".join(ident)))
            elif found.get("spec") != m["spec"]:
                out.append(finding("drifted", "/".join(ident), "spec differs"))
        out += [finding("extra", f"{k}/{n}") for k, n in have]
        return out
