"""vpcbus on a real cluster with Kube-OVN: IPAM, VPC and NAT (``VPCBUS_BACKEND=kube-ovn``) as
real processes against a real nats-server (the repo's fixture) and the cluster ``KUBECONFIG``
names. A project becomes a ``Vpc`` that Kube-OVN reports standby, a ``Subnet`` it reports
Ready, the gateway ``OvnEip`` and an ``OvnSnatRule`` it reports ready, the workloads'
``NetworkAttachmentDefinition`` ``default``, written the way Kube-DC
writes them; a FIP becomes its own ``OvnEip`` and an ``OvnFip`` Kube-OVN reports ready, and
goes with the FIP; deleting the project removes them in Kube-DC's order (SNAT rule, OvnEip, Subnet,
Vpc) and leaves nothing of ours behind.

Runs only when ``KUBECONFIG`` names a reachable cluster with Kube-OVN's CRDs and the external
subnet ``ext-cloud`` Kube-DC projects use; skipped with the reason otherwise. Setup with kind:
the "End-to-end tests on kind + Kube-OVN" steps in the README. DNS is not started (VPC waits
only for a peer that reported something). IPAM's ``cloud`` pool is the ``ext-cloud`` subnet,
minus what it excludes and what Kube-OVN already uses there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import SERVICE_ENV, ServiceProcs
from vpcbus.client import Client, Statuses
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto.members import FipRef, FipSpec
from vpcbus_proto.projects import ProjectRef, ProjectSpec
from vpcbus_runtime.errors import PermanentError, TemporaryError
from vpcbus_runtime.kube import KubeClient

pytestmark = [pytest.mark.connected, pytest.mark.slow]

KOVN = "kubeovn.io/v1"
NAD_API = "k8s.cni.cncf.io/v1"
EXTERNAL_SUBNET = "ext-cloud"  # Kube-DC's cloud network (installer default EXT_NET_NAME)
SERVICES = ("ipam", "vpc", "nat")
#: Kube-DC's e2e waits up to 120 s for a project; Kube-OVN's framework up to 2 min per object.
TIMEOUT = 180.0
FIELD_MANAGER = "vpcbus-e2e"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    #: ``VPCBUS_POOLS`` for IPAM: the ``cloud`` pool on the ext-cloud subnet.
    pools: str


def pools_from(subnet: dict[str, Any]) -> str:
    """``VPCBUS_POOLS`` with the ``cloud`` pool on a Kube-OVN external ``Subnet``: its CIDR
    and gateway; excluded are its ``excludeIps`` and the addresses Kube-OVN already hands out
    there (``status.v4usingIPrange``, ``a-b`` ranges), so the two IPAMs never collide."""
    spec, status = subnet.get("spec") or {}, subnet.get("status") or {}
    exclude = [str(r) for r in spec.get("excludeIps") or []]
    using = str(status.get("v4usingIPrange") or "")
    exclude += [r.strip().replace("-", "..") for r in using.split(",") if r.strip()]
    pool = {"cidr": spec["cidrBlock"], "gateway": spec["gateway"], "exclude": exclude}
    return json.dumps({"cloud": pool})


async def _probe(kubeconfig: str) -> Cluster:
    """The cluster, or a skip that says what is missing."""
    try:
        kube = KubeClient.from_config(kubeconfig)
    except PermanentError as exc:
        pytest.skip(f"KUBECONFIG={kubeconfig}: {exc.message}")
    try:
        try:
            await kube.list(KOVN, "Vpc")
        except TemporaryError as exc:
            pytest.skip(f"the cluster of KUBECONFIG={kubeconfig} is not reachable: {exc.message}")
        except PermanentError as exc:
            pytest.skip(f"Kube-OVN's CRDs are not installed (kubeovn.io/v1 vpcs): {exc.message}")
        try:
            await kube.list(NAD_API, "NetworkAttachmentDefinition", "default")
        except PermanentError as exc:
            pytest.skip(f"Multus' NetworkAttachmentDefinition CRD is not installed: {exc.message}")
        subnet = await kube.get(KOVN, "Subnet", EXTERNAL_SUBNET)
        if subnet is None:
            pytest.skip(f"no Kube-OVN Subnet {EXTERNAL_SUBNET} (the external network of Kube-DC "
                        "projects): see the README's kind + Kube-OVN steps")  # fmt: skip
        return Cluster(kubeconfig, pools_from(subnet))
    finally:
        await kube.close()


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.skip("KUBECONFIG is not set: this suite needs a cluster with Kube-OVN")
    return asyncio.run(_probe(kubeconfig))


@pytest.fixture(scope="module")
def kube_services(
    cluster: Cluster, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcs]:
    env = {
        **os.environ,
        **SERVICE_ENV,
        "NATS_URL": nats_server.url,
        "VPCBUS_BACKEND": "kube-ovn",
        "KUBECONFIG": cluster.kubeconfig,
        "VPCBUS_POOLS": cluster.pools,
    }
    procs = ServiceProcs(env, tmp_path_factory.mktemp("logs"))
    for name in SERVICES:
        procs.start(name)
    procs.wait_registered(nats_server.url, SERVICES)
    yield procs
    procs.stop_all()


@pytest.fixture(name="kube")
async def kube_fixture(cluster: Cluster) -> AsyncIterator[KubeClient]:
    client = KubeClient.from_config(cluster.kubeconfig)
    yield client
    await client.close()


def at(state: str, generation: int) -> Any:
    def check(statuses: Statuses) -> bool:
        return all(
            (s := statuses.get(name)) is not None
            and s.state == state
            and s.generation >= generation
            for name in SERVICES
        )

    return check


async def until_ready(kube: KubeClient, kind: str, name: str) -> dict[str, Any]:
    """The object once Kube-OVN reports it ``status.ready``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not ((found := await kube.get(KOVN, kind, name)) or {}).get("status", {}).get("ready"):
        assert loop.time() < deadline, f"{kind} {name} not ready: {found}"
        await asyncio.sleep(1.0)
    assert found is not None
    return found


