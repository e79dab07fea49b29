"""The DNS service's Kube-OVN backend (``VPCBUS_BACKEND=kube-ovn``): the project's DNS as
Kubernetes objects, as Kube-DC creates them, server-side applied with our own field manager.

* Kube-OVN ``VpcDns`` ``N`` (VPC ``N``, subnet ``N-default``): a CoreDNS inside the VPC,
  since pods of a custom VPC cannot reach the cluster's DNS. Kube-OVN only acts on it when
  the cluster-wide ConfigMap ``vpc-dns-config`` (in Kube-OVN's namespace, usually
  ``kube-system``) enables VPC DNS and names its VIP (``coredns-vip``); that is the
  platform's to create, never ours, so a cluster without it leaves this service Pending
  (``status.active`` stays false: Kube-OVN's ``handleAddOrUpdateVpcDns`` sets it true only
  once the CoreDNS deployment and its SwitchLBRule exist).
* For each ready LoadBalancer service in IPAM's status that has an ingress IP, Kube-DC's
  ``<svc>-ext``: a headless core/v1 ``Service`` in namespace ``N`` and its ``Endpoints`` at
  the ingress IP, so ``<svc>-ext.N.svc.cluster.local`` resolves to the EIP (the OVN
  backend's ``service-ext`` names). The service names themselves are Kubernetes' own.

The same contract as the OVN backend (:class:`vpcbus_dns.reconciler.DnsReconciler`): build
once VPC is Ready at the record's generation (:func:`vpcbus_dns.reconciler.peers_ready`).
``Ready`` once the ``VpcDns`` reports ``status.active``; a Service or Endpoints is ready
once stored. Until then ``Pending`` (``WaitingForKubeOvn``) with a requeue. Services that
are no longer wanted are pruned; teardown goes Endpoints, Service, then ``VpcDns``, each
kind gone before the next. The slice spans two API versions, so it is two
:class:`~vpcbus_runtime.kubeslice.Slice` (core v1 and ``kubeovn.io/v1``) under one owner.

Resolver: the status carries none here. On a cluster, workloads resolve through the DNS
Kubernetes gives their pods (the cluster DNS, or the VpcDns VIP the platform configured in
``vpc-dns-config``, which this service does not read), not a resolv.conf vpcbus hands out.
The zone endpoint answers the ``-ext`` names the stored Endpoints serve (``served``: the
``VpcDns`` exists), with ``resolver`` null.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from vpcbus_dns.reconciler import ipam_facts, peers_ready
from vpcbus_kubeovn import dns as manifests
from vpcbus_kubeovn import meta
from vpcbus_proto import names
from vpcbus_proto.doctor import Finding
from vpcbus_proto.subjects import ServiceName
from vpcbus_proto.zones import ZoneRecord, ZoneReply
from vpcbus_runtime.kube import KubeClient, Object
from vpcbus_runtime.kubeslice import Slice, SliceGroup, covers
from vpcbus_runtime.reconciling import Context, ProjectEndpoint, Result

SERVICE = "dns"
FIELD_MANAGER = "vpcbus-dns"
#: The core kinds of this service's slice, in deletion order.
CORE_KINDS: tuple[str, ...] = tuple(k for k in meta.DELETION_ORDER if k in ("Endpoints", "Service"))
#: The Kube-OVN kinds of this service's slice, in deletion order (after the core ones).
KUBEOVN_KINDS: tuple[str, ...] = ("VpcDns",)
#: How soon a project waiting for Kube-OVN (readiness, a finalizer) is looked at again.
REQUEUE_SECONDS = 2.0

log = structlog.get_logger()


def not_ready(obj: Object) -> str | None:
    """Why an object of the slice is not ready yet: a ``VpcDns`` until ``status.active``;
    a Service or Endpoints is ready once stored. None when it is."""
    if obj["kind"] != "VpcDns":
        return None
    status: dict[str, Any] = obj.get("status") or {}
    if status.get("active") is True:
        return None
    return f"VpcDns {obj['metadata']['name']}: status.active is not true"


def core_differs(stored: Object, want: Object) -> bool:
    """The audit's drift rule for Service (``spec``) and Endpoints (``subsets``)."""
    body = "spec" if want["kind"] == "Service" else "subsets"
    return not covers(stored.get(body), want[body])


