"""The DNS service's Kube-OVN backend end to end: the fake API server in the test process, a
real nats-server, IPAM, VPC and DNS as real processes (``VPCBUS_BACKEND=kube-ovn``,
``KUBECONFIG`` at the fake). Once VPC is Ready, DNS applies ``VpcDns`` (strict CRD schema)
and stays Pending until the test writes ``status.active``; a LoadBalancer service on the
default-gw EIP gets its ``<svc>-ext`` headless Service and Endpoints at the ingress IP, and
loses them when it is deleted; deleting the project goes Endpoints, Service, VpcDns, then
VPC's NAD, OvnEip, Subnet and Vpc. DNS's doctor endpoint finds the converged slice clean.

NAT is not started: neither DNS nor VPC waits for a peer that never reported. Tests share
one stack (module fixtures) and run in file order.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import (  # noqa: F401
    kube_fixture,
    module_apiserver_fixture,
    module_kubeconfig_fixture,
)
from tests.kube.stack import KOVN, network_ready, report, schema_errors, start_services, until
from tests.kube.stack import status_is as _status_is
from vpcbus.client import Client
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto.doctor import DOCTOR_ENDPOINT, DoctorReply, DoctorRequest
from vpcbus_proto.members import LbServiceRef, LbServiceSpec, ServicePort
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.kube import KubeClient

pytestmark = [pytest.mark.connected]

ORG, PROJECT = "acme", "dns"
N = f"{ORG}-{PROJECT}"
LABELS = {
    "app.kubernetes.io/managed-by": "vpcbus",
    "vpcbus.io/project": f"{ORG}.{PROJECT}",
    "vpcbus.io/owner": "dns",
}


@pytest.fixture(scope="module")
def kube_services(
    nats_server: NatsServer, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcs]:
    logs = tmp_path_factory.mktemp("logs")
    with start_services(nats_server.url, kubeconfig, logs, ("ipam", "vpc", "dns")) as procs:
        yield procs


def status_is(
    client: Client, state: str, reason: str | None = None, service: ServiceName = "dns"
) -> Callable[[], Awaitable[ServiceStatus | None]]:
    return _status_is(client, (ORG, PROJECT), service, state, reason)


def ext_objects(apiserver: FakeApiServer, name: str) -> list[dict[str, Any] | None]:
    return [
        apiserver.object("v1", "services", name, N),
        apiserver.object("v1", "endpoints", name, N),
    ]


async def test_dns_waits_for_vpc_dns_active_then_is_ready(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    await client.upsert(helpers.spec(ORG, PROJECT))
    s = await until(status_is(client, "Pending", "WaitingForVpc"), "DNS waits for VPC",
                    kube_services)  # fmt: skip
    assert apiserver.object(KOVN, "vpc-dnses", N) is None  # nothing before VPC is Ready
    assert s.message.startswith("vpc: ")
    await until(partial(_exists, kube, "Subnet", f"{N}-default"), "VPC applied", kube_services)
    ipam = await client.status("ipam", ORG, PROJECT)
    gateway = ipam.addresses.eip("default-gw") if ipam and ipam.addresses else None
    assert gateway is not None
    await network_ready(kube, N, gateway.ip_address)
    await until(status_is(client, "Ready", service="vpc"), "VPC Ready", kube_services)

    pending = await until(
        status_is(client, "Pending", "WaitingForKubeOvn"), "DNS Pending on VpcDns", kube_services
    )
    assert f"VpcDns {N}: status.active is not true" in pending.message
    assert pending.objects == [f"VpcDns/{N}"]
    vpc_dns = apiserver.object(KOVN, "vpc-dnses", N)
    assert vpc_dns is not None and schema_errors(vpc_dns) == []
    assert vpc_dns["spec"] == {"vpc": N, "subnet": f"{N}-default"}
    assert vpc_dns["metadata"]["labels"] == LABELS
    assert [m["manager"] for m in vpc_dns["metadata"]["managedFields"]] == ["vpcbus-dns"]

    await report(kube, "VpcDns", N, {"active": True})
    ready = await until(status_is(client, "Ready", "Reconciled"), "DNS Ready", kube_services)
    assert ready.resolver is None and ready.objects == [f"VpcDns/{N}"]


async def _exists(kube: KubeClient, kind: str, name: str) -> bool:
    return await kube.get(KOVN, kind, name) is not None


async def test_a_load_balancer_service_gets_its_ext_service_at_the_ingress_ip(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer
) -> None:
    await client.upsert_service(
        LbServiceSpec(organization=ORG, project=PROJECT, name="web", bind_on_default_gw_eip=True,
                      ports=[ServicePort(port=443, target_port=8443)])
    )  # fmt: skip

    async def published() -> bool:
        return None not in ext_objects(apiserver, "web-ext")

    await until(published, "web-ext Service and Endpoints", kube_services)
    ipam = await client.status("ipam", ORG, PROJECT)
    assert ipam is not None and ipam.addresses is not None
    web = ipam.addresses.service("web")
    assert web is not None and web.ready and web.ingress_ip
    service, endpoints = ext_objects(apiserver, "web-ext")
    assert service is not None and endpoints is not None
    ports = [{"name": "tcp-443", "port": 443, "protocol": "TCP"}]
    assert service["spec"] == {"clusterIP": "None", "ports": ports}
    assert endpoints["subsets"] == [{"addresses": [{"ip": web.ingress_ip}], "ports": ports}]
    for obj in (service, endpoints):
        assert obj["metadata"]["labels"] == LABELS
    ready = await until(
        lambda: _ready_with(client, "Endpoints/web-ext"), "DNS Ready with web-ext", kube_services
    )
    assert "Service/web-ext" in ready.objects

    zone = await client.zone(ORG, PROJECT)
    assert zone.served and zone.resolver is None
    record = zone.lookup(f"web-ext.{N}.svc.cluster.local")
    assert record is not None and record.addresses == [web.ingress_ip]
    assert record.source == "service-ext" and record.owner == "service/web"

    # DNS's audit for the doctor: the stored slice against the desired one, read-only.
    ask = DoctorRequest(organization=ORG, project=PROJECT).model_dump_json().encode()
    msg = await client.nc.request(DOCTOR_ENDPOINT.format(service="dns"), ask, timeout=10)
    reply = DoctorReply.model_validate_json(msg.data)
    assert (reply.projects, reply.findings) == (1, [])


async def _ready_with(client: Client, obj: str) -> ServiceStatus | None:
    s = await client.status("dns", ORG, PROJECT)
    return s if s is not None and s.state == "Ready" and obj in s.objects else None


async def test_a_deleted_service_loses_its_ext_service(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer
) -> None:
    await client.upsert_service(
        LbServiceSpec(organization=ORG, project=PROJECT, name="api", bind_on_default_gw_eip=True,
                      ports=[ServicePort(port=8080, target_port=80)])
    )  # fmt: skip
    await until(lambda: _ready_with(client, "Endpoints/api-ext"), "api-ext", kube_services)
    await client.delete_service(LbServiceRef(organization=ORG, project=PROJECT, name="web"))

    async def gone() -> bool:
        return ext_objects(apiserver, "web-ext") == [None, None]

    await until(gone, "web-ext pruned", kube_services)
    assert None not in ext_objects(apiserver, "api-ext")  # the other one stays

    async def reported() -> ServiceStatus | None:
        s = await _ready_with(client, "Endpoints/api-ext")
        return s if s is not None and "Service/web-ext" not in s.objects else None

    await until(reported, "DNS Ready without web-ext", kube_services)


async def test_deleted_project_goes_endpoints_service_vpc_dns_then_the_network(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer
) -> None:
    mark = apiserver.resource_version
    # Watched, not polled: with a 1 s tombstone the Deleted statuses go soon after they come.
    await helpers.delete_done(client, ORG, PROJECT)
    with apiserver.store.cond:
        deleted = [
            (e.key[1], e.key[3])
            for e in apiserver.store.events
            if e.rv > mark and e.type == "DELETED"
        ]
    assert deleted == [
        ("endpoints", "api-ext"),
        ("services", "api-ext"),
        ("vpc-dnses", N),
        ("network-attachment-definitions", "default"),
        ("ovn-eips", f"{N}-ext-cloud"),
        ("subnets", f"{N}-default"),
        ("vpcs", N),
    ]
    assert apiserver.objects("v1", "services", N) == []
    assert apiserver.objects("v1", "endpoints", N) == []
    assert apiserver.objects(KOVN, "vpc-dnses") == []


async def test_a_bad_backend_stops_dns_with_a_clear_message() -> None:
    env = {**os.environ, "VPCBUS_BACKEND": "kube", "NATS_URL": "nats://127.0.0.1:1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vpcbus_dns", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode != 0
    assert "VPCBUS_BACKEND='kube': want one of ovn, kube-ovn" in err.decode()
