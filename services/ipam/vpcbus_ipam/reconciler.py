"""IPAM's reconcile of one project: admit it, give it its gateway EIP, address its NICs and
user EIPs, sweep what nobody owns any more, and return everything when it is deleted.

Creation: validate against the pools (public gate, overlap with an external network,
egress immutability, namespace uniqueness), then hold the ``default-gw`` EIP (sticky: a
re-run finds the same address). Members: every attached NIC gets an address in the project
subnet, every user EIP one in its pool; a detached NIC or deleted EIP releases its address
into quarantine. Deletion: addresses go back only after the VPC service reports the project
torn down, so no address is ever free while a row still carries it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from vpcbus_ipam import auditing
from vpcbus_ipam.addresses import AddressBook, Binding, ip_of, namespace_key
from vpcbus_ipam.allocator import AllocationError, SpaceView
from vpcbus_ipam.pools import Pool, overlapping_pool, project_subnet
from vpcbus_proto import names
from vpcbus_proto.doctor import Finding
from vpcbus_proto.members import (
    DEFAULT_INTERFACE,
    EipSpec,
    FipSpec,
    LbServiceSpec,
    WorkloadSpec,
    parse_member,
)
from vpcbus_proto.names import fip_eip_name, service_eip_name
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import (
    AddressFacts,
    ExternalAddress,
    ExternalNetwork,
    FloatingIp,
    LoadBalancer,
    MemberStatus,
    PortState,
    ServiceStatus,
    Usage,
    WorkloadAddress,
)
from vpcbus_proto.subjects import EventFamily, ServiceName
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.members import MemberRecord
from vpcbus_runtime.reconciling import Context, Result

GATEWAY_EIP = "default-gw"
#: An address held by a holder that no member record names is freed only after this long:
#: the record may be in flight from another replica.
SWEEP_GRACE = 60.0
#: The sweep runs when a member went away, and otherwise at most this often per project.
SWEEP_EVERY = 10.0
#: Allocations of one reconcile run concurrently in chunks of this size.
PIPELINE = 128
#: A project whose EIP waits for a free address is retried this often.
RETRY_EXHAUSTED = 5.0

log = structlog.get_logger()


@dataclass(frozen=True)
class Policy:
    """Platform configuration (Kube-DC master-config equivalents)."""

    pools: Mapping[str, Pool]
    allow_public_projects: bool = False
    #: The external network of a user EIP that names none.
    default_network: str = "cloud"


def gateway_holder(project_key: str) -> str:
    return f"project/{project_key}/{GATEWAY_EIP}"


def eip_holder(project_key: str, name: str) -> str:
    return f"project/{project_key}/eip/{name}"


def fip_holder(project_key: str, name: str) -> str:
    """The holder of the EIP a FIP allocated for itself."""
    return f"project/{project_key}/fip/{name}"


def service_holder(project_key: str, name: str) -> str:
    """The holder of the EIP a LoadBalancer service allocated for itself."""
    return f"project/{project_key}/svc/{name}"


def workload_mac(namespace: str, holder: str) -> str:
    """A stable, locally administered unicast MAC for a NIC that asked for none."""
    digest = hashlib.sha256(f"{namespace}/{holder}".encode()).digest()
    return "0e:" + ":".join(f"{b:02x}" for b in digest[:5])


class _Macs:
    """MAC -> holder in one subnet during one reconcile: what the address book has bound,
    overlaid with what this run gave or promised."""

    def __init__(self, book: AddressBook, space: str) -> None:
        self._book, self._space = book, space
        self._taken: dict[str, str] = {}

    def take(self, mac: str, holder: str) -> str:
        """Record ``mac`` for ``holder`` unless another holder has it; returns who has it."""
        user = self._taken.get(mac) or self._book.mac_user(self._space, mac) or holder
        self._taken[mac] = user
        return user


def unused_mac(namespace: str, holder: str, macs: _Macs) -> str:
    """The holder's default MAC, or, when another NIC of the subnet uses it (a MAC requested
    to equal it, say), the first derived one that none uses."""
    mac, salt = workload_mac(namespace, holder), 0
    while macs.take(mac, holder) != holder:
        salt += 1
        mac = workload_mac(namespace, f"{holder}#{salt}")
    return mac


@dataclass
class _Members:
    """What one reconcile learns about a project's members."""

    workloads: list[WorkloadAddress] = field(default_factory=list)
    eips: list[ExternalAddress] = field(default_factory=list)
    fips: list[FloatingIp] = field(default_factory=list)
    services: list[LoadBalancer] = field(default_factory=list)
    gateway_owners: list[str] = field(default_factory=list)  # services on default-gw
    states: list[MemberStatus] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)
    retry: bool = False

    def state(self, rec: MemberRecord, state: str, reason: str, message: str = "") -> None:
        self.states.append(
            MemberStatus.model_validate(
                {"member": rec.member, "generation": rec.generation, "state": state,
                 "reason": reason, "message": message}
            )
        )  # fmt: skip


