"""The Kube-OVN backends of VPC and NAT end to end: the fake API server in the test process,
a real nats-server, IPAM, VPC and NAT as real processes (``VPCBUS_BACKEND=kube-ovn``,
``KUBECONFIG`` at the fake). A project becomes a ``Vpc``, a ``Subnet``, a gateway ``OvnEip``
and an ``OvnSnatRule`` that pass Kube-OVN's strict CRD schemas; each service stays Pending
until the test writes the status Kube-OVN's controller would; a hand-deleted object comes
back; a stale object of ours is pruned; deletion goes SNAT, OvnEip, Subnet, Vpc and ends in
Deleted.

DNS is not started: VPC only waits for a peer that reported something. Tests share one stack
(module fixtures) and run in file order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.conftest import SERVICE_ENV, ServiceProcs
from tests.integration import helpers
from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import (  # noqa: F401
    kube_fixture,
    module_apiserver_fixture,
    module_kubeconfig_fixture,
)
from vpcbus.client import Client
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto.projects import ProjectRef
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.kube import KubeClient

pytestmark = [pytest.mark.connected]

KOVN = "kubeovn.io/v1"
CONTROLLER = "kube-ovn-controller"  # the field manager standing in for Kube-OVN
SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "kubeovn-crds"
ORG, PROJECT = "acme", "prod"
N = f"{ORG}-{PROJECT}"


@pytest.fixture(scope="module")
def kube_services(
    nats_server: NatsServer, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcs]:
    env = {
        **os.environ,
        **SERVICE_ENV,
        "NATS_URL": nats_server.url,
        "VPCBUS_BACKEND": "kube-ovn",
        "KUBECONFIG": str(kubeconfig),
        "VPCBUS_RESYNC_SECONDS": "1",
    }
    procs = ServiceProcs(env, tmp_path_factory.mktemp("logs"))
    procs.start("ipam")
    procs.start("vpc")
    procs.start("nat")
    procs.wait_registered(nats_server.url, ("ipam", "vpc", "nat"))
    yield procs
    procs.stop_all()


async def until(
    check: Callable[[], Awaitable[Any]], what: str, procs: ServiceProcs, timeout: float = 30.0
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the services' logs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := await check()):
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")
        await asyncio.sleep(0.1)
    return found


def status_is(
    client: Client,
    state: str,
    reason: str | None = None,
    generation: int = 0,
    service: ServiceName = "vpc",
) -> Callable[[], Awaitable[ServiceStatus | None]]:
    async def check() -> ServiceStatus | None:
        s = await client.status(service, ORG, PROJECT)
        if s is None or s.state != state or s.generation < generation:
            return None
        return s if reason is None or s.reason == reason else None

    return check


def schema_errors(obj: dict[str, Any]) -> list[str]:
    schema = json.loads((SCHEMAS / f"{obj['kind']}.json").read_text())
    body = {k: v for k, v in obj.items() if k != "metadata"}  # server-written metadata
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(body)]


async def kube_ovn_reports_ready(kube: KubeClient) -> None:
    """Write the status Kube-OVN's controller writes once it built the objects."""
    await kube.apply_status(
        {"apiVersion": KOVN, "kind": "Vpc", "metadata": {"name": N},
         "status": {"standby": True, "subnets": [f"{N}-default"]}},
        field_manager=CONTROLLER,
    )  # fmt: skip
    await kube.apply_status(
        {"apiVersion": KOVN, "kind": "Subnet", "metadata": {"name": f"{N}-default"},
         "status": {"conditions": [{"type": "Ready", "status": "True",
                                    "reason": "SetPrivateLogicalSwitchSuccess"}]}},
        field_manager=CONTROLLER,
    )  # fmt: skip


async def test_project_is_applied_and_ready_only_once_kube_ovn_says_so(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    published = await client.upsert(helpers.spec(ORG, PROJECT))

    async def both() -> bool:
        return None not in (
            apiserver.object(KOVN, "vpcs", N),
            apiserver.object(KOVN, "subnets", f"{N}-default"),
        )

    await until(both, "Vpc and Subnet applied", kube_services)
    vpc = apiserver.object(KOVN, "vpcs", N)
    subnet = apiserver.object(KOVN, "subnets", f"{N}-default")
    assert vpc is not None and subnet is not None
    for obj in (vpc, subnet):
        assert schema_errors(obj) == [], obj
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "vpcbus",
            "vpcbus.io/project": f"{ORG}.{PROJECT}",
            "vpcbus.io/owner": "vpc",
        }
        assert [m["manager"] for m in obj["metadata"]["managedFields"]] == ["vpcbus-vpc"]
    assert vpc["spec"]["namespaces"] == [N]
    assert vpc["spec"]["extraExternalSubnets"] == ["ext-cloud"]
    # The default route via the cloud pool's gateway, which IPAM reported.
    assert vpc["spec"]["staticRoutes"] == [
        {"cidr": "0.0.0.0/0", "nextHopIP": "100.65.0.1", "policy": "policyDst"}
    ]
    assert subnet["spec"]["vpc"] == N and subnet["spec"]["cidrBlock"] == "10.0.0.0/24"
    assert subnet["spec"]["gateway"] == "10.0.0.1" and subnet["spec"]["namespaces"] == [N]

    pending = await until(
        status_is(client, "Pending", "WaitingForKubeOvn", published.generation),
        "VPC Pending on Kube-OVN",
        kube_services,
    )
    assert "status.standby" in pending.message and "condition Ready" in pending.message

    await kube.apply_status(
        {"apiVersion": KOVN, "kind": "Vpc", "metadata": {"name": N}, "status": {"standby": True}},
        field_manager=CONTROLLER,
    )
    await until(
        lambda: _message_without(client, "status.standby"), "Vpc standby seen", kube_services
    )
    s = await client.status("vpc", ORG, PROJECT)
    assert s is not None and s.state == "Pending" and "condition Ready" in s.message

    await kube_ovn_reports_ready(kube)
    ready = await until(
        status_is(client, "Ready", "Reconciled", published.generation), "VPC Ready", kube_services
    )
    assert set(ready.objects) == {f"Vpc/{N}", f"Subnet/{N}-default"}


