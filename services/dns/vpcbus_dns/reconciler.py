"""The DNS service's reconcile: the project zone once the switch exists; gone on delete.

Workload names follow IPAM's status (``addresses.workloads``): they appear when a NIC is
addressed, change when it is re-addressed and go when it is detached. Every status change of
IPAM or VPC re-runs the project (DNS filters neither), so a NIC event reaches the zone through
IPAM's status without DNS consuming member events."""

from __future__ import annotations

from collections.abc import Sequence

from vpcbus_dns import desired, ovn
from vpcbus_proto import names
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.reconciling import Context, Result


class DnsReconciler:
    watches: Sequence[ServiceName] = ("ipam", "vpc")
    purge_after: Sequence[ServiceName] = ("vpc",)

    def __init__(self, nb: NbSession) -> None:
        self.nb = nb

    def close(self) -> None:
        self.nb.close()

    async def owned_keys(self) -> Sequence[str]:
        return sorted(await self.nb.read(ovn.owned_projects))

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            await self.nb.transact(lambda api, txn: ovn.teardown_zone(api, txn, ctx.key))
            return Result("Deleted", "TornDown")
        vpc = await ctx.peers.status("vpc", ctx.organization, ctx.project)
        if vpc is None or vpc.generation != record.generation or vpc.state != "Ready":
            detail = f"{vpc.state} {vpc.reason}" if vpc else "no status yet"
            return Result("Pending", "WaitingForVpc", f"vpc: {detail}")
        ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
        if ipam is None or ipam.generation != record.generation or ipam.addresses is None:
            # VPC is Ready, so IPAM was; until it reports addresses again, keep the zone
            detail = f"{ipam.state} {ipam.reason}" if ipam else "no status yet"
            return Result("Pending", "WaitingForIpam", f"ipam: {detail}")
        ns = names.namespace(ctx.organization, ctx.project)
        want = desired.build(ctx.key, ns, str(record.spec.gateway), ipam.addresses.workloads)
        objects = await self.nb.transact(lambda api, txn: ovn.converge_zone(api, txn, want))
        message = f"zone {desired.zone(ns)}, {len(want.workloads)} workload names"
        return Result("Ready", "Reconciled", message, objects=objects)
