"""IPAM's reconcile: admit a project and give it its gateway EIP, or return its addresses.

Creation: validate against the pools (public gate, overlap with an external network,
egress immutability, namespace uniqueness), then hold the ``default-gw`` EIP (sticky: a
re-run finds the same address). Deletion: addresses go back only after the VPC service
reports the project torn down, so no address is ever free while a row still carries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vpcbus_ipam.addresses import AddressBook, namespace_key
from vpcbus_ipam.pools import Pool, overlapping_pool
from vpcbus_proto import names
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts, ExternalAddress, ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.reconciling import Context, Result

GATEWAY_EIP = "default-gw"


@dataclass(frozen=True)
class Policy:
    """Platform configuration (Kube-DC master-config equivalents)."""

    pools: Mapping[str, Pool]
    allow_public_projects: bool = False


def gateway_holder(project_key: str) -> str:
    return f"project/{project_key}/{GATEWAY_EIP}"


class IpamReconciler:
    watches: Sequence[ServiceName] = ("vpc",)
    purge_after: Sequence[ServiceName] = ()

    def __init__(self, book: AddressBook, policy: Policy) -> None:
        self.book = book
        self.policy = policy

    def wants_peer(self, status: ServiceStatus) -> bool:
        """VPC's status is read only by teardown, which waits for it to report Deleted."""
        return status.state == "Deleted"

    async def owned_keys(self) -> Sequence[str]:
        keys = set()
        for holder in self.book.holders().values():
            parts = holder.split("/")
            if len(parts) == 3 and parts[0] == "project":
                keys.add(parts[1])
        return sorted(keys)

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            return await self._teardown(ctx)
        return await self._admit(ctx, record.spec)

    def _pool_for(self, spec: ProjectSpec) -> Pool:
        network = spec.egress_network_type
        if network == "public" and not self.policy.allow_public_projects:
            raise PermanentError(
                "PublicProjectsDisabled",
                "egressNetworkType public is not allowed: public projects are disabled "
                "on this platform (allow_public_projects=false)",
            )
        pool = self.policy.pools.get(network)
        if pool is None:
            raise PermanentError(
                "UnknownNetwork", f"no external pool is configured for network {network!r}"
            )
        clash = overlapping_pool(spec.network, self.policy.pools)
        if clash is not None:
            raise PermanentError(
                "CidrOverlapsExternalNetwork",
                f"cidrBlock {spec.cidr_block} overlaps external network {clash.name} "
                f"({clash.network}); choose a private range",
            )
        return pool

    async def _admit(self, ctx: Context, spec: ProjectSpec) -> Result:
        pool = self._pool_for(spec)
        holder = gateway_holder(ctx.key)
        held = self.book.held_by(holder)
        if held is not None and held[0] != pool.name:
            raise PermanentError(
                "EgressNetworkTypeImmutable",
                f"egressNetworkType is immutable: the project egresses through {held[0]}",
            )
        ns = names.namespace(ctx.organization, ctx.project)
        owner = await self.book.claim(namespace_key(ns), ctx.key)
        if owner != ctx.key:
            raise PermanentError(
                "NamespaceConflict",
                f"backing namespace {ns} is already used by project {owner.replace('.', '/')}",
            )
        ip = await self.book.allocate(pool, holder)
        if ip is None:
            return Result(
                "Error",
                "NoAvailableIPs",
                f"external network {pool.name} ({pool.network}) has no free address",
                requeue_after=5.0,
            )
        eip = ExternalAddress(
            name=GATEWAY_EIP,
            ip_address=str(ip),
            network=pool.name,
            prefix_length=pool.network.prefixlen,
            gateway=str(pool.gateway),
            ready=True,
            ownership_type="Shared",
            owners=[f"Snat/{ns}"],
        )
        facts = AddressFacts(
            cidr_block=spec.cidr_block,
            egress_network_type=spec.egress_network_type,
            gateway_ip=str(spec.gateway),
            eips=[eip],
        )
        return Result(
            "Ready", "Allocated", f"{GATEWAY_EIP} {ip} on {pool.name}", addresses=facts,
            objects=[f"EIP/{GATEWAY_EIP}={ip}"],
        )  # fmt: skip

    async def _teardown(self, ctx: Context) -> Result:
        holder = gateway_holder(ctx.key)
        ns_key = namespace_key(names.namespace(ctx.organization, ctx.project))
        if self.book.held_by(holder) is None and self.book.holders().get(ns_key) != ctx.key:
            return Result("Deleted", "Released")
        if ctx.record is not None:
            vpc = await ctx.peers.status("vpc", ctx.organization, ctx.project)
            if vpc is None or vpc.state != "Deleted" or vpc.generation < ctx.record.generation:
                return Result(
                    "Pending",
                    "WaitingForVpcTeardown",
                    "addresses are returned once the VPC no longer uses them",
                )
        freed = await self.book.release(holder)
        await self.book.unclaim(ns_key, ctx.key)
        return Result("Deleted", "Released", f"released {freed}" if freed else "")
