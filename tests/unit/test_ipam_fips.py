"""IPAM resolves floating IPs: the target (a VM interface or an address of the subnet) and the
external address (a user EIP taken exclusively, or the FIP's own ``fip-<name>-xxxxx`` EIP,
released with it). Everything not resolvable leaves the FIP not ready with a reason, and it
becomes ready by itself when the cause goes away."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.unit.fakes import FakeKV
from tests.unit.ipam_fixtures import Clock, check_store
from tests.unit.test_ipam_reconciler import (
    POOLS,
    SUBNET,
    ctx,
    eip,
    ipam,
    nic,
    record,
    removed,
    states,
)
from vpcbus_ipam.reconciler import IpamReconciler, fip_holder
from vpcbus_proto.members import FipSpec
from vpcbus_proto.names import fip_eip_name
from vpcbus_proto.status import FloatingIp
from vpcbus_runtime.members import MemberRecord
from vpcbus_runtime.reconciling import Result

__all__ = ["ipam"]  # the fixture


def fip(name: str, generation: int = 1, *, deleted: bool = False, **fields: Any) -> MemberRecord:
    """A FIP member record; ``deleted``: the tombstone ``fip.deleted`` leaves."""
    spec = None
    if not deleted:
        body = {"organization": "acme", "project": "shop", "name": name, **fields}
        spec = FipSpec.model_validate(body)
    return MemberRecord(
        organization="acme", project="shop", member=f"fip.{name}", generation=generation,
        event_id=f"fip.{name}-{generation}", fip=spec,
        deleted_at=datetime.now(UTC) if deleted else None,
    )  # fmt: skip


def fips(result: Result) -> dict[str, FloatingIp]:
    assert result.addresses is not None
    return {f.name: f for f in result.addresses.fips}


def eips(result: Result) -> dict[str, tuple[str, str, list[str]]]:
    assert result.addresses is not None
    return {e.name: (e.ip_address, e.ownership_type, e.owners) for e in result.addresses.eips}


async def test_a_fip_on_a_vm_gets_its_own_eip_named_like_kube_dc(ipam: IpamReconciler) -> None:
    result = await ipam.reconcile(
        ctx(record(), [nic("web"), fip("ssh", vmTarget={"vmName": "web"})])
    )

    got = fips(result)["ssh"]
    own = fip_eip_name("acme.shop", "ssh")
    assert own.startswith("fip-ssh-") and len(own) == len("fip-ssh-") + 5
    assert (got.ready, got.eip, got.target_ip, got.vm_name, got.interface) == (
        True, own, "10.0.0.2", "web", "default",
    )  # fmt: skip
    assert got.mac_address == result.addresses.workloads[0].mac_address  # type: ignore[union-attr]
    assert eips(result)[own] == (got.external_ip, "Exclusive", ["FIp/ssh"])
    assert got.external_ip.startswith("100.65.0.")  # the platform default network
    assert states(result)["fip.ssh"] == ("Ready", "Resolved")
    assert fip_eip_name("acme.shop", "ssh") == own  # stable: no random suffix


async def test_a_fip_waits_for_its_vm_and_resolves_when_the_nic_appears(
    ipam: IpamReconciler,
) -> None:
    ssh = fip("ssh", vmTarget={"vmName": "web", "interfaceName": "net1"})
    early = await ipam.reconcile(ctx(record(), [ssh]))
    assert (fips(early)["ssh"].ready, fips(early)["ssh"].reason) == (False, "TargetNotFound")
    assert states(early)["fip.ssh"] == ("Error", "TargetNotFound")
    assert fips(early)["ssh"].external_ip  # its EIP is held meanwhile: the address is stable

    later = await ipam.reconcile(ctx(record(), [nic("web", interface="net1"), ssh]))
    assert fips(later)["ssh"].ready and fips(later)["ssh"].target_ip == "10.0.0.2"
    assert fips(later)["ssh"].external_ip == fips(early)["ssh"].external_ip


async def test_a_fip_on_an_address_must_be_a_usable_address_of_the_subnet(
    ipam: IpamReconciler,
) -> None:
    members = [
        fip("a", ipAddress="10.0.0.9"),  # nobody holds it: fine (any internal IP, as Kube-DC)
        fip("b", ipAddress="10.9.0.9"),
        fip("c", ipAddress="10.0.0.1"),  # the gateway
    ]
    result = await ipam.reconcile(ctx(record(), members))
    assert fips(result)["a"].ready and fips(result)["a"].target_ip == "10.0.0.9"
    assert states(result)["fip.b"] == ("Error", "TargetOutOfSubnet")
    assert states(result)["fip.c"] == ("Error", "TargetReserved")


async def test_a_user_eip_is_taken_exclusively_by_the_first_fip(ipam: IpamReconciler) -> None:
    members = [
        eip("pub"),
        fip("a", ipAddress="10.0.0.9", eip="pub"),
        fip("b", ipAddress="10.0.0.10", eip="pub"),
        fip("c", ipAddress="10.0.0.11", eip="nope"),
        fip("d", ipAddress="10.0.0.12", eip="default-gw"),
    ]
    result = await ipam.reconcile(ctx(record(), members))

    pub = eips(result)["pub"]
    assert pub[1:] == ("Exclusive", ["FIp/a"])
    assert fips(result)["a"].external_ip == pub[0] and fips(result)["a"].ready
    assert states(result)["fip.b"] == ("Error", "EipInUse")
    assert "taken by FIP a" in next(m.message for m in result.members if m.member == "fip.b")
    assert states(result)["fip.c"] == ("Error", "EipNotFound")
    assert states(result)["fip.d"] == ("Error", "EipReserved")
    assert not any(n.startswith("fip-") for n in eips(result))  # none allocated its own


async def test_deleting_a_fip_releases_its_own_eip_and_frees_a_user_eip(
    ipam: IpamReconciler, kv: FakeKV, clock: Clock
) -> None:
    members = [
        eip("pub"),
        fip("a", ipAddress="10.0.0.9", eip="pub"),
        fip("b", ipAddress="10.0.0.10"),
    ]
    await ipam.reconcile(ctx(record(), members))
    own = fip_holder("acme.shop", "b")
    assert own in check_store(kv, POOLS["cloud"])

    gone = [eip("pub"), fip("a", 2, deleted=True), fip("b", 2, deleted=True)]
    result = await ipam.reconcile(ctx(record(), gone))

    assert own not in check_store(kv, POOLS["cloud"])  # released (quarantined, then reused)
    assert eips(result)["pub"][1:] == ("Released", [])
    assert fips(result) == {}
    assert states(result)["fip.a"] == ("Deleted", "Released")
    check_store(kv, SUBNET)


async def test_a_fip_on_an_unknown_network_or_an_exhausted_pool_is_not_ready(
    ipam: IpamReconciler,
) -> None:
    # The cloud pool has 5 addresses; the gateway EIP takes one, four EIPs the rest.
    full = [eip(f"e{i}") for i in range(4)]
    mars = fip("y", ipAddress="10.0.0.10", externalNetworkType="mars")
    members = [*full, fip("x", ipAddress="10.0.0.9"), mars]
    result = await ipam.reconcile(ctx(record(), members))
    assert states(result)["fip.x"] == ("Error", "NoAvailableIPs")
    assert result.requeue_after is not None  # ready by itself once an address frees up
    assert states(result)["fip.y"] == ("Error", "UnknownNetwork")

    freed = [removed(full[0]), *full[1:], fip("x", ipAddress="10.0.0.9")]
    ipam.book.quarantine = 0.0
    await ipam.reconcile(ctx(record(), freed))  # e0's address is released at the end of it
    assert fips(await ipam.reconcile(ctx(record(), freed)))["x"].ready  # the requeued run


async def test_the_network_of_a_fips_own_eip_is_immutable(ipam: IpamReconciler) -> None:
    await ipam.reconcile(ctx(record(), [fip("x", ipAddress="10.0.0.9")]))
    moved = fip("x", 2, ipAddress="10.0.0.9", externalNetworkType="public")
    result = await ipam.reconcile(ctx(record(), [moved]))
    assert states(result)["fip.x"] == ("Error", "ExternalNetworkTypeImmutable")


async def test_one_address_is_the_target_of_one_fip(ipam: IpamReconciler) -> None:
    members = [nic("web"), fip("a", vmTarget={"vmName": "web"}), fip("b", ipAddress="10.0.0.2")]
    result = await ipam.reconcile(ctx(record(), members))
    assert fips(result)["a"].ready
    assert states(result)["fip.b"] == ("Error", "TargetInUse")
    assert "10.0.0.2 is the target of FIP a" in next(
        m.message for m in result.members if m.member == "fip.b"
    )


async def test_a_fip_on_another_network_than_the_router_is_refused(ipam: IpamReconciler) -> None:
    # A cloud project's router has a port on cloud only: a public FIP's replies could not
    # leave through it. Refused, its own EIP is not even allocated; a named EIP likewise.
    members = [eip("pub", "public"), fip("x", ipAddress="10.0.0.9", externalNetworkType="public"),
               fip("y", ipAddress="10.0.0.10", eip="pub")]  # fmt: skip
    result = await ipam.reconcile(ctx(record(), members))
    assert states(result)["fip.x"] == ("Error", "NetworkNotRouted")
    assert states(result)["fip.y"] == ("Error", "NetworkNotRouted")
    assert "router is on cloud only" in next(
        m.message for m in result.members if m.member == "fip.x"
    )
    assert not any(n.startswith("fip-") for n in eips(result))
