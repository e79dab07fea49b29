"""VPC on Kube-OVN before the project's namespace exists: the fake API server refuses the
namespaced NetworkAttachmentDefinition as a real one does (``namespaces "N" not found``), VPC
reports ``Pending WaitingForNamespace`` (not an Error) and is Ready once the namespace
appears and Kube-OVN reports the network built. IPAM and VPC as real processes, real NATS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import apiserver_fixture, kube_fixture, kubeconfig_fixture  # noqa: F401
from tests.kube.stack import NAD_API, network_ready, start_services, status_is, until
from vpcbus.client import Client
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto.status import ServiceStatus
from vpcbus_runtime.kube import KubeClient

pytestmark = [pytest.mark.connected]

ORG, PROJECT = "acme", "nsw"
N = f"{ORG}-{PROJECT}"


@pytest.fixture
def kube_services(
    nats_server: NatsServer, kubeconfig: Path, apiserver: FakeApiServer, tmp_path: Path
) -> Iterator[ServiceProcs]:
    apiserver.store.require_namespaces = True
    with start_services(nats_server.url, kubeconfig, tmp_path, ("ipam", "vpc")) as procs:
        yield procs


def vpc_is(
    client: Client, state: str, reason: str
) -> Callable[[], Awaitable[ServiceStatus | None]]:
    return status_is(client, (ORG, PROJECT), "vpc", state, reason)


async def test_vpc_waits_for_the_namespace_then_builds(
    kube_services: ServiceProcs, client: Client, apiserver: FakeApiServer, kube: KubeClient
) -> None:
    await client.upsert(helpers.spec(ORG, PROJECT))
    waiting = await until(
        vpc_is(client, "Pending", "WaitingForNamespace"), "VPC waits for N", kube_services
    )
    assert waiting.message == f"namespace {N} does not exist yet"
    assert apiserver.object(NAD_API, "network-attachment-definitions", "default", N) is None

    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": N}}
    await kube.apply(namespace, field_manager="kube-dc")

    async def attached() -> bool:
        nad = apiserver.object(NAD_API, "network-attachment-definitions", "default", N)
        return nad is not None

    await until(attached, "the NAD in the new namespace", kube_services)
    ipam = await client.status("ipam", ORG, PROJECT)
    gateway = ipam.addresses.eip("default-gw") if ipam and ipam.addresses else None
    assert gateway is not None
    await network_ready(kube, N, gateway.ip_address)
    await until(vpc_is(client, "Ready", "Reconciled"), "VPC Ready", kube_services)