class KubeDnsReconciler:
    builds_on: ServiceName = "vpc"
    watches: Sequence[ServiceName] = ("ipam", "vpc")
    purge_after: Sequence[ServiceName] = ("vpc",)

    def __init__(self, kube: KubeClient, *, requeue_after: float = REQUEUE_SECONDS) -> None:
        self.kube = kube
        self.requeue_after = requeue_after
        own = {meta.MANAGED_BY: "vpcbus", meta.OWNER: manifests.OWNER}
        self.core = Slice(
            kube, SERVICE, "v1", CORE_KINDS, labels=own, project_label=meta.PROJECT,
            field_manager=FIELD_MANAGER, requeue_after=requeue_after, differs=core_differs,
        )  # fmt: skip
        self.kubeovn = Slice(
            kube, SERVICE, meta.KUBEOVN, KUBEOVN_KINDS, labels=own, project_label=meta.PROJECT,
            field_manager=FIELD_MANAGER, requeue_after=requeue_after,
        )  # fmt: skip
        # Deleted core first; applied VpcDns first (the -ext names are only of use inside a
        # VPC that has its DNS).
        self.slice = SliceGroup((self.core, self.kubeovn))
        self.endpoints: Mapping[str, ProjectEndpoint] = {"zone": self.zone}

    def close(self) -> None:
        """Nothing to do synchronously: the client's pool closes with the process."""

    async def owned_keys(self) -> Sequence[str]:
        return await self.slice.owned_keys()

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            return await self.slice.teardown(ctx.key)
        facts = await peers_ready(ctx, record.generation)
        if isinstance(facts, Result):
            return facts
        spec = record.spec
        want = manifests.from_facts(spec, facts)
        applied = await self.slice.apply(ctx.key, want)
        objects = [f"{m['kind']}/{m['metadata']['name']}" for m in want]
        ext = [m["metadata"]["name"] for m in want if m["kind"] == "Service"]
        message = f"VpcDns {spec.namespace} active, {len(ext)} -ext service(s)"
        return self.slice.outcome(applied, objects, not_ready, message)

    # -- doctor: read-only, instead of a dry-run reconcile (which would write) ------------

    def will_repair(self, key: str) -> None:
        """No memo to drop: every reconcile applies the whole slice."""

    async def audit(self, ctx: Context) -> Sequence[Finding]:
        """This project's objects against its desired slice; writes nothing."""
        record = ctx.record
        if record is None or record.spec is None:
            return await self.slice.audit(ctx.key, None)
        facts = await ipam_facts(ctx)
        if facts is None:
            return self.slice.blocked(ctx.key, "no addresses from ipam at this generation")
        return await self.slice.audit(ctx.key, manifests.from_facts(record.spec, facts))

    async def zone(self, ctx: Context) -> ZoneReply:
        """The ``-ext`` names the project's stored Endpoints give the cluster DNS, each
        owned by its service (``stale`` when IPAM's status no longer has it there)."""
        ns = names.namespace(ctx.organization, ctx.project)
        served = bool(await self.kubeovn.listed("VpcDns", ctx.key))
        live = ctx.record is not None and ctx.record.spec is not None
        facts = await ipam_facts(ctx) if live else None
        wanted = {svc: ip for svc, ip, _ in manifests.published(facts)} if facts else {}
        records = []
        for ep in await self.core.listed("Endpoints", ctx.key):
            svc = ep["metadata"]["name"].removesuffix("-ext")
            ips = [a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []]
            fqdn = names.service_ext_fqdn(ns, svc)
            if wanted.get(svc) is not None and ips == [wanted[svc]]:
                records.append(ZoneRecord(name=fqdn, addresses=ips, source="service-ext",
                                          owner=f"service/{svc}"))  # fmt: skip
            else:
                records.append(ZoneRecord(name=fqdn, addresses=ips, source="stale"))
        return ZoneReply(
            project=ctx.key,
            zone=names.zone(ns),
            served=served,
            resolver=None,
            records=sorted(records, key=lambda r: r.name),
        )
