"""The VPC service's reconcile: build the VPC once IPAM has admitted the project, with a
switch port for every NIC IPAM addressed; tear it down once NAT and DNS no longer use it.

Each NIC's port is reported as a member status at the generation IPAM reports for the same
member, so a client that attached a NIC can wait for "VPC has the port for this attach"."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from vpcbus_proto import names
from vpcbus_proto.status import AddressFacts, ExternalAddress, MemberStatus, ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.reconciling import Context, Result
from vpcbus_runtime.records import ProjectRecord
from vpcbus_vpc import desired, ovn

GATEWAY_EIP = "default-gw"

log = structlog.get_logger()


def log_removed(removed: list[str]) -> None:
    if removed:
        log.info("vpc torn down", objects=removed)


class VpcReconciler:
    builds_on: ServiceName = "ipam"
    watches: Sequence[ServiceName] = ("ipam", "nat", "dns")
    purge_after: Sequence[ServiceName] = ("ipam",)

    def __init__(
        self, nb: NbSession, *, chassis: str, isolation: desired.Isolation = desired.NO_ISOLATION
    ) -> None:
        self.nb = nb
        self.chassis = chassis
        self.isolation = isolation

    def close(self) -> None:
        self.nb.close()

    def wants_peer(self, status: ServiceStatus) -> bool:
        """IPAM's status feeds the build; NAT's and DNS's are read only by teardown, which
        waits for them to report Deleted: their other states cannot change the result."""
        return status.service == "ipam" or status.state == "Deleted"

    async def owned_keys(self) -> Sequence[str]:
        return sorted(await self.nb.read(ovn.owned_projects))

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            if record is not None:
                held = await held_by_peers(ctx, record, "the router")
                if held is not None:
                    return held
            removed = await self.nb.transact(lambda api, txn: ovn.teardown_vpc(api, txn, ctx.key))
            log_removed(removed)
            return Result("Deleted", "TornDown")
        ready = await ipam_ready(ctx, record)
        if isinstance(ready, Result):
            return ready
        ipam, facts, gw = ready
        want = desired.build(
            ctx.key,
            names.namespace(ctx.organization, ctx.project),
            record.spec,
            gw,
            facts,
            chassis=self.chassis,
            isolation=self.isolation,
        )
        conflicts = await self.nb.transact(lambda api, txn: ovn.converge_vpc(api, txn, want))
        message = f"router {want.router}, {len(want.workloads) - len(conflicts)} workload ports"
        return Result(
            "Ready", "Reconciled", message, objects=want.objects(),
            members=port_states(want, ipam, conflicts),
        )  # fmt: skip


def port_states(
    want: desired.DesiredVpc, ipam: ServiceStatus, conflicts: dict[str, str]
) -> list[MemberStatus]:
    """One status per workload port, at the generation of IPAM's status of its member."""
    generations = {m.member: m.generation for m in ipam.members}  # O(1) per port
    out = []
    for port in want.workloads:
        generation = generations.get(port.member, 0)
        if port.name in conflicts:
            why = conflicts[port.name]
            out.append(MemberStatus(member=port.member, generation=generation, state="Error",
                                    reason="PortNameTaken", message=why))  # fmt: skip
            continue
        out.append(MemberStatus(member=port.member, generation=generation, state="Ready",
                                reason="PortBound", message=port.name))  # fmt: skip
    return sorted(out, key=lambda m: m.member)


async def held_by_peers(
    ctx: Context, record: ProjectRecord, what: str, requeue_after: float | None = None
) -> Result | None:
    """Teardown waits until NAT and DNS report Deleted for the deletion's generation; the
    ``Pending`` result while one still holds ``what``, else None.

    No status: the peer never built anything for the project, or it tore down and forgot it
    already (it keeps Deleted until we are Deleted, but a redelivered deletion may reach us
    after that). Either way nothing of the peer's hangs on the router."""
    for peer in ("nat", "dns"):
        status = await ctx.peers.status(peer, ctx.organization, ctx.project)
        if status is not None and (
            status.state != "Deleted" or status.generation < record.generation
        ):
            return Result(
                "Pending",
                f"WaitingFor{peer.capitalize()}Teardown",
                f"{what} is removed after {peer} releases it",
                requeue_after=requeue_after,
            )
    return None


async def ipam_ready(
    ctx: Context, record: ProjectRecord
) -> tuple[ServiceStatus, AddressFacts, ExternalAddress] | Result:
    """IPAM's status, its facts and the default-gw EIP once IPAM is Ready at the record's
    generation; else the ``Pending`` result to report."""
    ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
    current = ipam is not None and ipam.generation == record.generation and ipam.state == "Ready"
    facts = ipam.addresses if ipam is not None and current else None
    gw = facts.eip(GATEWAY_EIP) if facts is not None else None
    if ipam is None or facts is None or gw is None:
        detail = f"ipam: {ipam.state} {ipam.reason} {ipam.message}" if ipam else "ipam: -"
        return Result("Pending", "WaitingForIpam", detail.strip())
    return ipam, facts, gw
