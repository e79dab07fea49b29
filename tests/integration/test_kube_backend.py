"""The Kube-OVN backends of VPC and NAT end to end: the fake API server in the test process,
a real nats-server, IPAM, VPC and NAT as real processes (``VPCBUS_BACKEND=kube-ovn``,
``KUBECONFIG`` at the fake). A project becomes the router's ``lrp`` OvnEip (pinned to IPAM's
``default-gw``), a ``Vpc``, a ``Subnet``, the workloads' ``NetworkAttachmentDefinition``
``default`` and an ``OvnSnatRule``; a FIP and a LoadBalancer
service become their own OvnEips, an ``OvnFip`` and ``OvnDnatRule`` objects; everything passes
Kube-OVN's strict CRD schemas; each service stays Pending until the test writes the status
Kube-OVN's controller would; a deleted FIP's objects are pruned; a hand-deleted object comes
back; a stale object of ours is pruned; deletion goes NAT's rules and OvnEips, then the
attachment NAD, the router's OvnEip, Subnet, Vpc, and ends in Deleted.

DNS runs too (its VpcDns is not the subject here) so that ``vpcbus doctor --backend kube-ovn``
gets every service's audit, and no OVN NB at all. Tests share one stack (module fixtures) and
run in file order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import (  # noqa: F401
    kube_fixture,
    module_apiserver_fixture,
    module_kubeconfig_fixture,
)
from tests.kube.stack import (
    KOVN,
    NAD_API,
    network_ready,
    report,
    schema_errors,
    start_services,
    until,
)
from tests.kube.stack import status_is as _status_is
from vpcbus.client import Client
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto import names
from vpcbus_proto.members import FipRef, FipSpec, LbServiceSpec, ServicePort
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.kube import KubeClient

pytestmark = [pytest.mark.connected]

ORG, PROJECT = "acme", "prod"
N = f"{ORG}-{PROJECT}"
LABELS = {"app.kubernetes.io/managed-by": "vpcbus", "vpcbus.io/project": f"{ORG}.{PROJECT}"}


@pytest.fixture(scope="module")
def kube_services(
    nats_server: NatsServer, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcs]:
    logs = tmp_path_factory.mktemp("logs")
    services: tuple[ServiceName, ...] = ("ipam", "vpc", "nat", "dns")
    with start_services(nats_server.url, kubeconfig, logs, services) as procs:
        yield procs


def status_is(
    client: Client,
    state: str,
    reason: str | None = None,
    generation: int = 0,
    service: ServiceName = "vpc",
) -> Callable[[], Awaitable[ServiceStatus | None]]:
    return _status_is(client, (ORG, PROJECT), service, state, reason, generation)


async def gateway_eip(client: Client) -> str:
    ipam = await client.status("ipam", ORG, PROJECT)
    eip = ipam.addresses.eip("default-gw") if ipam and ipam.addresses else None
    assert eip is not None
    return eip.ip_address


async def test_project_is_applied_and_ready_only_once_kube_ovn_says_so(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    published = await client.upsert(helpers.spec(ORG, PROJECT))
    want = {("vpcs", N), ("subnets", f"{N}-default"), ("ovn-eips", f"{N}-ext-cloud")}

    async def applied() -> bool:
        nad = apiserver.object(NAD_API, "network-attachment-definitions", "default", N)
        return nad is not None and all(apiserver.object(KOVN, p, n) for p, n in want)

    await until(applied, "OvnEip, Vpc, Subnet and NAD applied", kube_services)
    vpc = apiserver.object(KOVN, "vpcs", N)
    subnet = apiserver.object(KOVN, "subnets", f"{N}-default")
    lrp = apiserver.object(KOVN, "ovn-eips", f"{N}-ext-cloud")
    assert vpc is not None and subnet is not None and lrp is not None
    for obj in (vpc, subnet, lrp):
        assert schema_errors(obj) == [], obj
        assert obj["metadata"]["labels"] == {**LABELS, "vpcbus.io/owner": "vpc"}
        assert [m["manager"] for m in obj["metadata"]["managedFields"]] == ["vpcbus-vpc"]
    # The router's external address, pinned to IPAM's default-gw, applied before the Vpc (so
    # Kube-OVN uses it rather than making one from its own IPAM).
    assert lrp["spec"] == {
        "externalSubnet": "ext-cloud", "type": "lrp", "v4Ip": await gateway_eip(client)
    }  # fmt: skip
    assert int(lrp["metadata"]["resourceVersion"]) < int(vpc["metadata"]["resourceVersion"])
    assert vpc["spec"]["namespaces"] == [N]
    assert vpc["spec"]["extraExternalSubnets"] == ["ext-cloud"]
    # The default route via the cloud pool's gateway, which IPAM reported.
    assert vpc["spec"]["staticRoutes"] == [
        {"cidr": "0.0.0.0/0", "nextHopIP": "100.65.0.1", "policy": "policyDst"}
    ]
    assert subnet["spec"]["vpc"] == N and subnet["spec"]["cidrBlock"] == "10.0.0.0/24"
    assert subnet["spec"]["gateway"] == "10.0.0.1" and subnet["spec"]["namespaces"] == [N]
    # The workloads' attachment N/default: Kube-OVN's CNI, in the project's namespace.
    nad = apiserver.object(NAD_API, "network-attachment-definitions", "default", N)
    assert nad is not None and nad["metadata"]["labels"] == {**LABELS, "vpcbus.io/owner": "vpc"}
    assert json.loads(nad["spec"]["config"])["provider"] == f"default.{N}.ovn"

    pending = await until(
        status_is(client, "Pending", "WaitingForKubeOvn", published.generation),
        "VPC Pending on Kube-OVN",
        kube_services,
    )
    assert "status.standby" in pending.message and "condition Ready" in pending.message
    assert f"OvnEip {N}-ext-cloud: status.ready" in pending.message

    await report(kube, "Vpc", N, {"standby": True})
    await until(
        lambda: _message_without(client, "status.standby"), "Vpc standby seen", kube_services
    )
    s = await client.status("vpc", ORG, PROJECT)
    assert s is not None and s.state == "Pending" and "condition Ready" in s.message

    await network_ready(kube, N, await gateway_eip(client))
    ready = await until(
        status_is(client, "Ready", "Reconciled", published.generation), "VPC Ready", kube_services
    )
    assert set(ready.objects) == {
        f"OvnEip/{N}-ext-cloud", f"Vpc/{N}", f"Subnet/{N}-default",
        "NetworkAttachmentDefinition/default",
    }  # fmt: skip


async def _message_without(client: Client, text: str) -> bool:
    s = await client.status("vpc", ORG, PROJECT)
    return s is not None and s.state == "Pending" and text not in s.message


async def test_nat_applies_snat_and_waits_for_its_ready(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    pending = await until(
        status_is(client, "Pending", "WaitingForKubeOvn", service="nat"),
        "NAT Pending on Kube-OVN",
        kube_services,
    )
    assert pending.objects == [f"OvnSnatRule/{N}"]  # the gateway's OvnEip is VPC's
    assert f"OvnSnatRule {N}: status.ready is not true" in pending.message
    snat = apiserver.object(KOVN, "ovn-snat-rules", N)
    assert snat is not None and schema_errors(snat) == []
    assert snat["metadata"]["labels"] == {**LABELS, "vpcbus.io/owner": "nat"}
    assert [m["manager"] for m in snat["metadata"]["managedFields"]] == ["vpcbus-nat"]
    assert snat["spec"] == {"ovnEip": f"{N}-ext-cloud", "vpcSubnet": f"{N}-default"}

    await report(kube, "OvnSnatRule", N, {"ready": True, "vpc": N})
    ready = await until(
        status_is(client, "Ready", "Reconciled", service="nat"), "NAT Ready", kube_services
    )
    assert ready.message == f"SNAT 10.0.0.0/24 -> {await gateway_eip(client)}"


async def test_a_fip_and_a_load_balancer_become_ovn_fip_and_dnat_rules(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    await client.create_fip(
        FipSpec(organization=ORG, project=PROJECT, name="db", ip_address="10.0.0.50")
    )
    await client.upsert_service(
        LbServiceSpec(organization=ORG, project=PROJECT, name="api",
                      endpoints=["10.0.0.21", "10.0.0.20"],
                      ports=[ServicePort(port=80, target_port=8080),
                             ServicePort(port=53, target_port=5353, protocol="UDP")])
    )  # fmt: skip
    fip_eip, slb_eip = f"{N}-fip-db", f"{N}-slb-api"
    rules = {f"OvnFip/{N}-fip-db", f"OvnDnatRule/{N}-svc-api-tcp-80",
             f"OvnDnatRule/{N}-svc-api-udp-53"}  # fmt: skip
    want = {f"OvnEip/{fip_eip}", f"OvnEip/{slb_eip}", f"OvnSnatRule/{N}", *rules}

    async def all_applied() -> ServiceStatus | None:
        s = await client.status("nat", ORG, PROJECT)
        return s if s is not None and set(s.objects) == want else None

    pending = await until(all_applied, "NAT applied the FIP and the service", kube_services)
    assert pending.state == "Pending" and pending.reason == "WaitingForKubeOvn"
    ipam = await client.status("ipam", ORG, PROJECT)
    assert ipam is not None and ipam.addresses is not None
    db, api = ipam.addresses.fip("db"), ipam.addresses.service("api")
    assert db is not None and db.ready and api is not None and api.ready
    # IPAM's own EIPs, each as the OvnEip named after its owner, pinned to IPAM's address.
    assert db.eip == names.fip_eip_name(f"{ORG}.{PROJECT}", "db")
    stored = {
        (kind, name): apiserver.object(KOVN, plural, name)
        for kind, plural, name in [
            ("OvnEip", "ovn-eips", fip_eip), ("OvnEip", "ovn-eips", slb_eip),
            ("OvnFip", "ovn-fips", f"{N}-fip-db"),
            ("OvnDnatRule", "ovn-dnat-rules", f"{N}-svc-api-tcp-80"),
            ("OvnDnatRule", "ovn-dnat-rules", f"{N}-svc-api-udp-53"),
        ]
    }  # fmt: skip
    for obj in stored.values():
        assert obj is not None and schema_errors(obj) == [], obj
        assert obj["metadata"]["labels"] == {**LABELS, "vpcbus.io/owner": "nat"}
    specs = {key: obj["spec"] for key, obj in stored.items() if obj is not None}
    assert specs == {
        ("OvnEip", fip_eip): {"externalSubnet": "ext-cloud", "type": "nat", "v4Ip": db.external_ip},
        ("OvnEip", slb_eip): {"externalSubnet": "ext-cloud", "type": "nat", "v4Ip": api.ingress_ip},
        ("OvnFip", f"{N}-fip-db"): {"ovnEip": fip_eip, "vpc": N, "v4Ip": "10.0.0.50"},
        # One backend per rule: the lowest endpoint.
        ("OvnDnatRule", f"{N}-svc-api-tcp-80"): {
            "ovnEip": slb_eip, "protocol": "tcp", "externalPort": "80", "internalPort": "8080",
            "vpc": N, "v4Ip": "10.0.0.20"},
        ("OvnDnatRule", f"{N}-svc-api-udp-53"): {
            "ovnEip": slb_eip, "protocol": "udp", "externalPort": "53", "internalPort": "5353",
            "vpc": N, "v4Ip": "10.0.0.20"},
    }  # fmt: skip

    # Ready only once Kube-OVN reports every one of them ready.
    for kind, name in stored:
        await report(kube, kind, name, {"ready": True})
    ready = await until(
        status_is(client, "Ready", "Reconciled", service="nat"), "NAT Ready", kube_services
    )
    assert ready.message.endswith("; 1 FIP(s); 2 DNAT rule(s)")

    # A deleted FIP takes its OvnFip and its own OvnEip with it; the service's stay.
    await client.delete_fip(FipRef(organization=ORG, project=PROJECT, name="db"))

    async def fip_pruned() -> ServiceStatus | None:
        s = await client.status("nat", ORG, PROJECT)
        gone = s is not None and s.state == "Ready" and f"OvnFip/{N}-fip-db" not in s.objects
        return s if gone else None

    await until(fip_pruned, "NAT Ready without the FIP", kube_services)
    assert apiserver.object(KOVN, "ovn-fips", f"{N}-fip-db") is None
    assert apiserver.object(KOVN, "ovn-eips", fip_eip) is None
    assert apiserver.object(KOVN, "ovn-dnat-rules", f"{N}-svc-api-tcp-80") is not None


async def test_doctor_audits_the_kube_objects_and_reads_no_ovn_nb(
    kube_services: ServiceProcs, nats_server: NatsServer
) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url, "VPCBUS_BACKEND": "kube-ovn",
           "OVN_NB_DB": "unix:/nonexistent/ovnnb_db.sock"}  # fmt: skip
    res = await helpers.vpcbus(env, "doctor", "--json", "-p", f"{ORG}/{PROJECT}")
    assert res.returncode == 0, res.stdout + res.stderr
    report_ = json.loads(res.stdout)
    assert report_["findings"] == []
    assert report_["projects"] == {"ipam": 1, "vpc": 1, "nat": 1, "dns": 1}
    # The OVN backend's doctor would read NB, which is not there.
    res = await helpers.vpcbus(env, "doctor", "--backend", "ovn", "-p", f"{ORG}/{PROJECT}")
    assert res.returncode == 4 and "cannot read OVN NB" in res.stderr, res.stderr
    bad = await helpers.vpcbus({**env, "VPCBUS_BACKEND": "kube"}, "doctor")
    assert bad.returncode == 2 and "backend 'kube': want one of ovn, kube-ovn" in bad.stderr


async def test_hand_deleted_subnet_comes_back_and_stale_objects_go(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    await until(status_is(client, "Ready"), "VPC Ready", kube_services)
    assert await kube.delete(KOVN, "Subnet", f"{N}-default") is True
    stale = {
        "apiVersion": KOVN, "kind": "Subnet",
        "metadata": {"name": f"{N}-stale", "labels": {**LABELS, "vpcbus.io/owner": "vpc"}},
        "spec": {"vpc": N, "cidrBlock": "10.0.1.0/24"},
    }  # fmt: skip
    await kube.apply(stale, field_manager="vpcbus-vpc")

    async def repaired() -> bool:
        return (
            apiserver.object(KOVN, "subnets", f"{N}-default") is not None
            and apiserver.object(KOVN, "subnets", f"{N}-stale") is None
        )

    await until(repaired, "Subnet re-applied and the stale one pruned", kube_services)
    # A new Subnet: Kube-OVN has not reported it Ready yet, so neither does VPC.
    await until(status_is(client, "Pending", "WaitingForKubeOvn"), "VPC Pending", kube_services)
    await network_ready(kube, N, await gateway_eip(client))
    await until(status_is(client, "Ready"), "VPC Ready again", kube_services)


async def test_deleted_project_goes_nat_rules_and_eips_then_the_network(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer
) -> None:
    mark = apiserver.resource_version
    # Watched, not polled: with a 1 s tombstone the Deleted statuses go soon after they come.
    await helpers.delete_done(client, ORG, PROJECT)
    assert apiserver.object(KOVN, "vpcs", N) is None
    assert apiserver.object(KOVN, "subnets", f"{N}-default") is None
    with apiserver.store.cond:
        deleted = [
            (e.key[1], e.key[3])
            for e in apiserver.store.events
            if e.rv > mark and e.type == "DELETED"
        ]
    # NAT first (the rules before the OvnEips they hold), then VPC, which waits for NAT and
    # DNS: Kube-DC's order (SNAT rule, OvnEip, Subnet, Vpc).
    dns = {"vpc-dnses", "services", "endpoints"}  # DNS's, in parallel with NAT's
    assert [d for d in deleted if d[0] not in dns] == [
        ("ovn-dnat-rules", f"{N}-svc-api-tcp-80"),
        ("ovn-dnat-rules", f"{N}-svc-api-udp-53"),
        ("ovn-snat-rules", N),
        ("ovn-eips", f"{N}-slb-api"),
        ("network-attachment-definitions", "default"),
        ("ovn-eips", f"{N}-ext-cloud"),
        ("subnets", f"{N}-default"),
        ("vpcs", N),
    ]
    assert [d for d in deleted if d[0] in dns] == [
        ("endpoints", "api-ext"), ("services", "api-ext"), ("vpc-dnses", N)
    ]  # fmt: skip
    assert deleted.index(("vpc-dnses", N)) < deleted.index(("ovn-eips", f"{N}-ext-cloud"))
    nat = await client.status("nat", ORG, PROJECT)
    assert nat is None or nat.state == "Deleted"


@pytest.mark.parametrize("service", ["vpc", "nat"])
async def test_a_bad_backend_stops_the_service_with_a_clear_message(service: str) -> None:
    env = {**os.environ, "VPCBUS_BACKEND": "kube", "NATS_URL": "nats://127.0.0.1:1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"vpcbus_{service}", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode != 0
    assert "VPCBUS_BACKEND='kube': want one of ovn, kube-ovn" in err.decode()
