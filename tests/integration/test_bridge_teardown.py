"""The bridge's finalizer and the EIp objects of IPAM's own EIPs, end to end: the fake API
server (which honours finalizers), a real nats-server, the four services and the bridge as
real processes. Deleting an EIp waits for IPAM to release it; deleting a Project waits for
every service's teardown, across a restart of the bridge; the EIps of a FIp's or the
gateway's own address appear as EIp objects and are never published back.

Tests share one stack and one bridge (module fixtures) and run in file order. "Still there"
is checked after :func:`settle` has seen the bridge finish two syncs since, not after a delay.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcs
from tests.integration.test_bridge import (
    KDC,
    KUBE_DC,
    BridgeProc,
    last_seq,
    ready_condition,
    stored_events,
    until,
)
from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import (  # noqa: F401
    kube_fixture,
    module_apiserver_fixture,
    module_kubeconfig_fixture,
)
from vpcbus.client import Client, deleted_at
from vpcbus.embedded import procs
from vpcbus_proto import subjects
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.kube import KubeClient

pytestmark = [pytest.mark.connected]

FIN = "network.vpcbus.io/teardown"
NS = "beta-shop"
_probes = itertools.count(1)


@pytest.fixture(scope="module", name="bridge")
def bridge_fixture(
    services: ServiceProcs, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeProc]:
    proc = BridgeProc({**services.env, "KUBECONFIG": str(kubeconfig)}, tmp_path_factory.mktemp("b"))
    proc.start()
    yield proc
    procs.stop_child(proc.proc)


async def published(client: Client, after: int, subject: str) -> dict[str, Any]:
    """The body of the first event on ``subject`` stored after sequence ``after``."""
    async with asyncio.timeout(30):
        while True:
            found = [b for s, b in await stored_events(client, after) if s == subject]
            if found:
                return found[0]
            await asyncio.sleep(0.1)


def kdc(kind: str, name: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": KDC, "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}  # fmt: skip


def eip_object(apiserver: FakeApiServer, name: str) -> dict[str, Any] | None:
    return apiserver.object(KDC, "eips", name, NS)


def ready(found: dict[str, Any] | None) -> dict[str, Any] | None:
    return found if ready_condition(found) else None


async def settle(apiserver: FakeApiServer, kube: KubeClient, bridge: BridgeProc) -> None:
    """Return once the bridge has run two whole syncs after this call: it puts its finalizer
    on a probe Project (invalid, so nothing is published) at the start of a sync, and syncs
    run one after another."""
    for _ in range(2):
        name = f"p{next(_probes)}"
        await kube.apply(kdc("Project", name, "probe", cidrBlock="nope", egressNetworkType="cloud"),
                         field_manager=KUBE_DC)  # fmt: skip

        def finalized(probe: str = name) -> bool:
            found = apiserver.object(KDC, "projects", probe, "probe") or {}
            return FIN in (found.get("metadata", {}).get("finalizers") or [])

        await until(finalized, f"the finalizer on probe {name}", bridge)


async def test_the_fake_api_server_keeps_an_object_until_its_finalizers_are_gone(
    apiserver: FakeApiServer, kube: KubeClient
) -> None:
    def held(*finalizers: str) -> dict[str, Any]:
        return {"apiVersion": KDC, "kind": "EIp", "metadata": {"name": "held", "namespace":
                "scratch", **({"finalizers": list(finalizers)} if finalizers else {})}}  # fmt: skip

    await kube.apply(held("a.example/x"), field_manager="one")
    await kube.apply(held("b.example/y"), field_manager="two")
    _, since = await kube.list(KDC, "EIp", "scratch")
    assert await kube.delete(KDC, "EIp", "held", "scratch")
    kept = apiserver.object(KDC, "eips", "held", "scratch")
    assert kept is not None and kept["metadata"]["deletionTimestamp"]
    assert kept["metadata"]["finalizers"] == ["a.example/x", "b.example/y"]
    assert kept["metadata"]["generation"] == 2
    with pytest.raises(PermanentError, match="no new finalizers"):
        await kube.apply(held("c.example/z"), field_manager="three")
    assert await kube.delete(KDC, "EIp", "held", "scratch")  # again: nothing changes
    await kube.apply(held(), field_manager="one")
    assert (await kube.get(KDC, "EIp", "held", "scratch") or {})["metadata"]["finalizers"] == [
        "b.example/y"
    ]
    await kube.apply(held(), field_manager="two")
    assert await kube.get(KDC, "EIp", "held", "scratch") is None
    seen = [t async for t, _ in kube.watch(KDC, "EIp", "scratch", since, timeout_seconds=1)]
    assert seen == ["MODIFIED", "MODIFIED", "DELETED", "BOOKMARK"]


async def test_ipams_own_eips_become_eip_objects_and_go_with_their_owner(
    bridge: BridgeProc, apiserver: FakeApiServer, kube: KubeClient, client: Client
) -> None:
    start = await last_seq(client)
    project = kdc("Project", "shop", "beta", cidrBlock="10.1.0.0/24", egressNetworkType="cloud")
    await kube.apply(project, field_manager=KUBE_DC)
    await until(lambda: ready(apiserver.object(KDC, "projects", "shop", "beta")), "ready", bridge)

    # No Kube-DC here: the gateway's EIp is the bridge's, wrapping the gateway OvnEip.
    gw = await until(lambda: ready(eip_object(apiserver, "default-gw")), "default-gw", bridge)
    ipam = (await client.statuses("beta", "shop"))["ipam"].addresses
    assert ipam is not None and (gateway := ipam.eip("default-gw")) is not None
    assert gw["spec"] == {"childRef": f"{NS}-ext-cloud"}
    assert gw["metadata"]["labels"]["vpcbus.io/owner"] == "bridge"
    assert gw["status"]["ipAddress"] == gateway.ip_address
    assert gw["status"]["ownershipType"] == "Shared"

    # A FIp with its own EIP: IPAM allocates fip-db-xxxxx, the bridge shows it as an EIp.
    await kube.apply(kdc("FIp", "db", ipAddress="10.1.0.9", externalNetworkType="cloud"),
                     field_manager=KUBE_DC)  # fmt: skip

    def own_eip() -> dict[str, Any] | None:
        names = [o["metadata"]["name"] for o in apiserver.objects(KDC, "eips", NS)]
        mine = [n for n in names if n.startswith("fip-db-")]
        return ready(eip_object(apiserver, mine[0])) if mine else None

    own = await until(own_eip, "the FIp's own EIp", bridge)
    fip = apiserver.object(KDC, "fips", "db", NS)
    assert fip is not None and fip["metadata"]["finalizers"] == [FIN]
    assert own["spec"] == {"externalNetworkType": "cloud"}
    assert own["metadata"]["ownerReferences"] == [{"apiVersion": KDC, "kind": "FIp", "name": "db",
        "uid": fip["metadata"]["uid"], "controller": True}]  # fmt: skip
    assert own["status"]["ownershipType"] == "Exclusive"
    assert own["status"]["deleteReleased"] is True
    assert own["status"]["ovnEIpRef"] == f"{NS}-fip-db"  # the NAT backend's OvnEip name
    assert {"type": "FIp", "ownerRef": "db"} in own["status"]["owners"]
    assert "finalizers" not in own["metadata"]  # it goes with its project, no finalizer

    # Never published back as user EIPs (that would loop through IPAM).
    assert [s for s, _ in await stored_events(client, start)] == [
        subjects.PROJECT_CREATED, subjects.FIP_CREATED]  # fmt: skip

    # The FIp goes: its removal is published, IPAM releases the EIP, the EIp goes too.
    before = await last_seq(client)
    assert await kube.delete(KDC, "FIp", "db", NS)
    name = own["metadata"]["name"]
    await until(lambda: eip_object(apiserver, name) is None, "the own EIp gone", bridge)
    await until(lambda: apiserver.object(KDC, "fips", "db", NS) is None, "FIp gone", bridge)
    assert [s for s, _ in await stored_events(client, before)] == [subjects.FIP_DELETED]


async def test_deleting_an_eip_waits_until_ipam_has_released_it(
    bridge: BridgeProc,
    apiserver: FakeApiServer,
    kube: KubeClient,
    client: Client,
    services: ServiceProcs,
) -> None:
    await kube.apply(kdc("EIp", "web", externalNetworkType="cloud"), field_manager=KUBE_DC)
    web = await until(lambda: ready(eip_object(apiserver, "web")), "EIp web ready", bridge)
    assert web["metadata"]["finalizers"] == [FIN]

    services.stop("ipam")
    try:
        before = await last_seq(client)
        assert await kube.delete(KDC, "EIp", "web", NS)

        await published(client, before, subjects.EIP_DELETED)
        await settle(apiserver, kube, bridge)
        held = eip_object(apiserver, "web")
        assert held is not None and held["metadata"]["deletionTimestamp"], "went before IPAM"
        assert held["metadata"]["finalizers"] == [FIN]
    finally:
        services.start("ipam")
    await until(lambda: eip_object(apiserver, "web") is None, "EIp web gone", bridge)
    ipam = (await client.statuses("beta", "shop"))["ipam"].addresses
    assert ipam is not None and ipam.eip("web") is None


async def test_deleting_the_project_waits_for_every_service_across_a_restart(
    bridge: BridgeProc,
    apiserver: FakeApiServer,
    kube: KubeClient,
    client: Client,
    services: ServiceProcs,
) -> None:
    services.stop("nat")
    try:
        before = await last_seq(client)
        assert await kube.delete(KDC, "Project", "shop", "beta")

        generation = (await published(client, before, subjects.PROJECT_DELETED))["generation"]
        await settle(apiserver, kube, bridge)  # its syncs after the deletion are done
        bridge.stop()  # a restart in the middle: it must read every status before deciding
        bridge.start()
        await settle(apiserver, kube, bridge)
        held = apiserver.object(KDC, "projects", "shop", "beta")
        assert held is not None and held["metadata"]["deletionTimestamp"], "went before NAT"
        assert held["metadata"]["finalizers"] == [FIN]
        assert (await client.statuses("beta", "shop"))["nat"].state != "Deleted"
    finally:
        services.start("nat")
    await until(
        lambda: apiserver.object(KDC, "projects", "shop", "beta") is None, "Project gone", bridge,
        timeout=60,
    )  # fmt: skip
    assert deleted_at(generation)(await client.statuses("beta", "shop"))
    assert eip_object(apiserver, "default-gw") is None  # IPAM's own EIps went before it
