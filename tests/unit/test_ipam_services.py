"""IPAM resolves LoadBalancer services: endpoints (addresses or a VM), the EIP (the shared
default-gw, a shared user EIP, or the service's own ``slb-<name>-xxxxx``) and ports, unique per
EIP and protocol. A service with a problem is refused as a whole, with a reason naming what is
in the way, and becomes ready by itself when that goes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.unit.fakes import FakeKV
from tests.unit.ipam_fixtures import check_store
from tests.unit.test_ipam_fips import eips, fip
from tests.unit.test_ipam_reconciler import POOLS, ctx, eip, ipam, nic, record, states
from vpcbus_ipam.reconciler import IpamReconciler, service_holder
from vpcbus_proto.members import LbServiceSpec
from vpcbus_proto.names import service_eip_name
from vpcbus_proto.status import LoadBalancer
from vpcbus_runtime.members import MemberRecord
from vpcbus_runtime.reconciling import Result

__all__ = ["ipam"]  # the fixture

WEB = [{"port": 80, "targetPort": 8080}]


def svc(name: str, generation: int = 1, *, deleted: bool = False, **fields: Any) -> MemberRecord:
    spec = None
    if not deleted:
        body = {"organization": "acme", "project": "shop", "name": name, "ports": WEB, **fields}
        spec = LbServiceSpec.model_validate(body)
    return MemberRecord(
        organization="acme", project="shop", member=f"service.{name}", generation=generation,
        event_id=f"service.{name}-{generation}", service=spec,
        deleted_at=datetime.now(UTC) if deleted else None,
    )  # fmt: skip


def services(result: Result) -> dict[str, LoadBalancer]:
    assert result.addresses is not None
    return {s.name: s for s in result.addresses.services}


def why(result: Result, member: str) -> str:
    return next(m.message for m in result.members if m.member == member)


async def test_services_share_default_gw_on_distinct_ports(ipam: IpamReconciler) -> None:
    members = [
        svc("web", endpoints=["10.0.0.5", "10.0.0.6"], bindOnDefaultGwEip=True),
        svc("dns", endpoints=["10.0.0.7"], bindOnDefaultGwEip=True,
            ports=[{"port": 53, "targetPort": 53, "protocol": "UDP"},
                   {"port": 80, "targetPort": 53, "protocol": "UDP"}]),  # 80/UDP: free
        svc("www", endpoints=["10.0.0.8"], bindOnDefaultGwEip=True),  # 80/TCP: web has it
    ]  # fmt: skip
    result = await ipam.reconcile(ctx(record(), members))

    gw = eips(result)["default-gw"]
    got = services(result)
    assert got["web"].ready and got["web"].ingress_ip == gw[0] and got["dns"].ready
    assert gw[1:] == ("Shared", ["Snat/acme-shop", "ServiceLb/dns", "ServiceLb/web"])
    assert states(result)["service.www"] == ("Error", "PortInUse")
    assert "port 80/TCP of EIP default-gw is used by service web" in why(result, "service.www")
    assert [(p.port, p.reason) for p in got["www"].ports] == [(80, "PortInUse")]
    assert not got["www"].ready and got["www"].ingress_ip == ""


async def test_a_service_without_binding_gets_its_own_eip_released_with_it(
    ipam: IpamReconciler, kv: FakeKV
) -> None:
    result = await ipam.reconcile(ctx(record(), [nic("db"), svc("ssh", vmSelector="db")]))
    own = service_eip_name("acme.shop", "ssh")
    assert own.startswith("slb-ssh-") and len(own) == len("slb-ssh-") + 5
    got = services(result)["ssh"]
    assert (got.ready, got.eip, got.endpoints) == (True, own, ["10.0.0.2"])
    assert eips(result)[own] == (got.ingress_ip, "Shared", ["ServiceLb/ssh"])
    assert service_holder("acme.shop", "ssh") in check_store(kv, POOLS["cloud"])

    gone = await ipam.reconcile(ctx(record(), [nic("db"), svc("ssh", 2, deleted=True)]))
    assert services(gone) == {} and own not in eips(gone)
    assert service_holder("acme.shop", "ssh") not in check_store(kv, POOLS["cloud"])
    assert states(gone)["service.ssh"] == ("Deleted", "Released")


async def test_a_user_eip_is_shared_by_services_but_not_with_a_fip(ipam: IpamReconciler) -> None:
    members = [
        eip("pub"), eip("mine"),
        svc("a", endpoints=["10.0.0.5"], bindOnEip="pub"),
        svc("b", endpoints=["10.0.0.6"], bindOnEip="pub",
            ports=[{"port": 443, "targetPort": 8443}]),
        fip("f", ipAddress="10.0.0.9", eip="mine"),
        svc("c", endpoints=["10.0.0.7"], bindOnEip="mine"),
        svc("d", endpoints=["10.0.0.7"], bindOnEip="nope"),
    ]  # fmt: skip
    result = await ipam.reconcile(ctx(record(), members))
    assert eips(result)["pub"][1:] == ("Shared", ["ServiceLb/a", "ServiceLb/b"])
    assert services(result)["a"].ready and services(result)["b"].ready
    assert states(result)["service.c"] == ("Error", "EipInUse")
    assert "taken by FIp/f" in why(result, "service.c")
    assert states(result)["service.d"] == ("Error", "EipNotFound")


async def test_endpoints_must_be_usable_and_a_vm_must_exist(ipam: IpamReconciler) -> None:
    members = [
        svc("out", endpoints=["10.9.0.5"]),
        svc("gw", endpoints=["10.0.0.1"]),
        svc("vm", vmSelector="ghost"),
    ]
    result = await ipam.reconcile(ctx(record(), members))
    assert states(result)["service.out"] == ("Error", "EndpointOutOfSubnet")
    assert states(result)["service.gw"] == ("Error", "EndpointOutOfSubnet")
    assert states(result)["service.vm"] == ("Error", "TargetNotFound")
    later = await ipam.reconcile(ctx(record(), [nic("ghost"), svc("vm", vmSelector="ghost")]))
    assert services(later)["vm"].ready  # the VM came: ready without a new service event


async def test_a_port_conflict_resolves_itself_when_the_first_service_goes(
    ipam: IpamReconciler,
) -> None:
    first = svc("a", endpoints=["10.0.0.5"], bindOnDefaultGwEip=True)
    second = svc("b", endpoints=["10.0.0.6"], bindOnDefaultGwEip=True)
    assert states(await ipam.reconcile(ctx(record(), [first, second])))["service.b"][1] == (
        "PortInUse"
    )
    result = await ipam.reconcile(ctx(record(), [svc("a", 2, deleted=True), second]))
    assert services(result)["b"].ready


async def test_a_service_on_another_network_than_the_router_is_refused(
    ipam: IpamReconciler,
) -> None:
    members = [
        eip("pub", "public"),
        svc("a", endpoints=["10.0.0.5"], externalNetworkType="public"),
        svc("b", endpoints=["10.0.0.5"], bindOnEip="pub"),
    ]
    result = await ipam.reconcile(ctx(record(), members))
    assert states(result)["service.a"] == ("Error", "NetworkNotRouted")
    assert states(result)["service.b"] == ("Error", "NetworkNotRouted")
    assert not any(n.startswith("slb-") for n in eips(result))
