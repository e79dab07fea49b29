"""The VPC service's Kube-OVN backend: the project's ``Vpc`` and ``Subnet`` as custom
resources, the router's external address (``lrp`` ``OvnEip`` ``N-ext-<network>``, pinned to
the ``default-gw`` address IPAM allocated, applied before the Vpc so Kube-OVN uses it) and
the workloads' attachment (``NetworkAttachmentDefinition`` ``default`` in ``N``, Multus'
kind), server-side applied with our own field manager (``VPCBUS_BACKEND=kube-ovn``).

The same contract as the OVN backend (:class:`vpcbus_vpc.reconciler.VpcReconciler`): build
once IPAM reports the project Ready at the record's generation, tear down once NAT and DNS
have released it. Kube-OVN builds the network from the objects asynchronously, so the result
is ``Ready`` only when each kind's own readiness rule holds (kube-ovn.md section 1.2: Vpc
``status.standby``, Subnet's ``Ready`` condition, OvnEip ``status.ready``; the attachment
once stored), else ``Pending``
with a requeue: waiting for the controller is not an error. Objects are found by their
ownership labels, so pruning and teardown see exactly this service's slice of a project.

Kube-OVN creates the switch ports of pods and VMs itself, so this backend reports no
per-NIC member status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from vpcbus_kubeovn import meta
from vpcbus_kubeovn import vpc as manifests
from vpcbus_proto.doctor import Finding
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.kube import KubeClient, Object
from vpcbus_runtime.kubeslice import Slice, SliceGroup
from vpcbus_runtime.reconciling import Context, Result
from vpcbus_vpc.reconciler import GATEWAY_EIP, held_by_peers, ipam_ready

SERVICE = "vpc"
FIELD_MANAGER = "vpcbus-vpc"
#: The kinds of this service's slice, in deletion order.
KINDS: tuple[str, ...] = tuple(k for k in meta.DELETION_ORDER if k in ("OvnEip", "Vpc", "Subnet"))
#: Multus' kind of the slice (deleted before the Subnet, as Kube-DC does).
NAD_KINDS: tuple[str, ...] = ("NetworkAttachmentDefinition",)
#: How soon a project waiting for Kube-OVN (readiness, a finalizer) is looked at again.
REQUEUE_SECONDS = 2.0

log = structlog.get_logger()


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
    if obj["kind"] == "OvnEip":
        return None if status.get("ready") is True else f"{name}: status.ready is not true"
    return None


class KubeVpcReconciler:
    builds_on: ServiceName = "ipam"
    watches: Sequence[ServiceName] = ("ipam", "nat", "dns")
    purge_after: Sequence[ServiceName] = ("ipam",)

    def __init__(self, kube: KubeClient, *, requeue_after: float = REQUEUE_SECONDS) -> None:
        self.kube = kube
        self.requeue_after = requeue_after
        own = {meta.MANAGED_BY: "vpcbus", meta.OWNER: manifests.OWNER}
        self.slice = SliceGroup((
            Slice(kube, SERVICE, meta.NAD_API, NAD_KINDS, labels=own, project_label=meta.PROJECT,
                  field_manager=FIELD_MANAGER, requeue_after=requeue_after),
            Slice(kube, SERVICE, meta.KUBEOVN, KINDS, labels=own, project_label=meta.PROJECT,
                  field_manager=FIELD_MANAGER, requeue_after=requeue_after),
        ))  # fmt: skip

    def close(self) -> None:
        """Nothing to do synchronously: the client's pool closes with the process."""

    def wants_peer(self, status: ServiceStatus) -> bool:
        """As the OVN backend: IPAM feeds the build, NAT and DNS matter only once Deleted."""
        return status.service == "ipam" or status.state == "Deleted"

    async def owned_keys(self) -> Sequence[str]:
        return await self.slice.owned_keys()

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            if record is not None:
                held = await held_by_peers(ctx, record, "the Vpc", self.requeue_after)
                if held is not None:
                    return held
            return await self.slice.teardown(ctx.key)
        ready = await ipam_ready(ctx, record)
        if isinstance(ready, Result):
            return ready
        _, _, gw = ready
        want = manifests.manifests(record.spec, gateway_ip=gw.gateway, gateway_eip_ip=gw.ip_address)
        try:
            applied = await self.slice.apply(ctx.key, want)
        except PermanentError as exc:
            ns = record.spec.namespace
            if exc.reason != "NotFound" or f'namespaces "{ns}" not found' not in exc.message:
                raise
            # The attachment lives in the project's namespace, which the platform makes
            # (Kube-DC's project controller): waiting for it is not an error.
            return Result(
                "Pending", "WaitingForNamespace", f"namespace {ns} does not exist yet",
                requeue_after=self.requeue_after,
            )  # fmt: skip
        objects = [f"{m['kind']}/{m['metadata']['name']}" for m in want]
        message = f"Vpc {manifests.vpc_name(record.spec)} standby on {gw.ip_address}, subnet ready"
        return self.slice.outcome(applied, objects, not_ready, message)

    # -- doctor: read-only, as the dry run of the OVN backend -----------------------------

    def will_repair(self, key: str) -> None:
        """No memo to drop: every reconcile applies the whole slice."""

    async def audit(self, ctx: Context) -> Sequence[Finding]:
        """This project's objects against its desired slice; writes nothing."""

        record = ctx.record
        if record is None or record.spec is None:
            return await self.slice.audit(ctx.key, None)
        ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
        gw = ipam.addresses.eip(GATEWAY_EIP) if ipam and ipam.addresses else None
        if gw is None:
            return self.slice.blocked(ctx.key, "no gateway EIP from ipam")
        want = manifests.manifests(record.spec, gateway_ip=gw.gateway, gateway_eip_ip=gw.ip_address)
        return await self.slice.audit(ctx.key, want)
