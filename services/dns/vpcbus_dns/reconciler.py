"""The DNS service's reconcile: the project zone once the switch exists; gone on delete.

Names follow IPAM's status: workload names its ``addresses.workloads``, service names its
``addresses.services`` (ready ones, at their endpoints and ingress IP). They appear when
IPAM reports the owner ready, change when it is re-addressed or re-published and go when it
goes. Every status change of IPAM or VPC re-runs the project (DNS filters neither), so a
member event reaches the zone through IPAM's status without DNS consuming member events.

The zone endpoint (``vpcbus.svc.dns.zone``) answers what the project's switch serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vpcbus_dns import desired, ovn
from vpcbus_proto import names
from vpcbus_proto.status import AddressFacts, ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_proto.zones import ZoneReply
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.reconciling import (
    Context,
    ProjectEndpoint,
    Result,
    ready_at,
    waiting_for_peer,
)


async def ipam_facts(ctx: Context) -> AddressFacts | None:
    """IPAM's facts for the project's current generation; None until it has them."""
    ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
    generation = ctx.record.generation if ctx.record is not None else -1
    return _facts_at(ipam, generation)


def _facts_at(ipam: ServiceStatus | None, generation: int) -> AddressFacts | None:
    """``ipam``'s facts if it reported them at ``generation``."""
    if ipam is None or ipam.generation != generation:
        return None
    return ipam.addresses


async def peers_ready(ctx: Context, generation: int) -> AddressFacts | Result:
    """IPAM's facts once VPC is Ready at the record's ``generation``; else the Pending
    result that says what DNS waits for (shared by both backends)."""
    vpc = await ctx.peers.status("vpc", ctx.organization, ctx.project)
    if not ready_at(vpc, generation):
        # IPAM's status cannot unblock this (VPC's follows it): ``waiting_for``.
        return waiting_for_peer("vpc", vpc)
    ipam = await ctx.peers.status("ipam", ctx.organization, ctx.project)
    facts = _facts_at(ipam, generation)
    if facts is None:
        # VPC is Ready, so IPAM was; until it reports addresses again, keep the zone
        return waiting_for_peer("ipam", ipam)
    return facts


class DnsReconciler:
    builds_on: ServiceName = "vpc"
    watches: Sequence[ServiceName] = ("ipam", "vpc")
    purge_after: Sequence[ServiceName] = ("vpc",)

    def __init__(self, nb: NbSession, *, upstream: Sequence[str] = ()) -> None:
        """``upstream``: the platform's resolvers for names outside the zones, in order."""
        self.nb = nb
        self.upstream = tuple(upstream)
        self.endpoints: Mapping[str, ProjectEndpoint] = {"zone": self.zone}
        #: Projects whose DNS rows were not just their switch's zone at the last full scan
        #: (the resync's): only their converge searches the whole table (bench/: that search
        #: on every first build was 40 % of DNS's CPU in a burst).
        self._strays: set[str] = set()

    def close(self) -> None:
        self.nb.close()

    async def owned_keys(self) -> Sequence[str]:
        owned, self._strays = await self.nb.read(lambda api: (ovn.owned_projects(api),
                                                              ovn.strays(api)))  # fmt: skip
        return sorted(owned)

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            await self.nb.transact(lambda api, txn: ovn.teardown_zone(api, txn, ctx.key))
            return Result("Deleted", "TornDown")
        facts = await peers_ready(ctx, record.generation)
        if isinstance(facts, Result):
            return facts
        want = self._desired(ctx, facts)
        adopt = ctx.key in self._strays
        objects = await self.nb.transact(
            lambda api, txn: ovn.converge_zone(api, txn, want, adopt=adopt)
        )
        message = (
            f"zone {want.resolver.zone}: {want.count('service')} service, "
            f"{want.count('service-ext')} -ext and {want.count('workload')} workload names"
        )
        if want.shadowed:
            message += f"; shadowed by an earlier name: {', '.join(want.shadowed)}"
        return Result("Ready", "Reconciled", message, objects=objects, resolver=want.resolver)

    async def _facts(self, ctx: Context) -> AddressFacts | None:
        return await ipam_facts(ctx)

    def _desired(self, ctx: Context, facts: AddressFacts) -> desired.DesiredZone:
        assert ctx.record is not None and ctx.record.spec is not None
        return desired.build(
            ctx.key,
            names.namespace(ctx.organization, ctx.project),
            str(ctx.record.spec.gateway),
            facts.workloads,
            facts.services,
            self.upstream,
        )

    async def zone(self, ctx: Context) -> ZoneReply:
        """The records the project's switch serves, each named by its owner (``stale`` when
        the desired zone no longer has it), and how the project's workloads resolve."""
        ns = names.namespace(ctx.organization, ctx.project)
        switch = f"{ns}-default"
        served = await self.nb.read(lambda api: ovn.served_records(api, switch, ctx.key))
        facts = await self._facts(ctx) if ctx.record and ctx.record.spec else None
        want = self._desired(ctx, facts) if facts is not None else None
        records = (want or desired.build(ctx.key, ns, "")).listing(served or {})
        return ZoneReply(
            project=ctx.key,
            zone=desired.zone(ns),
            served=served is not None,
            resolver=want.resolver if want else None,
            records=records,
        )