async def _message_without(client: Client, text: str) -> bool:
    s = await client.status("vpc", ORG, PROJECT)
    return s is not None and s.state == "Pending" and text not in s.message


async def test_nat_applies_gateway_eip_and_snat_and_waits_for_their_ready(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    eip_name, gw_eip = f"{N}-ext-cloud", await client.status("ipam", ORG, PROJECT)
    assert gw_eip is not None and gw_eip.addresses is not None
    eip = gw_eip.addresses.eip("default-gw")
    assert eip is not None
    pending = await until(
        status_is(client, "Pending", "WaitingForKubeOvn", service="nat"),
        "NAT Pending on Kube-OVN",
        kube_services,
    )
    assert set(pending.objects) == {f"OvnEip/{eip_name}", f"OvnSnatRule/{N}"}
    ovn_eip = apiserver.object(KOVN, "ovn-eips", eip_name)
    snat = apiserver.object(KOVN, "ovn-snat-rules", N)
    assert ovn_eip is not None and snat is not None
    for obj in (ovn_eip, snat):
        assert schema_errors(obj) == [], obj
        assert obj["metadata"]["labels"]["vpcbus.io/owner"] == "nat"
        assert [m["manager"] for m in obj["metadata"]["managedFields"]] == ["vpcbus-nat"]
    assert ovn_eip["spec"] == {"externalSubnet": "ext-cloud", "type": "lrp", "v4Ip": eip.ip_address}
    assert snat["spec"] == {"ovnEip": eip_name, "vpcSubnet": f"{N}-default"}

    await kube.apply_status(
        {"apiVersion": KOVN, "kind": "OvnEip", "metadata": {"name": eip_name},
         "status": {"ready": True, "v4Ip": eip.ip_address, "type": "lrp"}},
        field_manager=CONTROLLER,
    )  # fmt: skip

    async def only_snat_waits() -> ServiceStatus | None:
        s = await client.status("nat", ORG, PROJECT)
        ok = s is not None and s.state == "Pending" and "OvnEip" not in s.message
        return s if ok else None

    s = await until(only_snat_waits, "NAT waiting for the SNAT rule only", kube_services)
    assert f"OvnSnatRule {N}: status.ready is not true" in s.message
    await kube.apply_status(
        {"apiVersion": KOVN, "kind": "OvnSnatRule", "metadata": {"name": N},
         "status": {"ready": True, "vpc": N}},
        field_manager=CONTROLLER,
    )  # fmt: skip
    await until(status_is(client, "Ready", "Reconciled", service="nat"), "NAT Ready", kube_services)


async def test_hand_deleted_subnet_comes_back_and_stale_objects_go(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    await until(status_is(client, "Ready"), "VPC Ready", kube_services)
    assert await kube.delete(KOVN, "Subnet", f"{N}-default") is True
    stale = {
        "apiVersion": KOVN, "kind": "Subnet",
        "metadata": {"name": f"{N}-stale", "labels": {
            "app.kubernetes.io/managed-by": "vpcbus", "vpcbus.io/project": f"{ORG}.{PROJECT}",
            "vpcbus.io/owner": "vpc"}},
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
    await kube_ovn_reports_ready(kube)
    await until(status_is(client, "Ready"), "VPC Ready again", kube_services)


async def test_deleted_project_goes_subnet_first_then_vpc(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer
) -> None:
    mark = apiserver.resource_version
    published = await client.delete(ProjectRef(organization=ORG, name=PROJECT))
    await until(
        status_is(client, "Deleted", "TornDown", published.generation), "VPC Deleted", kube_services
    )
    assert apiserver.object(KOVN, "vpcs", N) is None
    assert apiserver.object(KOVN, "subnets", f"{N}-default") is None
    with apiserver.store.cond:
        deleted = [
            (e.key[1], e.key[3])
            for e in apiserver.store.events
            if e.rv > mark and e.type == "DELETED"
        ]
    # NAT first (the rule before the OvnEip it holds), then VPC, which waits for NAT.
    assert deleted == [
        ("ovn-snat-rules", N),
        ("ovn-eips", f"{N}-ext-cloud"),
        ("subnets", f"{N}-default"),
        ("vpcs", N),
    ]
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