async def until_gone(kube: KubeClient, kind: str, name: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while (left := await kube.get(KOVN, kind, name)) is not None:
        assert loop.time() < deadline, f"{kind} {name} still there: {left.get('metadata')}"
        await asyncio.sleep(1.0)


async def deletions(
    kube: KubeClient, since: dict[str, str], out: list[tuple[int, str, str]]
) -> None:
    """Append (resourceVersion, kind, name) of every DELETED event after ``since`` per kind."""

    async def one(kind: str) -> None:
        version = since[kind]
        while True:  # a watch ends after its timeout: watch on from where it ended
            async for event, obj in kube.watch(KOVN, kind, resource_version=version):
                meta = obj.get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                if event == "DELETED":
                    rv = int(version) if version.isdigit() else len(out)
                    out.append((rv, kind, meta.get("name", "")))

    async with asyncio.TaskGroup() as tasks:
        for kind in since:
            tasks.create_task(one(kind))


def ready_condition(subnet: dict[str, Any]) -> bool:
    conditions = (subnet.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def test_pools_follow_the_external_subnet() -> None:
    subnet = {
        "spec": {"cidrBlock": "100.65.0.0/16", "gateway": "100.65.0.1",
                 "excludeIps": ["100.65.0.1..100.65.0.20"]},
        "status": {"v4usingIPrange": "100.65.0.21-100.65.0.23,100.65.0.40"},
    }  # fmt: skip
    assert json.loads(pools_from(subnet)) == {"cloud": {
        "cidr": "100.65.0.0/16", "gateway": "100.65.0.1",
        "exclude": ["100.65.0.1..100.65.0.20", "100.65.0.21..100.65.0.23", "100.65.0.40"],
    }}  # fmt: skip


async def test_a_project_is_built_on_kube_ovn_and_torn_down_in_kube_dc_order(
    kube_services: ServiceProcs, kube: KubeClient, client: Client
) -> None:
    org, project = "vpcbus-e2e", f"p{secrets.token_hex(3)}"
    n, key = f"{org}-{project}", f"{org}.{project}"
    spec = ProjectSpec(organization=org, name=project, cidr_block="10.250.0.0/24",
                       egress_network_type="cloud")  # fmt: skip
    names = {"Vpc": n, "Subnet": f"{n}-default", "OvnEip": f"{n}-{EXTERNAL_SUBNET}",
             "OvnSnatRule": n}  # fmt: skip
    # The backing namespace, as Kube-DC makes it before the network.
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": n, "labels": {"kube-dc.com/project": project}}}  # fmt: skip
    await kube.apply(namespace, field_manager=FIELD_MANAGER)
    watch = await client.watch(org, project)
    deleted = False
    try:
        created = await client.upsert(spec)
        statuses = await watch.until(at("Ready", created.generation), timeout=TIMEOUT,
                                     event_id=created.event_id)  # fmt: skip
        ipam = statuses["ipam"].addresses
        assert ipam is not None
        gateway = ipam.eip("default-gw")
        assert gateway is not None

        # What Kube-OVN made of it: each kind ready by its own rule.
        vpc = await kube.get(KOVN, "Vpc", names["Vpc"])
        assert vpc is not None and (vpc.get("status") or {}).get("standby") is True, vpc
        assert vpc["spec"]["namespaces"] == [n]
        assert EXTERNAL_SUBNET in (vpc["spec"].get("extraExternalSubnets") or [])
        route = {"cidr": "0.0.0.0/0", "nextHopIP": gateway.gateway, "policy": "policyDst"}
        assert route in (vpc["spec"].get("staticRoutes") or [])
        subnet = await kube.get(KOVN, "Subnet", names["Subnet"])
        assert subnet is not None and ready_condition(subnet), subnet
        assert subnet["spec"]["vpc"] == n and subnet["spec"]["cidrBlock"] == "10.250.0.0/24"
        eip = await kube.get(KOVN, "OvnEip", names["OvnEip"])
        assert eip is not None and (eip.get("status") or {}).get("ready") is True, eip
        assert eip["spec"]["externalSubnet"] == EXTERNAL_SUBNET
        assert eip["status"].get("v4Ip") == gateway.ip_address
        snat = await kube.get(KOVN, "OvnSnatRule", names["OvnSnatRule"])
        assert snat is not None and (snat.get("status") or {}).get("ready") is True, snat
        assert snat["spec"]["ovnEip"] == names["OvnEip"]
        assert snat["spec"]["vpcSubnet"] == names["Subnet"]
        nad = await kube.get(NAD_API, "NetworkAttachmentDefinition", "default", n)
        assert nad is not None and f'"provider":"default.{n}.ovn"' in nad["spec"]["config"], nad
        for obj, owner in (
            (vpc, "vpc"),
            (subnet, "vpc"),
            (eip, "vpc"),
            (snat, "nat"),
            (nad, "vpc"),
        ):
            assert obj["metadata"]["labels"]["vpcbus.io/project"] == key
            managers = {m.get("manager") for m in obj["metadata"].get("managedFields") or []}
            assert f"vpcbus-{owner}" in managers, obj["metadata"]

        # A FIP: its own OvnEip pinned to the address IPAM gave it and an OvnFip to
        # vpc + v4Ip, both made ready by Kube-OVN; a deleted FIP takes both with it.
        fip = FipSpec(organization=org, project=project, name="e2e", ip_address="10.250.0.50")
        await client.create_fip(fip)
        rule = await until_ready(kube, "OvnFip", f"{n}-fip-e2e")
        assert rule["spec"] == {"ovnEip": f"{n}-fip-e2e", "vpc": n, "v4Ip": "10.250.0.50"}
        own = await until_ready(kube, "OvnEip", f"{n}-fip-e2e")
        ipam_now = await client.status("ipam", org, project)
        bound = ipam_now.addresses.fip("e2e") if ipam_now and ipam_now.addresses else None
        assert bound is not None and own["status"].get("v4Ip") == bound.external_ip, own
        await client.delete_fip(FipRef(organization=org, project=project, name="e2e"))
        await until_gone(kube, "OvnFip", f"{n}-fip-e2e")
        await until_gone(kube, "OvnEip", f"{n}-fip-e2e")

        # Deletion: everything goes, in Kube-DC's order (each waits for the one before).
        since = {}
        for kind in names:
            _, since[kind] = await kube.list(KOVN, kind)
        seen: list[tuple[int, str, str]] = []
        watching = asyncio.create_task(deletions(kube, since, seen))
        try:
            gone = await client.delete(ProjectRef(organization=org, name=project))
            deleted = True
            await watch.until(at("Deleted", gone.generation), timeout=TIMEOUT,
                              event_id=gone.event_id)  # fmt: skip
            for kind, name in names.items():
                await until_gone(kube, kind, name)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        first: dict[tuple[str, str], int] = {}
        for rv, kind, name in sorted(seen):
            first.setdefault((kind, name), rv)
        order = [k for k, _ in sorted(first.items(), key=lambda item: item[1])
                 if k in set(names.items())]  # fmt: skip
        assert order == [("OvnSnatRule", names["OvnSnatRule"]), ("OvnEip", names["OvnEip"]),
                         ("Subnet", names["Subnet"]), ("Vpc", names["Vpc"])]  # fmt: skip
        for kind in names:
            left, _ = await kube.list(KOVN, kind, label_selector=f"vpcbus.io/project={key}")
            assert left == [], f"{kind} of ours left behind"
    finally:
        if not deleted:  # a failure before the deletion: clean up anyway
            with contextlib.suppress(Exception):
                gone = await client.delete(ProjectRef(organization=org, name=project))
                await watch.until(at("Deleted", gone.generation), timeout=TIMEOUT)
        await watch.stop()
        await kube.delete("v1", "Namespace", n)  # last, as in Kube-DC's e2e
