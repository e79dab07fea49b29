"""The NAT service's reconcile: SNAT once the router and the EIP exist; remove on delete."""

from __future__ import annotations

from collections.abc import Sequence

from vpcbus_nat import desired, ovn
from vpcbus_proto import names
from vpcbus_proto.status import ExternalAddress, ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.reconciling import Context, Result, ready_at, waiting_for_peer
from vpcbus_runtime.records import ProjectRecord

GATEWAY_EIP = "default-gw"


class NatReconciler:
    builds_on: ServiceName = "vpc"
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
            await self.nb.transact(lambda api, txn: ovn.teardown_nat(api, txn, ctx.key))
            return Result("Deleted", "TornDown")
        ready = await peers_ready(ctx, record)
        if isinstance(ready, Result):
            return ready
        ipam, gw = ready
        fips = ipam.addresses.fips if ipam.addresses else []
        want = desired.build(
            ctx.key, names.namespace(ctx.organization, ctx.project), record.spec.cidr_block,
            gw.ip_address, fips, ipam.addresses.services if ipam.addresses else [],
        )  # fmt: skip
        objects = await self.nb.transact(lambda api, txn: ovn.converge_nat(api, txn, want))
        message = f"SNAT {record.spec.cidr_block} -> {gw.ip_address}"
        if len(want.rules) > 1:
            message += f"; {len(want.rules) - 1} FIP(s)"
        if want.balancers:
            message += f"; {len(want.balancers)} load balancer(s)"
        return Result("Ready", "Reconciled", message, objects=objects)


async def peers_ready(
    ctx: Context, record: ProjectRecord
) -> tuple[ServiceStatus, ExternalAddress] | Result:
    """IPAM's status and the default-gw EIP once VPC and IPAM are Ready at the record's
    generation; else the ``Pending`` result to report.

    VPC first, and IPAM only once VPC is Ready (as DNS does): VPC itself waits for IPAM, so
    while VPC is not Ready, IPAM's statuses cannot unblock NAT (``waiting_for="vpc"``) and
    need not be read. With IPAM first, NAT ran once more per new project, for IPAM's Ready
    status, only to find VPC not Ready yet (bench/: 2.98 reconciles per project in a burst)."""
    generation = record.generation
    vpc = await ctx.peers.status("vpc", ctx.organization, ctx.project)
    if not ready_at(vpc, generation):
        return waiting_for_peer("vpc", vpc)
    ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
    if not ready_at(ipam, generation):
        # VPC was Ready on IPAM's facts of this generation; IPAM changed since (a member).
        return waiting_for_peer("ipam", ipam)
    gw = ipam.addresses.eip(GATEWAY_EIP) if ipam.addresses else None
    if gw is None:
        # Not ``waiting_for``: an IPAM Pending status would change this message.
        return Result("Pending", "WaitingForIpam", "ipam reports no default-gw EIP")
    return ipam, gw
