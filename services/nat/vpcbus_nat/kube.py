"""The NAT service's Kube-OVN backend: the project's ``OvnSnatRule``, an ``OvnEip`` for each
EIP IPAM gave an address (pinned to it), an ``OvnFip`` per ready FIP and an ``OvnDnatRule``
per ready LoadBalancer port (:func:`vpcbus_kubeovn.nat.from_facts`), server-side applied with
our own field manager (``VPCBUS_BACKEND=kube-ovn``). The default gateway's ``lrp`` OvnEip is
the VPC service's (the router's external port); the SNAT rule waits for it like any rule for
its OvnEip.

The same contract as the OVN backend (:class:`vpcbus_nat.reconciler.NatReconciler`): build
once IPAM and VPC report Ready at the record's generation, from IPAM's resolved facts (FIP
targets, service endpoints and ports). Kube-OVN realises the objects asynchronously, so the
result is ``Ready`` only when each object's ``status.ready`` is true (kube-ovn.md section
1.2), else ``Pending`` with a requeue. Objects are found by their ownership labels; a FIP or
service that goes away (or stops being ready) has its rules pruned; teardown deletes them in
:data:`vpcbus_kubeovn.DELETION_ORDER` (the rules before the OvnEips they hold) and waits for
each kind to be gone before the next.

A LoadBalancer service with several endpoints reaches only its lowest one on this backend
(an ``OvnDnatRule`` has one backend; :mod:`vpcbus_kubeovn.nat`).
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
    builds_on: ServiceName = "vpc"
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
        assert ipam.addresses is not None  # peers_ready found the gateway EIP in them
        want = manifests.from_facts(record.spec, ipam.addresses)
        applied = await self.slice.apply(ctx.key, want)
        objects = [f"{m['kind']}/{m['metadata']['name']}" for m in want]
        message = f"SNAT {record.spec.cidr_block} -> {gw.ip_address}"
        if fips := sum(m["kind"] == "OvnFip" for m in want):
            message += f"; {fips} FIP(s)"
        if dnats := sum(m["kind"] == "OvnDnatRule" for m in want):
            message += f"; {dnats} DNAT rule(s)"
        return self.slice.outcome(applied, objects, not_ready, message)

    # -- doctor: read-only, instead of a dry-run reconcile (which would write) ------------

    def will_repair(self, key: str) -> None:
        """No memo to drop: every reconcile applies the whole slice."""

    async def audit(self, ctx: Context) -> Sequence[Finding]:
        """This project's objects against its desired slice; writes nothing."""

        record = ctx.record
        if record is None or record.spec is None:
            return await self.slice.audit(ctx.key, None)
        ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
        facts = ipam.addresses if ipam is not None else None
        if facts is None or facts.eip(GATEWAY_EIP) is None:
            return self.slice.blocked(ctx.key, "no gateway EIP from ipam")
        return await self.slice.audit(ctx.key, manifests.from_facts(record.spec, facts))
