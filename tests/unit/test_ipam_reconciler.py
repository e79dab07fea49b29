"""IPAM's reconcile of a project over an address book on the in-memory KV fake: the
admission policy, the gateway EIP, NICs and user EIPs, the sweep, and teardown."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Network

import pytest

from tests.unit.fakes import FakeKV
from tests.unit.ipam_fixtures import (
    Clock,
    check_store,
    crashed_claim,
    ip,
    stored,
)
from vpcbus_ipam.addresses import AddressBook, Holding
from vpcbus_ipam.pools import parse_pools, project_subnet
from vpcbus_ipam.reconciler import (
    RETRY_EXHAUSTED,
    SWEEP_GRACE,
    IpamReconciler,
    Policy,
    gateway_holder,
    workload_mac,
)
from vpcbus_proto.members import EipSpec, WorkloadSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import ServiceStatus, State
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.members import MemberRecord
from vpcbus_runtime.reconciling import Context, Result
from vpcbus_runtime.records import ProjectRecord

SUBNET = project_subnet("acme.shop", IPv4Network("10.0.0.0/24"), ip("10.0.0.1"))
POOLS = parse_pools(
    {
        "cloud": {"cidr": "100.65.0.0/29", "gateway": "100.65.0.1"},  # .2 .. .6
        "public": {"cidr": "203.0.113.0/29", "gateway": "203.0.113.1"},
    }
)


class Peers:
    def __init__(self) -> None:
        self.vpc: ServiceStatus | None = None

    async def status(self, service: ServiceName, org: str, project: str) -> ServiceStatus | None:
        return self.vpc if service == "vpc" else None


def record(
    org: str = "acme", name: str = "shop", generation: int = 1, **spec: str
) -> ProjectRecord:
    body = {"cidrBlock": "10.0.0.0/24", "egressNetworkType": "cloud", **spec}
    return ProjectRecord(
        organization=org,
        name=name,
        generation=generation,
        event_id=f"e{generation}",
        spec=ProjectSpec.model_validate({"organization": org, "name": name, **body}),
    )


def ctx(
    rec: ProjectRecord | None,
    members: Sequence[MemberRecord] = (),
    peers: Peers | None = None,
    org: str = "acme",
    name: str = "shop",
) -> Context:
    return Context(
        f"{org}.{name}", org, name, rec, peers or Peers(), {m.member: m for m in members}
    )


def member(
    spec: WorkloadSpec | EipSpec, generation: int = 1, *, deleted: bool = False
) -> MemberRecord:
    nic = isinstance(spec, WorkloadSpec)
    return MemberRecord(
        organization="acme", project="shop", member=spec.member, generation=generation,
        event_id=f"{spec.member}-{generation}",
        workload=spec if nic and not deleted else None,
        eip=spec if not nic and not deleted else None,
        deleted_at=datetime.now(UTC) if deleted else None,
    )  # fmt: skip


def nic(name: str, kind: str = "vm", generation: int = 1, **fields: str) -> MemberRecord:
    spec = WorkloadSpec.model_validate(
        {"organization": "acme", "project": "shop", "kind": kind, "name": name, **fields}
    )
    return member(spec, generation)


def removed(rec: MemberRecord) -> MemberRecord:
    """The tombstone a ``workload.detached`` / ``eip.deleted`` of ``rec`` leaves."""
    spec = rec.workload or rec.eip
    assert spec is not None
    return member(spec, rec.generation + 1, deleted=True)


def eip(name: str, network: str | None = None, generation: int = 1) -> MemberRecord:
    spec = EipSpec(organization="acme", project="shop", name=name, external_network_type=network)
    return member(spec, generation)


def states(result: Result) -> dict[str, tuple[str, str]]:
    return {m.member: (m.state, m.reason) for m in result.members}


def message(result: Result, member_key: str) -> str:
    return next(m.message for m in result.members if m.member == member_key)


def nics(result: Result) -> dict[str, str]:
    assert result.addresses is not None
    return {w.member: w.ip_address for w in result.addresses.workloads}


@pytest.fixture
def ipam(book: AddressBook) -> IpamReconciler:
    return IpamReconciler(book, Policy(pools=POOLS))


# -- admission ------------------------------------------------------------------------------


async def test_admission_reports_the_gateway_eip(ipam: IpamReconciler) -> None:
    result = await ipam.reconcile(ctx(record(gwLanIp="10.0.0.254")))
    assert (result.state, result.reason) == ("Ready", "Allocated")
    facts = result.addresses
    assert facts is not None and (facts.cidr_block, facts.gateway_ip) == (
        "10.0.0.0/24",
        "10.0.0.254",
    )
    gw = facts.eip("default-gw")
    assert gw is not None and gw.ready and gw.owners == ["Snat/acme-shop"]
    assert (gw.ip_address, gw.network, gw.prefix_length, gw.gateway) == (
        "100.65.0.2", "cloud", 29, "100.65.0.1",
    )  # fmt: skip
    assert list(result.objects) == ["EIP/default-gw=100.65.0.2"]
    assert facts.subnet is not None and facts.subnet.capacity == 253  # .254 is the gateway
    assert (await ipam.reconcile(ctx(record(gwLanIp="10.0.0.254")))).addresses == facts
    assert await ipam.owned_keys() == ["acme.shop"]


async def test_public_projects_are_disabled_unless_allowed(ipam: IpamReconciler) -> None:
    with pytest.raises(PermanentError) as info:
        await ipam.reconcile(ctx(record(egressNetworkType="public")))
    assert info.value.reason == "PublicProjectsDisabled"
    allowed = IpamReconciler(ipam.book, Policy(POOLS, allow_public_projects=True))
    result = await allowed.reconcile(ctx(record(egressNetworkType="public")))
    gw = result.addresses.eip("default-gw") if result.addresses else None
    assert gw is not None and gw.network == "public"


async def test_unknown_network_and_overlap_are_permanent(ipam: IpamReconciler) -> None:
    only_cloud = IpamReconciler(
        ipam.book,
        Policy(parse_pools({"cloud": {"cidr": "100.65.0.0/16"}}), allow_public_projects=True),
    )
    with pytest.raises(PermanentError) as info:
        await only_cloud.reconcile(ctx(record(egressNetworkType="public")))
    assert info.value.reason == "UnknownNetwork"
    with pytest.raises(PermanentError) as info:
        await only_cloud.reconcile(ctx(record(cidrBlock="100.64.0.0/10")))
    assert info.value.reason == "CidrOverlapsExternalNetwork"
    assert "100.65.0.0/16" in info.value.message


async def test_egress_network_type_is_immutable(ipam: IpamReconciler) -> None:
    both = IpamReconciler(ipam.book, Policy(POOLS, allow_public_projects=True))
    await both.reconcile(ctx(record()))
    with pytest.raises(PermanentError) as info:
        await both.reconcile(ctx(record(generation=2, egressNetworkType="public")))
    assert info.value.reason == "EgressNetworkTypeImmutable"
    assert "cloud" in info.value.message


async def test_two_projects_with_one_backing_namespace_conflict(ipam: IpamReconciler) -> None:
    assert (await ipam.reconcile(ctx(record("a-b", "c"), org="a-b", name="c"))).state == "Ready"
    with pytest.raises(PermanentError) as info:
        await ipam.reconcile(ctx(record("a", "b-c"), org="a", name="b-c"))
    assert info.value.reason == "NamespaceConflict"
    assert "a-b/c" in info.value.message


async def test_a_namespace_that_would_share_names_with_external_ports_is_refused(
    ipam: IpamReconciler, kv: FakeKV
) -> None:
    with pytest.raises(PermanentError) as info:
        await ipam.reconcile(ctx(record("ext", "cloud-x"), org="ext", name="cloud-x"))
    assert info.value.reason == "NamespaceReserved"
    assert "ext-cloud-x" in info.value.message
    assert not kv.data  # nothing claimed, nothing allocated
    ok = await ipam.reconcile(
        ctx(record("x", "default-ext-cloud-x"), org="x", name="default-ext-cloud-x")
    )
    assert ok.state == "Ready"


async def test_an_exhausted_pool_is_an_error_result_that_requeues(ipam: IpamReconciler) -> None:
    results = [await ipam.reconcile(ctx(record(name=f"p{i}"), name=f"p{i}")) for i in range(6)]
    assert [r.state for r in results] == ["Ready"] * 5 + ["Error"]
    assert (results[-1].reason, results[-1].requeue_after) == ("NoAvailableIPs", RETRY_EXHAUSTED)
    # Same CIDR in every project, a distinct EIP each.
    assert len({r.objects[0] for r in results[:5]}) == 5


# -- NICs -------------------------------------------------------------------------------------


async def test_nics_get_the_lowest_free_addresses_and_stable_macs(ipam: IpamReconciler) -> None:
    members = [nic("b", "pod"), nic("a"), nic("c", interface="net1", mac="0a:00:00:00:00:01")]
    result = await ipam.reconcile(ctx(record(), members))
    assert set(states(result).values()) == {("Ready", "Allocated")}
    assert nics(result) == {
        "workload.pod.b.default": "10.0.0.2",  # holders in order: pod/b, vm/a, vm/c
        "workload.vm.a.default": "10.0.0.3",
        "workload.vm.c.net1": "10.0.0.4",
    }
    assert result.addresses is not None
    macs = {w.name: w.mac_address for w in result.addresses.workloads}
    assert macs == {
        "a": workload_mac("acme-shop", "vm/a/default"),
        "b": workload_mac("acme-shop", "pod/b/default"),
        "c": "0a:00:00:00:00:01",
    }
    assert [m.member for m in result.members] == sorted(m.member for m in members)
    again = await ipam.reconcile(ctx(record(), members[::-1]))  # what status dedupe compares
    assert (again.members, again.addresses) == (result.members, result.addresses)


async def test_a_vm_and_a_pod_with_one_name_and_interface_conflict(ipam: IpamReconciler) -> None:
    result = await ipam.reconcile(ctx(record(), [nic("web", "vm"), nic("web", "pod")]))
    assert states(result) == {
        "workload.pod.web.default": ("Ready", "Allocated"),
        "workload.vm.web.default": ("Error", "NameConflict"),
    }
    assert "pod/web/default" in message(result, "workload.vm.web.default")
    assert list(nics(result)) == ["workload.pod.web.default"]


async def test_a_mac_already_in_use_is_refused(ipam: IpamReconciler) -> None:
    mac = "0a:00:00:00:00:07"
    first = await ipam.reconcile(ctx(record(), [nic("a", mac=mac)]))
    assert states(first) == {"workload.vm.a.default": ("Ready", "Allocated")}
    both = await ipam.reconcile(ctx(record(), [nic("a", mac=mac), nic("b", mac=mac)]))
    assert states(both)["workload.vm.b.default"] == ("Error", "MACConflict")
    assert "vm/a/default" in message(both, "workload.vm.b.default")
    await ipam.reconcile(ctx(record(), [nic("x")]))
    taken = workload_mac("acme-shop", "vm/x/default")  # a MAC given by default counts too
    other = await ipam.reconcile(ctx(record(), [nic("x"), nic("y", mac=taken)]))
    assert states(other)["workload.vm.y.default"] == ("Error", "MACConflict")


async def test_a_requested_mac_equal_to_a_new_nics_default_mac_is_refused(
    ipam: IpamReconciler,
) -> None:
    taken = workload_mac("acme-shop", "vm/x/default")
    result = await ipam.reconcile(ctx(record(), [nic("x"), nic("y", mac=taken)]))
    again = await ipam.reconcile(ctx(record(), [nic("x"), nic("y", mac=taken)]))
    for run in (result, again):
        assert states(run)["workload.vm.y.default"] == ("Error", "MACConflict")
        assert "used by vm/x/default" in message(run, "workload.vm.y.default")
    assert again.addresses is not None
    assert [w.mac_address for w in again.addresses.workloads] == [taken]


async def test_a_nic_whose_default_mac_was_requested_earlier_gets_another_one(
    ipam: IpamReconciler,
) -> None:
    taken = workload_mac("acme-shop", "vm/x/default")
    await ipam.reconcile(ctx(record(), [nic("y", mac=taken)]))  # y holds x's default first

    result = await ipam.reconcile(ctx(record(), [nic("y", mac=taken), nic("x")]))

    assert states(result)["workload.vm.x.default"] == ("Ready", "Allocated")
    assert result.addresses is not None
    macs = {w.name: w.mac_address for w in result.addresses.workloads}
    assert macs["y"] == taken and macs["x"] != taken
    assert macs["x"].startswith("0e:")


async def test_a_refused_static_change_keeps_the_previous_address(
    ipam: IpamReconciler, kv: FakeKV
) -> None:
    await ipam.reconcile(ctx(record(), [nic("a"), nic("b")]))
    moved = [nic("a"), nic("b", generation=2, ip="10.0.0.2")]
    result = await ipam.reconcile(ctx(record(), moved))
    assert states(result)["workload.vm.b.default"] == ("Error", "IPConflict")
    assert "10.0.0.2 is already held by vm/a/default" in message(result, "workload.vm.b.default")
    assert next(m for m in result.members if m.member == "workload.vm.b.default").generation == 2
    assert nics(result) == {
        "workload.vm.a.default": "10.0.0.2",
        "workload.vm.b.default": "10.0.0.3",
    }
    check_store(kv, SUBNET)
    fixed = await ipam.reconcile(ctx(record(), [nic("a"), nic("b", generation=3, ip="10.0.0.9")]))
    assert nics(fixed)["workload.vm.b.default"] == "10.0.0.9"
    assert stored(kv, SUBNET.prefix)[0][ip("10.0.0.3")].held is False  # quarantined
    check_store(kv, SUBNET)


# -- user EIPs --------------------------------------------------------------------------------


async def test_eips_come_from_their_pool_and_some_names_and_networks_are_refused(
    ipam: IpamReconciler,
) -> None:
    members = [eip("web"), eip("default-gw"), eip("far", "nowhere")]
    result = await ipam.reconcile(ctx(record(), members))
    assert states(result) == {
        "eip.web": ("Ready", "Allocated"),
        "eip.default-gw": ("Error", "NameReserved"),
        "eip.far": ("Error", "UnknownNetwork"),
    }
    assert result.state == "Ready"  # the project itself is fine
    assert result.addresses is not None
    assert [(e.name, e.ip_address, e.network) for e in result.addresses.eips] == [
        ("default-gw", "100.65.0.2", "cloud"),
        ("web", "100.65.0.3", "cloud"),  # the platform's default network
    ]


async def test_an_eip_waits_for_an_address_and_gets_one_when_it_frees_up(
    ipam: IpamReconciler, clock: Clock
) -> None:
    eips = [eip(f"e{i}") for i in range(5)]  # the gateway EIP + 4 fill the pool
    full = await ipam.reconcile(ctx(record(), eips))
    assert states(full)["eip.e4"] == ("Error", "NoAvailableIPs")
    assert (full.state, full.requeue_after) == ("Ready", RETRY_EXHAUSTED)
    assert full.addresses is not None
    waiting = full.addresses.eip("e4")
    assert waiting is not None and (waiting.ready, waiting.reason) == (False, "NoAvailableIPs")
    members = [removed(eips[0]), *eips[1:]]
    await ipam.reconcile(ctx(record(), members))  # e0's address goes into quarantine
    clock.advance(59)
    assert states(await ipam.reconcile(ctx(record(), members)))["eip.e4"][1] == "NoAvailableIPs"
    clock.advance(1)
    ready = await ipam.reconcile(ctx(record(), members))
    assert states(ready)["eip.e4"] == ("Ready", "Allocated")
    assert states(ready)["eip.e0"] == ("Deleted", "Released")
    assert ready.requeue_after is None
    assert ready.addresses is not None and ready.addresses.eip("e4") is not None


async def test_a_static_request_for_a_quarantined_address_is_granted_when_it_ends(
    ipam: IpamReconciler, clock: Clock
) -> None:
    await ipam.reconcile(ctx(record(), [nic("a")]))  # 10.0.0.2
    await ipam.reconcile(ctx(record(), [removed(nic("a"))]))  # released: quarantined
    members = [removed(nic("a")), nic("b", ip="10.0.0.2")]
    early = await ipam.reconcile(ctx(record(), members))
    assert states(early)["workload.vm.b.default"] == ("Error", "IPQuarantined")
    assert early.requeue_after == RETRY_EXHAUSTED  # tried again without a new event
    clock.advance(60)
    granted = await ipam.reconcile(ctx(record(), members))
    assert states(granted)["workload.vm.b.default"] == ("Ready", "Allocated")
    assert nics(granted) == {"workload.vm.b.default": "10.0.0.2"}
    assert granted.requeue_after is None


# -- the sweep --------------------------------------------------------------------------------


async def test_a_detached_nic_is_released_at_once(
    ipam: IpamReconciler, kv: FakeKV, clock: Clock
) -> None:
    a, b = nic("a"), nic("b")
    await ipam.reconcile(ctx(record(), [a, b]))
    result = await ipam.reconcile(ctx(record(), [removed(a), b]))
    assert states(result)["workload.vm.a.default"] == ("Deleted", "Released")
    assert nics(result) == {"workload.vm.b.default": "10.0.0.3"}
    assert stored(kv, SUBNET.prefix)[0][ip("10.0.0.2")] == Holding(
        holder="vm/a/default", held=False, at=clock.now
    )
    assert "swept" not in result.message  # a removal is not a leak


async def test_an_address_nobody_names_is_swept_after_the_grace_time(
    ipam: IpamReconciler, kv: FakeKV, clock: Clock
) -> None:
    await ipam.reconcile(ctx(record(), [nic("a")]))  # then a's record vanishes
    # ... and a replica died between claiming an address and binding it:
    await crashed_claim(kv, f"{SUBNET.prefix}.10.0.0.7", "pod/lost/default", clock.now)
    await kv.settle()
    clock.advance(SWEEP_GRACE - 1)
    kept = await ipam.reconcile(ctx(record()))  # maybe recorded by another replica just now
    assert ipam.book.held(SUBNET.prefix) == {
        "vm/a/default": ip("10.0.0.2"), "pod/lost/default": ip("10.0.0.7"),
    }  # fmt: skip
    assert "swept" not in kept.message
    clock.advance(1)
    swept = await ipam.reconcile(ctx(record()))
    assert "swept 2: pod/lost/default=10.0.0.7, vm/a/default=10.0.0.2" in swept.message
    assert ipam.book.held(SUBNET.prefix) == {}
    check_store(kv, SUBNET)


# -- teardown ---------------------------------------------------------------------------------


def vpc_status(state: State, generation: int) -> ServiceStatus:
    return ServiceStatus.model_validate(
        {"service": "vpc", "organization": "acme", "project": "shop", "namespace": "acme-shop",
         "generation": generation, "state": state, "reason": "x",
         "observedAt": "2030-01-01T00:00Z"}
    )  # fmt: skip


async def test_addresses_return_only_after_the_vpc_is_torn_down(
    ipam: IpamReconciler, kv: FakeKV
) -> None:
    peers = Peers()
    a = nic("a")
    await ipam.reconcile(ctx(record(), [a, eip("web")], peers))
    tombstone = ProjectRecord(
        organization="acme", name="shop", generation=2, event_id="e2", spec=None
    )
    for vpc in (None, vpc_status("Ready", 1), vpc_status("Deleted", 1)):
        peers.vpc = vpc
        result = await ipam.reconcile(ctx(tombstone, [a], peers))
        assert (result.state, result.reason) == ("Pending", "WaitingForVpcTeardown")
        assert ipam.book.binding("pool.cloud", gateway_holder("acme.shop")) is not None
    peers.vpc = vpc_status("Deleted", 2)
    result = await ipam.reconcile(ctx(tombstone, [], peers))
    assert (result.state, result.reason) == ("Deleted", "Released")
    assert "default-gw=100.65.0.2" in result.message and "eip/web=100.65.0.3" in result.message
    # Released into quarantine; nothing bound, no subnet, no namespace claim is left.
    assert sorted(kv.data) == ["pool.cloud.100.65.0.2", "pool.cloud.100.65.0.3"]
    assert not any(Holding.model_validate_json(v).held for v, _ in kv.data.values())
    assert await ipam.owned_keys() == []
    assert (await ipam.reconcile(ctx(tombstone, [], peers))).state == "Deleted"