@dataclass(frozen=True)
class _Allocated:
    """A NIC's Ready outcome, kept between reconciles and rebuilt only when its record or
    its binding changed: a project is reconciled once per batch of events, and it may have
    thousands of NICs that are already addressed."""

    rec: MemberRecord
    bound: Binding
    workload: WorkloadAddress
    state: MemberStatus

    def add_to(self, out: _Members) -> None:
        out.workloads.append(self.workload)
        out.states.append(self.state)


@dataclass
class _Memo:
    """What the last reconcile of a project found, so the next one skips what did not
    change: NICs whose record and addresses are the same, and the sweep when no member
    went away (a burst of attachments reconciles a big project many times)."""

    view: SpaceView  # the subnet's view: a new one voids the memo
    change: int = -1  # the address book's change number when that reconcile started
    nics: dict[str, _Allocated] = field(default_factory=dict)  # holder -> Ready NIC
    swept_at: float = -math.inf
    swept_wanted: frozenset[str] = frozenset()
    swept_tombstones: frozenset[str] = frozenset()
    sweep_at: float = math.inf  # when an address the last sweep spared may go

    def sweep_due(self, wanted: set[str], tombstones: frozenset[str]) -> bool:
        """A member went away since the last sweep, the grace time of an address it spared
        is over, or it is ``SWEEP_EVERY`` old (it finds new orphans)."""
        now = time.time()
        return (
            now - self.swept_at >= SWEEP_EVERY
            or now >= self.sweep_at
            or not self.swept_wanted <= wanted
            or self.swept_tombstones != tombstones
        )

    def swept(self, wanted: frozenset[str], tombstones: frozenset[str], due: float) -> None:
        self.swept_at, self.sweep_at = time.time(), due
        self.swept_wanted, self.swept_tombstones = wanted, tombstones


def _allocated(
    before: _Allocated | None, rec: MemberRecord, nic: WorkloadSpec, bound: Binding
) -> _Allocated:
    if before is not None and before.rec is rec and before.bound is bound:
        return before
    state = MemberStatus(
        member=rec.member, generation=rec.generation, state="Ready", reason="Allocated",
        message=f"{bound.ip} {bound.mac}",
    )  # fmt: skip
    return _Allocated(rec, bound, _workload(rec, nic, bound), state)


