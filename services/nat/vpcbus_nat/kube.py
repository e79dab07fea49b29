"""The NAT service's Kube-OVN backend: the project's default gateway ``OvnEip`` (pinned to
the address IPAM allocated) and its ``OvnSnatRule``, server-side applied with our own field
manager (``VPCBUS_BACKEND=kube-ovn``).

The same contract as the OVN backend (:class:`vpcbus_nat.reconciler.NatReconciler`): build
once IPAM and VPC report Ready at the record's generation. Kube-OVN realises the objects
asynchronously, so the result is ``Ready`` only when each object's ``status.ready`` is true
(kube-ovn.md section 1.2), else ``Pending`` with a requeue. Objects are found by their
ownership labels; teardown deletes them in :data:`vpcbus_kubeovn.DELETION_ORDER` (the rule
before the OvnEip it holds) and waits for each kind to be gone before the next.

Not yet realised here: FIPs (``OvnFip``) and LoadBalancer services (``OvnDnatRule``). A
project that has ready ones is reported as an ``Error`` (``NotSupportedByBackend``) rather
than Ready, so nobody waits for NAT that will not happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from vpcbus_kubeovn import meta
from vpcbus_kubeovn import nat as manifests
from vpcbus_nat.reconciler import GATEWAY_EIP, peers_ready
from vpcbus_proto.doctor import Finding
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.kube import KubeClient, Object
from vpcbus_runtime.kubeslice import Slice
from vpcbus_runtime.reconciling import Context, Result

SERVICE = "nat"
FIELD_MANAGER = "vpcbus-nat"
#: The kinds of this service's slice, in deletion order (listed and pruned even when the
#: desired state has none of a kind).
KINDS: tuple[str, ...] = tuple(
    k for k in meta.DELETION_ORDER if k in ("OvnFip", "OvnDnatRule", "OvnSnatRule", "OvnEip")
)
#: How soon a project waiting for Kube-OVN (readiness, a finalizer) is looked at again.
REQUEUE_SECONDS = 2.0

log = structlog.get_logger()


def not_ready(obj: Object) -> str | None:
    """Why an Ovn* NAT object is not ready yet (``status.ready``); None when it is."""
    status: dict[str, Any] = obj.get("status") or {}
    if status.get("ready") is True:
        return None
    return f"{obj['kind']} {obj['metadata']['name']}: status.ready is not true"


class KubeNatReconciler:
    watches: Sequence[ServiceName] = ("ipam", "vpc")
    purge_after: Sequence[ServiceName] = ("vpc",)

    def __init__(self, kube: KubeClient, *, requeue_after: float = REQUEUE_SECONDS) -> None:
        self.kube = kube
        self.requeue_after = requeue_after
        self.slice = Slice(
            kube, SERVICE, meta.KUBEOVN, KINDS,
            labels={meta.MANAGED_BY: "vpcbus", meta.OWNER: manifests.OWNER},
            project_label=meta.PROJECT, field_manager=FIELD_MANAGER, requeue_after=requeue_after,
        )  # fmt: skip

    def close(self) -> None:
        """Nothing to do synchronously: the client's pool closes with the process."""

    async def owned_keys(self) -> Sequence[str]:
        return await self.slice.owned_keys()

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            return await self.slice.teardown(ctx.key)
        ready = await peers_ready(ctx, record)
        if isinstance(ready, Result):
            return ready
        ipam, gw = ready
        spec = record.spec
        name = manifests.gateway_eip_name(spec.namespace, spec.egress_network_type)
        want = manifests.manifests(spec, addresses={name: gw.ip_address})
        stored = await self.slice.apply(ctx.key, want)
        objects = [f"{m['kind']}/{m['metadata']['name']}" for m in want]
        assert ipam.addresses is not None
        unsupported = [f"FIP {f.name}" for f in ipam.addresses.fips if f.ready]
        unsupported += [f"LoadBalancer {s.name}" for s in ipam.addresses.services if s.ready]
        if unsupported:
            return Result(
                "Error", "NotSupportedByBackend",
                f"the kube-ovn backend does not realise {', '.join(unsupported)} yet",
                objects=objects,
            )  # fmt: skip
        message = f"SNAT {spec.cidr_block} -> {gw.ip_address}"
        return self.slice.outcome(stored, objects, not_ready, message)

    # -- doctor: read-only, instead of a dry-run reconcile (which would write) ------------

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
        spec = record.spec
        name = manifests.gateway_eip_name(spec.namespace, spec.egress_network_type)
        return await self.slice.audit(
            ctx.key, manifests.manifests(spec, addresses={name: gw.ip_address})
        )