class IpamReconciler:
    watches: Sequence[ServiceName] = ("vpc",)
    purge_after: Sequence[ServiceName] = ()
    consumes: Sequence[EventFamily] = ("project", "workload", "eip", "fip", "service")
    #: A project is reconciled as a whole, so a run costs time in proportion to its NICs:
    #: under a burst, a project that was just reconciled waits 50 times as long as that run
    #: took (at most 1 s) and takes the events of that time in one run (the work queue's
    #: pacing), and the controller keeps enough events in flight to fill such batches.
    #: bench/ipam.py, 20,000 NICs over 20 projects: pace 1 with 1,024 in flight 779/s,
    #: pace 50 with 1,024 768/s (the batches are capped by what is in flight), pace 50 with
    #: 4,096 see bench/RESULTS.md.
    pace: float = 50.0
    in_flight: int = 4096

    def __init__(self, book: AddressBook, policy: Policy) -> None:
        self.book = book
        self.policy = policy
        self.background: list[asyncio.Task[None]] = []
        self._memos: dict[str, _Memo] = {}  # by project key

    def close(self) -> None:
        for task in self.background:
            task.cancel()

    def wants_peer(self, status: ServiceStatus) -> bool:
        """VPC's status is read only by teardown, which waits for it to report Deleted."""
        return status.state == "Deleted"

    async def owned_keys(self) -> Sequence[str]:
        keys = set(self.book.claims().values())
        for space in self.book.spaces():
            if space.startswith("subnet."):
                keys.add(space.removeprefix("subnet."))
                continue
            for holder in set(self.book.held(space)) | set(self.book.bindings(space)):
                parts = holder.split("/")
                if len(parts) >= 3 and parts[0] == "project":
                    keys.add(parts[1])
        return sorted(keys)

    async def audit(self, ctx: Context) -> Sequence[Finding]:
        """The doctor's check of the project's addresses: the sweep's rules, report-only
        (:mod:`.auditing`). Nothing while a deletion waits for VPC's teardown."""
        record = ctx.record
        if record is not None and record.spec is None:
            vpc = await ctx.peers.status("vpc", ctx.organization, ctx.project)
            if vpc is None or vpc.state != "Deleted" or vpc.generation < record.generation:
                return []
        live = record is not None and record.spec is not None
        subnet = None
        if record is not None and record.spec is not None:
            subnet = project_subnet(ctx.key, record.spec.network, record.spec.gateway)
        return auditing.audit(
            self.book, self.policy.pools, ctx.key, names.namespace(ctx.organization, ctx.project),
            subnet, wanted_holders(ctx) if live else None, now=time.time(), grace=SWEEP_GRACE,
        )  # fmt: skip

    def will_repair(self, key: str) -> None:
        """The doctor queues ``key``: its next reconcile checks every NIC and sweeps."""
        self._memos.pop(key, None)

    async def reconcile(self, ctx: Context) -> Result:
        record = ctx.record
        if record is None or record.spec is None:
            self._memos.pop(ctx.key, None)
            result = await self._teardown(ctx)
            return self._orphan_members(ctx, result)
        return await self._admit(ctx, record.spec)

    # -- admission and the gateway EIP ---------------------------------------------------

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

    def _held_pool(self, holder: str) -> str | None:
        for name, pool in self.policy.pools.items():
            if self.book.binding(pool.prefix, holder) is not None:
                return name
        return None

    async def _admit(self, ctx: Context, spec: ProjectSpec) -> Result:
        pool = self._pool_for(spec)
        holder = gateway_holder(ctx.key)
        held = self._held_pool(holder)
        if held is not None and held != pool.name:
            raise PermanentError(
                "EgressNetworkTypeImmutable",
                f"egressNetworkType is immutable: the project egresses through {held}",
            )
        ns = names.namespace(ctx.organization, ctx.project)
        if names.reserved_namespace(ns):
            raise PermanentError(
                "NamespaceReserved",
                f"backing namespace {ns} starts with {names.EXTERNAL_PREFIX!r}, which names "
                "the external networks' switch ports; choose another organization or project name",
            )
        owner = await self.book.claim(namespace_key(ns), ctx.key)
        if owner != ctx.key:
            raise PermanentError(
                "NamespaceConflict",
                f"backing namespace {ns} is already used by project {owner.replace('.', '/')}",
            )
        try:
            gw = await self.book.ensure(pool, holder)
        except AllocationError as exc:
            return Result(
                "Error", exc.reason, exc.message, requeue_after=RETRY_EXHAUSTED
            )  # the project cannot egress yet; its members wait with it
        eip = _external(GATEWAY_EIP, gw, pool, ownership="Shared", owners=[f"Snat/{ns}"])
        subnet = project_subnet(ctx.key, spec.network, spec.gateway)
        members = await self._members(ctx, ns, subnet, eip)
        eip = eip.model_copy(update={"owners": [*eip.owners, *members.gateway_owners]})
        facts = AddressFacts(
            cidr_block=spec.cidr_block,
            egress_network_type=spec.egress_network_type,
            gateway_ip=str(spec.gateway),
            eips=[eip, *members.eips],
            workloads=members.workloads,
            fips=members.fips,
            services=members.services,
            external_networks=[
                ExternalNetwork(name=p.name, cidr=str(p.network), gateway=str(p.gateway))
                for _name, p in sorted(self.policy.pools.items())
            ],
            subnet=self.usage(subnet),
        )
        message = f"{GATEWAY_EIP} {gw.ip} on {pool.name}"
        if members.swept:
            message += f"; swept {len(members.swept)}: {', '.join(sorted(members.swept))}"
            log.info("ipam sweep freed", freed=sorted(members.swept))
        return Result(
            "Ready", "Allocated", message, addresses=facts,
            objects=[f"EIP/{GATEWAY_EIP}={gw.ip}"], members=members.states,
            requeue_after=RETRY_EXHAUSTED if members.retry else None,
        )  # fmt: skip

    async def expire_pool(self, name: str) -> list[str]:
        """Drop released records of ``name`` whose project is gone and quarantine is over."""
        live = set(self.book.claims().values())

        def keep(holder: str) -> bool:
            parts = holder.split("/")
            return len(parts) >= 3 and parts[0] == "project" and parts[1] in live

        return await self.book.expire(self.policy.pools[name], keep)

    def usage(self, space: Pool) -> Usage:
        view = self.book.view(space)
        now = time.time()
        counts = view.counts(now, self.book.quarantine)
        in_use, available = view.ranges(now, self.book.quarantine)
        return Usage(
            cidr=str(space.network),
            capacity=counts.capacity,
            in_use=counts.in_use,
            quarantined=counts.quarantined,
            available=counts.available,
            in_use_ranges=in_use,
            available_ranges=available,
        )

    # -- members: NICs and user EIPs -----------------------------------------------------

    async def _members(
        self, ctx: Context, ns: str, subnet: Pool, gateway: ExternalAddress
    ) -> _Members:
        out = _Members()
        live = {m: r for m, r in ctx.members.items() if not r.deleted}
        nics = {r.workload.holder: r for r in live.values() if r.workload is not None}
        eips = {r.eip.name: r for r in live.values() if r.eip is not None}
        #: MACs given or promised in this run, beside the bound ones the book knows: a NIC's
        #: requested MAC must not take the default MAC of a NIC about to be addressed.
        macs = _Macs(self.book, subnet.prefix)
        if any(r.workload is not None and r.workload.mac is not None for r in nics.values()):
            for h, r in nics.items():
                unbound = self.book.binding(subnet.prefix, h) is None
                if r.workload is not None and r.workload.mac is None and unbound:
                    macs.take(workload_mac(ns, h), h)
        names_taken: dict[tuple[str, str], str] = {}
        jobs: list[Awaitable[None]] = []
        view = self.book.view(subnet)
        change = self.book.changes()
        memo = self._memos.get(ctx.key)
        if memo is None or memo.view is not view:
            memo = self._memos[ctx.key] = _Memo(view)
        before, kept = memo.nics, {}
        for holder, rec in sorted(nics.items()):
            assert rec.workload is not None
            nic = rec.workload
            other = names_taken.setdefault((nic.name, nic.interface), holder)
            if other != holder:
                out.state(rec, "Error", "NameConflict",
                          f"{holder}: {other} has the same name and interface in {ns}")  # fmt: skip
                continue
            if nic.mac is not None:
                user = macs.take(nic.mac, holder)
                if user != holder:
                    out.state(rec, "Error", "MACConflict",
                              f"mac {nic.mac} is already used by {user}")  # fmt: skip
                    self._keep(out, subnet, rec, nic)
                    continue
            known = before.get(holder)
            if (
                known is not None
                and known.rec is rec
                and not self.book.changed_since(subnet.prefix, holder, memo.change)
            ):
                kept[holder] = known  # the same record, and nothing of its addresses moved
                known.add_to(out)
                continue
            static = ip_of(nic.ip) if nic.ip is not None else None
            bound = self.book.current(view, holder, static=static, mac=nic.mac)
            if bound is not None:  # addressed already: no I/O, and the same objects as before
                kept[holder] = _allocated(known, rec, nic, bound)
                kept[holder].add_to(out)
                continue
            jobs.append(self._nic(out, ns, subnet, rec, nic, macs))
        for _name, rec in sorted(eips.items()):
            assert rec.eip is not None
            jobs.append(self._eip(out, ctx.key, rec, rec.eip))
        for i in range(0, len(jobs), PIPELINE):
            await asyncio.gather(*jobs[i : i + PIPELINE])
        fips = {r.fip.name: r for r in live.values() if r.fip is not None}
        fip_holders: set[str] = set()
        claimed: dict[str, str] = {}  # user EIP or "target/<ip>" -> the FIP that has it
        for _name, rec in sorted(fips.items()):
            assert rec.fip is not None
            own = await self._fip(out, ctx.key, subnet, rec, rec.fip, claimed, gateway.network)
            if own is not None:
                fip_holders.add(own)
        services = {r.service.name: r for r in live.values() if r.service is not None}
        ports: dict[tuple[str, int, str], str] = {}  # (EIP, port, protocol) -> service
        for _name, rec in sorted(services.items()):
            assert rec.service is not None
            own = await self._service(out, ctx.key, subnet, rec, rec.service, gateway, ports)
            if own is not None:
                fip_holders.add(own)
        memo.nics, memo.change = kept, change
        tombstones = []
        for member, rec in ctx.members.items():
            if rec.deleted:
                out.state(rec, "Deleted", "Released")
                tombstones.append(member)
        eip_holders = {eip_holder(ctx.key, n) for n in eips} | fip_holders
        gone = frozenset(tombstones)
        if memo.sweep_due(set(nics) | eip_holders, gone):
            due = await self._sweep(out, ctx, subnet, set(nics), eip_holders)
            memo.swept(frozenset(nics) | eip_holders, gone, due)
        out.workloads.sort(key=lambda w: int(ip_of(w.ip_address)))
        out.eips.sort(key=lambda e: e.name)
        out.fips.sort(key=lambda f: f.name)
        out.services.sort(key=lambda v: v.name)
        out.states.sort(key=lambda m: m.member)  # a stable status: republished on change only
        return out

    async def _nic(
        self,
        out: _Members,
        ns: str,
        subnet: Pool,
        rec: MemberRecord,
        nic: WorkloadSpec,
        macs: _Macs,
    ) -> None:
        holder = nic.holder
        static = ip_of(nic.ip) if nic.ip is not None else None
        try:
            bound = await self.book.ensure(
                subnet, holder, static=static, mac=nic.mac,
                default_mac=lambda _ip: unused_mac(ns, holder, macs),
            )  # fmt: skip
        except AllocationError as exc:
            out.state(rec, "Error", exc.reason, f"{holder}: {exc.message}")
            self._keep(out, subnet, rec, nic)  # a refused change keeps the address it had
            # Addressed by itself once an address frees up, or the asked-for one's quarantine
            # ends (a NIC that comes back right after its address was given up, say).
            out.retry = out.retry or exc.reason in ("NoAvailableIPs", "IPQuarantined")
            return
        _allocated(None, rec, nic, bound).add_to(out)

    def _keep(self, out: _Members, subnet: Pool, rec: MemberRecord, nic: WorkloadSpec) -> None:
        bound = self.book.binding(subnet.prefix, nic.holder)
        if bound is not None:
            out.workloads.append(_workload(rec, nic, bound))

    async def _eip(self, out: _Members, key: str, rec: MemberRecord, spec: EipSpec) -> None:
        holder = eip_holder(key, spec.name)
        network = spec.external_network_type or self.policy.default_network
        pool = self.policy.pools.get(network)
        held = self._held_pool(holder)
        problem = None
        if spec.name == GATEWAY_EIP:
            problem = ("NameReserved", f"EIP name {GATEWAY_EIP} is the project's gateway EIP")
        elif pool is None:
            problem = ("UnknownNetwork", f"no external pool is configured for {network!r}")
        elif held is not None and held != network:
            problem = ("ExternalNetworkTypeImmutable", f"the EIP already has an address on {held}")
        if problem is not None or pool is None:
            reason, message = problem or ("UnknownNetwork", network)
            out.state(rec, "Error", reason, message)
            return
        try:
            bound = await self.book.ensure(pool, holder)
        except AllocationError as exc:
            out.state(rec, "Error", exc.reason, exc.message)
            out.eips.append(
                ExternalAddress(
                    name=spec.name, ip_address="", network=pool.name,
                    prefix_length=pool.network.prefixlen, gateway=str(pool.gateway),
                    ready=False, ownership_type="Released", reason=exc.reason,
                )
            )  # fmt: skip
            out.retry = out.retry or exc.reason == "NoAvailableIPs"  # ready once one frees up
            return
        out.eips.append(_external(spec.name, bound, pool, ownership="Released", owners=[]))
        out.state(rec, "Ready", "Allocated", f"{bound.ip} on {pool.name}")

    async def _fip(
        self,
        out: _Members,
        key: str,
        subnet: Pool,
        rec: MemberRecord,
        spec: FipSpec,
        claimed: dict[str, str],
        egress: str,
    ) -> str | None:
        """Resolve a FIP's target and external address (after the NICs and EIPs of the run).

        Returns the holder of the FIP's own EIP when it has or wants one (the sweep keeps it).
        Not ready (member Error, with an error event) while the target or the EIP is missing;
        a later reconcile of the project (a NIC attached, an EIP freed) makes it ready."""
        target_ip, vm, iface, mac = "", "", "", ""
        problem: tuple[str, str] | None = None
        if spec.vm_target is not None:
            vm = spec.vm_target.vm_name
            iface = spec.vm_target.interface_name or DEFAULT_INTERFACE
            nic = _vm_nic(out, vm, iface)
            if nic is None:
                problem = ("TargetNotFound", f"VM {vm} has no address on interface {iface}")
            else:
                target_ip, mac = nic.ip_address, nic.mac_address
        else:
            assert spec.ip_address is not None
            target_ip = spec.ip_address
            if ip_of(target_ip) not in subnet.network:
                problem = ("TargetOutOfSubnet", f"{target_ip} is outside {subnet.network}")
            elif subnet.reserved(ip_of(target_ip)):
                problem = ("TargetReserved", f"{target_ip} is reserved in {subnet.network}")
        if problem is None and target_ip:
            other = claimed.setdefault(f"target/{target_ip}", spec.name)
            if other != spec.name:  # one address, one FIP: NAT could not tell them apart
                problem = ("TargetInUse", f"{target_ip} is the target of FIP {other}")
        own: str | None = None
        external: ExternalAddress | None = None
        eip_name = spec.eip or fip_eip_name(key, spec.name)
        if spec.eip is not None:
            if spec.eip == GATEWAY_EIP:
                problem = problem or ("EipReserved", f"{GATEWAY_EIP} is shared by the project's "
                                      "SNAT; a FIP needs an EIP of its own")  # fmt: skip
            else:
                external, refused = _user_eip(out, spec.eip, egress)
                other = claimed.setdefault(spec.eip, spec.name)
                if refused is not None:
                    problem = problem or refused
                elif other != spec.name:
                    problem = problem or ("EipInUse", f"EIP {spec.eip} is taken by FIP {other}")
                else:
                    assert external is not None
                    exclusive = external.model_copy(
                        update={"ownership_type": "Exclusive", "owners": [f"FIp/{spec.name}"]}
                    )
                    out.eips[out.eips.index(external)] = exclusive
                    external = exclusive
        else:
            own = fip_holder(key, spec.name)
            external, refused = await self._own_eip(
                out, own, eip_name, spec.external_network_type, egress, what="FIP",
                ownership="Exclusive", owners=[f"FIp/{spec.name}"],
            )  # fmt: skip
            problem = problem or refused
        ready = problem is None and external is not None
        out.fips.append(
            FloatingIp(
                name=spec.name, eip=eip_name,
                external_ip=external.ip_address if external is not None else "",
                target_ip=target_ip, vm_name=vm, interface=iface, mac_address=mac,
                ready=ready, reason=problem[0] if problem else "",
            )
        )  # fmt: skip
        if problem is not None:
            out.state(rec, "Error", problem[0], f"FIP {spec.name}: {problem[1]}")
        else:
            assert external is not None
            out.state(rec, "Ready", "Resolved", f"{external.ip_address} -> {target_ip}")
        return own

    async def _service(
        self,
        out: _Members,
        key: str,
        subnet: Pool,
        rec: MemberRecord,
        spec: LbServiceSpec,
        gateway: ExternalAddress,
        ports: dict[tuple[str, int, str], str],
    ) -> str | None:
        """Resolve a LoadBalancer service: its endpoints, its EIP (shared default-gw, a shared
        user EIP, or its own ``slb-<name>-xxxxx``) and its ports, which must be free on that
        EIP (the first service by name keeps a port). A service with any problem is refused
        as a whole (no port of it is programmed) and becomes ready by itself when the cause
        goes. Returns the holder of its own EIP, if it has or wants one."""
        problem: tuple[str, str] | None = None
        endpoints = list(spec.endpoints)
        if spec.vm_selector is not None:
            nic = _vm_nic(out, spec.vm_selector, DEFAULT_INTERFACE)
            if nic is None:
                problem = ("TargetNotFound", f"VM {spec.vm_selector} has no address")
            else:
                endpoints = [nic.ip_address]
        for ep in endpoints:
            usable = ip_of(ep) in subnet.network and not subnet.reserved(ip_of(ep))
            if problem is None and not usable:
                problem = (
                    "EndpointOutOfSubnet",
                    f"endpoint {ep} is not usable in {subnet.network}",
                )
        own: str | None = None
        external: ExternalAddress | None = None
        owner = f"ServiceLb/{spec.name}"
        if spec.bind_on_default_gw_eip:
            external = gateway
            eip_name = GATEWAY_EIP
        elif spec.bind_on_eip is not None:
            eip_name = spec.bind_on_eip
            external, refused = _user_eip(out, eip_name, gateway.network)
            if refused is not None:
                problem = problem or refused
            elif external is not None and external.ownership_type == "Exclusive":
                holders = ", ".join(external.owners)
                problem = problem or ("EipInUse", f"EIP {eip_name} is taken by {holders}")
                external = None
        else:
            eip_name = service_eip_name(key, spec.name)
            own = service_holder(key, spec.name)
            external, refused = await self._own_eip(
                out, own, eip_name, spec.external_network_type, gateway.network,
                what="service", ownership="Shared", owners=[],
            )  # fmt: skip
            problem = problem or refused
        taken = [
            (p, ports[(eip_name, p.port, p.protocol)])
            for p in spec.ports
            if ports.get((eip_name, p.port, p.protocol), spec.name) != spec.name
        ]
        if taken and problem is None:
            p, other = taken[0]
            problem = (
                "PortInUse",
                f"port {p.port}/{p.protocol} of EIP {eip_name} is used by service {other}",
            )
        ready = problem is None and external is not None
        if ready:
            assert external is not None
            for p in spec.ports:
                ports[(eip_name, p.port, p.protocol)] = spec.name
            if eip_name == GATEWAY_EIP:
                out.gateway_owners.append(owner)
            else:
                update = {"ownership_type": "Shared", "owners": [*external.owners, owner]}
                out.eips[out.eips.index(external)] = external.model_copy(update=update)
        busy = {(p.port, p.protocol) for p, _ in taken}
        out.services.append(
            LoadBalancer(
                name=spec.name, eip=eip_name,
                ingress_ip=external.ip_address if ready and external is not None else "",
                endpoints=endpoints,
                ports=[
                    PortState(port=p.port, target_port=p.target_port, protocol=p.protocol,
                              ready=ready,
                              reason="PortInUse" if (p.port, p.protocol) in busy else "")
                    for p in spec.ports
                ],
                ready=ready, reason=problem[0] if problem else "",
            )
        )  # fmt: skip
        if problem is not None:
            out.state(rec, "Error", problem[0], f"service {spec.name}: {problem[1]}")
        else:
            assert external is not None
            listed = ", ".join(f"{p.port}/{p.protocol}" for p in spec.ports)
            out.state(rec, "Ready", "Resolved", f"{external.ip_address} {listed}")
        return own

    async def _own_eip(
        self,
        out: _Members,
        holder: str,
        name: str,
        network: str | None,
        egress: str,
        *,
        what: str,
        ownership: str,
        owners: list[str],
    ) -> tuple[ExternalAddress | None, tuple[str, str] | None]:
        """The EIP a FIP or service allocates for itself on ``network`` (the platform default
        when None), listed in ``out.eips``; or why not (the project is then retried while the
        pool is exhausted). Its network is immutable and must be the router's (``egress``)."""
        network = network or self.policy.default_network
        pool = self.policy.pools.get(network)
        held = self._held_pool(holder)
        if pool is None:
            return None, ("UnknownNetwork", f"no external pool is configured for {network!r}")
        if held is not None and held != network:
            return None, (
                "ExternalNetworkTypeImmutable",
                f"the {what}'s EIP already has an address on {held}",
            )
        if network != egress:
            return None, _unrouted(name, network, egress)
        try:
            bound = await self.book.ensure(pool, holder)
        except AllocationError as exc:
            out.retry = out.retry or exc.reason == "NoAvailableIPs"
            return None, (exc.reason, exc.message)
        external = _external(name, bound, pool, ownership=ownership, owners=owners)
        out.eips.append(external)
        return external, None

    async def _sweep(
        self, out: _Members, ctx: Context, subnet: Pool, nics: set[str], eips: set[str]
    ) -> float:
        """Free addresses whose holder is gone: detached NICs, deleted EIPs, orphans.

        Returns when the grace time of the first address it spared ends (inf: none)."""
        due = math.inf
        tombstoned = {member_holder(ctx.key, m) for m, r in ctx.members.items() if r.deleted}
        now = time.time()
        spaces: list[tuple[Pool, set[str]]] = [(subnet, nics)]
        prefix = tuple(f"project/{ctx.key}/{k}/" for k in ("eip", "fip", "svc"))  # members' holders
        spaces += [(pool, eips) for pool in self.policy.pools.values()]
        for space, wanted in spaces:
            # a shared external pool: only this project's holders (the pool holds every one's)
            ours = (
                None if space.kind == "subnet" else self.book.project_holders(space.prefix, ctx.key)
            )
            for holder, ip in self.book.held(space.prefix, ours).items():
                if space.kind == "pool" and not holder.startswith(prefix):
                    continue
                if holder in wanted:
                    continue
                slot = self.book.slot(space.prefix, ip)
                if holder not in tombstoned and slot is not None and now - slot.at < SWEEP_GRACE:
                    due = min(due, slot.at + SWEEP_GRACE)
                    continue  # maybe a member another replica just recorded
                await self.book.release(space, holder)
                if holder not in tombstoned:
                    out.swept.append(f"{holder}={ip}")
            for holder, ip, slot in self.book.strays(space.prefix, ours):
                mine = space.kind == "subnet" or holder.startswith(prefix)
                if mine and now - slot.at >= SWEEP_GRACE:  # else maybe a claim in flight
                    await self.book.release_stray(space, holder, ip)
                    out.swept.append(f"{holder}={ip}")
                elif mine:
                    due = min(due, slot.at + SWEEP_GRACE)
            bound, held = self.book.bindings(space.prefix, ours), self.book.held(space.prefix, ours)
            for holder in set(bound) - set(held):
                if holder not in wanted and (space.kind == "subnet" or holder.startswith(prefix)):
                    await self.book.release(space, holder)  # a binding left by a crash
        return due

    def _orphan_members(self, ctx: Context, result: Result) -> Result:
        """Members of a project that does not exist yet wait for it; those of a deleted
        project go with it (its namespace and workloads are gone: Kube-DC's cascade), and
        are forgotten together with the project's tombstone."""
        states = _Members()
        for rec in ctx.members.values():
            if rec.deleted:
                states.state(rec, "Deleted", "Released")
            elif ctx.record is not None:
                states.state(rec, "Deleted", "ProjectDeleted", "released with its project")
            else:
                states.state(
                    rec, "Error", "ProjectNotFound",
                    f"project {ctx.organization}/{ctx.project} does not exist",
                )  # fmt: skip
        if not states.states:
            return result
        waiting = any(s.state == "Error" for s in states.states)
        if result.state == "Deleted" and waiting:
            result = Result("Pending", "WaitingForProject", "members wait for the project")
        return Result(
            result.state, result.reason, result.message, result.requeue_after,
            result.addresses, result.objects, states.states,
        )  # fmt: skip

    # -- teardown ------------------------------------------------------------------------

    async def _teardown(self, ctx: Context) -> Result:
        ns_key = namespace_key(names.namespace(ctx.organization, ctx.project))
        subnet_prefix = f"subnet.{ctx.key}"
        prefix = f"project/{ctx.key}/"
        held: list[tuple[Pool, str]] = []
        for pool in self.policy.pools.values():
            ours = self.book.project_holders(pool.prefix, ctx.key)  # not the whole pool's
            mine = set(self.book.held(pool.prefix, ours)) | set(
                self.book.bindings(pool.prefix, ours)
            )
            held += [(pool, h) for h in sorted(mine) if h.startswith(prefix)]
        has_subnet = self.book.has_space(subnet_prefix)
        if not held and not has_subnet and self.book.claim_of(ns_key) != ctx.key:
            return Result("Deleted", "Released")
        if ctx.record is not None:
            vpc = await ctx.peers.status("vpc", ctx.organization, ctx.project)
            if vpc is None or vpc.state != "Deleted" or vpc.generation < ctx.record.generation:
                return Result(
                    "Pending",
                    "WaitingForVpcTeardown",
                    "addresses are returned once the VPC no longer uses them",
                )
        freed = []
        for pool, holder in held:
            ip = await self.book.release(pool, holder)
            if ip is not None:
                freed.append(f"{holder.removeprefix(prefix)}={ip}")
        dropped = await self.book.drop_space(subnet_prefix) if has_subnet else 0
        await self.book.unclaim(ns_key, ctx.key)
        message = f"released {', '.join(sorted(freed))}" if freed else ""
        if dropped:
            message += f"{'; ' if message else ''}dropped {dropped} subnet keys"
        return Result("Deleted", "Released", message)


def wanted_holders(ctx: Context) -> auditing.Wanted:
    """Who may hold the project's addresses: what :meth:`IpamReconciler._sweep` keeps (live
    NICs; the gateway, user EIPs and the own EIPs of FIPs and services), and whose release
    is due (removed members)."""
    live = [r for r in ctx.members.values() if not r.deleted]
    external = {gateway_holder(ctx.key)}
    external |= {eip_holder(ctx.key, r.eip.name) for r in live if r.eip is not None}
    external |= {fip_holder(ctx.key, r.fip.name) for r in live if r.fip and r.fip.eip is None}
    external |= {
        service_holder(ctx.key, r.service.name)
        for r in live
        if r.service and not r.service.bind_on_default_gw_eip and r.service.bind_on_eip is None
    }
    return auditing.Wanted(
        nics=frozenset(r.workload.holder for r in live if r.workload is not None),
        external=frozenset(external),
        removed=frozenset(member_holder(ctx.key, m) for m, r in ctx.members.items() if r.deleted),
    )


def member_holder(project_key: str, member: str) -> str:
    """The holder name of a member key: ``vm/a/default``, ``project/o.p/eip/x`` or the holder
    of FIP ``x``'s own EIP, ``project/o.p/fip/x``."""
    kind, parts = parse_member(member)
    if kind == "workload":
        return "/".join(parts)
    holder = {"fip": fip_holder, "service": service_holder}.get(kind, eip_holder)
    return holder(project_key, parts[0])


def _vm_nic(out: _Members, vm: str, interface: str) -> WorkloadAddress | None:
    """The address IPAM gave VM ``vm``'s NIC ``interface`` in this run, if any."""
    return next(
        (w for w in out.workloads if w.kind == "vm" and w.name == vm and w.interface == interface),
        None,
    )


def _user_eip(
    out: _Members, name: str, egress: str
) -> tuple[ExternalAddress | None, tuple[str, str] | None]:
    """A user EIP of the project a FIP or service binds to, if it is ready and on the router's
    network (``egress``); else why not."""
    external = next((e for e in out.eips if e.name == name), None)
    if external is None or not external.ready:
        return None, ("EipNotFound", f"no ready EIP {name} in the project")
    if external.network != egress:
        return None, _unrouted(name, external.network, egress)
    return external, None


def _unrouted(eip: str, network: str, egress: str) -> tuple[str, str]:
    """A FIP or service EIP on a network the project's router has no port on: its replies
    could not leave that way. Refused, instead of Kube-DC's source-based reroute policy."""
    return (
        "NetworkNotRouted",
        f"EIP {eip} would be on {network}, but the project's router is on {egress} only "
        f"(its egressNetworkType); use an EIP of {egress}",
    )


def _external(
    name: str, bound: Binding, pool: Pool, *, ownership: str, owners: list[str]
) -> ExternalAddress:
    return ExternalAddress.model_validate(
        {"name": name, "ip_address": bound.ip, "network": pool.name,
         "prefix_length": pool.network.prefixlen, "gateway": str(pool.gateway), "ready": True,
         "ownership_type": ownership, "owners": owners}
    )  # fmt: skip


def _workload(rec: MemberRecord, nic: WorkloadSpec, bound: Binding) -> WorkloadAddress:
    return WorkloadAddress(
        member=rec.member, kind=nic.kind, name=nic.name, interface=nic.interface,
        ip_address=bound.ip, mac_address=bound.mac, static=bound.static,
    )  # fmt: skip
