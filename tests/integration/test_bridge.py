"""The Kubernetes bridge end to end: the fake API server in the test process, a real
nats-server, the four services and the bridge as real processes (``python -m
vpcbus_bridge``). A Kube-DC Project in the API becomes a Ready project on the bus and
``status.ready`` back in Kubernetes; an EIp gets its address; a restarted bridge resumes from
its resourceVersions without republishing; a 410 makes it list again; deleting the Project
publishes ``project.deleted``.

Tests share one stack and one bridge (module fixtures) and run in file order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcs
from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import (  # noqa: F401
    kube_fixture,
    module_apiserver_fixture,
    module_kubeconfig_fixture,
)
from vpcbus.client import Client, deleted_at, ready_at
from vpcbus.embedded import commands, procs
from vpcbus_proto import subjects
from vpcbus_runtime.kube import KubeClient

pytestmark = [pytest.mark.connected]

KDC = "kube-dc.com/v1"
KUBE_DC = "kube-dc-test"  # the field manager standing in for Kube-DC's users


class BridgeProc:
    """The bridge as a process; each run logs to its own file."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = env, logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                commands.bridge_argv(python=sys.executable), env=self.env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self) -> None:
        procs.stop_child(self.proc, timeout=15)
        assert self.proc is not None and self.proc.returncode == 0, self.lines()

    @property
    def log(self) -> Path:
        return self.logdir / f"bridge-{self.runs}.log"

    def lines(self) -> list[dict[str, Any]]:
        """This run's log lines (JSON), skipping anything else."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def said(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]


@pytest.fixture(scope="module")
def bridge(
    services: ServiceProcs, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeProc]:
    proc = BridgeProc({**services.env, "KUBECONFIG": str(kubeconfig)}, tmp_path_factory.mktemp("b"))
    proc.start()
    yield proc
    procs.stop_child(proc.proc)


async def until(
    check: Callable[[], Any], what: str, bridge: BridgeProc, timeout: float = 45.0
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the bridge's log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := check()):
        if loop.time() > deadline:
            tail = "\n".join(bridge.log.read_text(errors="replace").splitlines()[-30:])
            pytest.fail(f"timed out waiting for {what}\n--- bridge log\n{tail}")
        await asyncio.sleep(0.1)
    return found


def ready_condition(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready" and c["status"] == "True"), None)


async def stored_events(client: Client, after: int) -> list[tuple[str, dict[str, Any]]]:
    """(subject, body) of every event the events stream stored after sequence ``after``;
    each was published with its event id as ``Nats-Msg-Id`` (JetStream's dedupe key)."""
    info = await client.js.stream_info(subjects.EVENTS_STREAM)
    out = []
    for seq in range(after + 1, info.state.last_seq + 1):
        msg = await client.js.get_msg(subjects.EVENTS_STREAM, seq)
        body = json.loads(msg.data or b"{}")
        assert (msg.headers or {}).get("Nats-Msg-Id") == body["id"]
        out.append((msg.subject or "", body))
    return out


async def last_seq(client: Client) -> int:
    return (await client.js.stream_info(subjects.EVENTS_STREAM)).state.last_seq


def eip(name: str, **spec: str) -> dict[str, Any]:
    return {"apiVersion": KDC, "kind": "EIp", "metadata": {"name": name, "namespace": "acme-prod"},
            "spec": spec}  # fmt: skip


async def test_a_kube_dc_project_becomes_ready_and_says_so(
    bridge: BridgeProc, apiserver: FakeApiServer, kube: KubeClient, client: Client
) -> None:
    start = await last_seq(client)
    project = {
        "apiVersion": KDC, "kind": "Project", "metadata": {"name": "prod", "namespace": "acme"},
        "spec": {"cidrBlock": "10.0.0.0/24", "egressNetworkType": "cloud"},
    }  # fmt: skip
    created = await kube.apply(project, field_manager=KUBE_DC)
    # Kube-DC's own default-gw EIp wraps the project's gateway OvnEip (childRef).
    await kube.apply(eip("default-gw", childRef="acme-prod-ext-cloud"), field_manager=KUBE_DC)

    def ready() -> dict[str, Any] | None:
        obj = apiserver.object(KDC, "projects", "prod", "acme")
        return obj if obj and (obj.get("status") or {}).get("ready") is True else None

    obj = await until(ready, "Project status.ready", bridge)
    assert obj["status"]["namespace"] == "acme-prod"
    condition = ready_condition(obj)
    assert condition is not None and condition["reason"] == "Reconciled"
    assert condition["observedGeneration"] == 1

    # The bridge's finalizer went on first, so deleting it waits for the teardown.
    assert obj["metadata"]["finalizers"] == ["network.vpcbus.io/teardown"]
    # What was published: one project.created carrying the object's resourceVersion (the
    # one the finalizer's write gave it).
    published = await stored_events(client, start)
    assert [s for s, _ in published] == [subjects.PROJECT_CREATED]
    body = published[0][1]
    assert body["source"] == "/vpcbus/kube-bridge"
    created_rv, now_rv = (
        int(created["metadata"]["resourceVersion"]),
        int(obj["metadata"]["resourceVersion"]),
    )
    assert created_rv < body["generation"] < now_rv
    assert body["data"] == {"organization": "acme", "name": "prod", "cidrBlock": "10.0.0.0/24",
                            "egressNetworkType": "cloud"}  # fmt: skip
    statuses = await client.statuses("acme", "prod")
    assert ready_at(body["generation"])(statuses)

    # The gateway EIp shows IPAM's default-gw address.
    gateway = statuses["ipam"].addresses.eip("default-gw")  # type: ignore[union-attr]
    assert gateway is not None
    gw = await until(
        lambda: (
            ready_condition(apiserver.object(KDC, "eips", "default-gw", "acme-prod"))
            and apiserver.object(KDC, "eips", "default-gw", "acme-prod")
        ),
        "default-gw status",
        bridge,
    )
    assert gw["status"]["ipAddress"] == gateway.ip_address
    assert gw["status"]["ownershipType"] == "Shared"
    assert gw["status"]["ovnEIpRef"] == "acme-prod-ext-cloud"
    assert {"type": "Snat", "ownerRef": "acme-prod"} in gw["status"]["owners"]


async def test_an_eip_gets_its_address(
    bridge: BridgeProc, apiserver: FakeApiServer, kube: KubeClient, client: Client
) -> None:
    await kube.apply(eip("ingress", externalNetworkType="cloud"), field_manager=KUBE_DC)
    obj = await until(
        lambda: (
            ready_condition(apiserver.object(KDC, "eips", "ingress", "acme-prod"))
            and apiserver.object(KDC, "eips", "ingress", "acme-prod")
        ),
        "EIp ingress ready",
        bridge,
    )
    ipam = (await client.statuses("acme", "prod"))["ipam"].addresses
    assert ipam is not None
    allocated = ipam.eip("ingress")
    assert allocated is not None and allocated.ready
    assert obj["status"]["ipAddress"] == allocated.ip_address
    assert obj["status"]["ipAddress"].startswith("100.65.")
    assert obj["status"]["ownershipType"] == "Released"
    assert obj["status"]["ovnEIpRef"] == "acme-prod-eip-ingress"


async def test_a_restarted_bridge_resumes_and_publishes_only_what_changed(
    bridge: BridgeProc, apiserver: FakeApiServer, kube: KubeClient, client: Client
) -> None:
    bridge.stop()
    before = await last_seq(client)
    await kube.apply(eip("later"), field_manager=KUBE_DC)  # a change while it is away
    bridge.start()
    await until(
        lambda: ready_condition(apiserver.object(KDC, "eips", "later", "acme-prod")),
        "EIp later ready",
        bridge,
    )
    # It resumed from its resourceVersions (no list), and published that one change only.
    assert bridge.said("listed") == []
    assert [line["subject"] for line in bridge.said("published")] == [subjects.EIP_CREATED]
    stored = await stored_events(client, before)
    assert [(s, b["data"]["name"]) for s, b in stored] == [(subjects.EIP_CREATED, "later")]


async def test_a_410_makes_it_list_again_and_catch_up(
    bridge: BridgeProc, apiserver: FakeApiServer, kube: KubeClient, client: Client
) -> None:
    bridge.stop()
    before = await last_seq(client)
    assert await kube.delete(KDC, "EIp", "later", "acme-prod")
    apiserver.compact()  # the bridge's resourceVersions are now too old
    bridge.start()

    def gone() -> bool:
        return bool(bridge.said("published"))

    await until(gone, "eip.deleted after the relist", bridge)
    assert {line["kind"] for line in bridge.said("watch expired, listing again")} >= {"EIp"}
    stored = await stored_events(client, before)
    assert [(s, b["data"]["name"]) for s, b in stored] == [(subjects.EIP_DELETED, "later")]

    watch = await client.watch("acme", "prod")
    try:
        await watch.until(
            lambda st: (
                "ipam" in st
                and st["ipam"].addresses is not None
                and st["ipam"].addresses.eip("later") is None
            ),
            timeout=30,
        )
    finally:
        await watch.stop()


async def test_deleting_the_project_publishes_project_deleted(
    bridge: BridgeProc, apiserver: FakeApiServer, kube: KubeClient, client: Client
) -> None:
    before = await last_seq(client)
    watch = await client.watch("acme", "prod")
    try:
        assert await kube.delete(KDC, "Project", "prod", "acme")

        async def deletion() -> list[tuple[str, dict[str, Any]]]:
            found = await stored_events(client, before)
            return [e for e in found if e[0] == subjects.PROJECT_DELETED]

        async with asyncio.timeout(30):
            while True:
                if deleted := await deletion():
                    break
                await asyncio.sleep(0.1)
        assert len(deleted) == 1, bridge.log.read_text()
        assert deleted[0][1]["data"] == {"organization": "acme", "name": "prod"}
        await watch.until(deleted_at(deleted[0][1]["generation"]), timeout=30)
    finally:
        await watch.stop()
    # The members went first, then the project.
    stored = [s for s, _ in await stored_events(client, before)]
    assert stored == [subjects.EIP_DELETED, subjects.PROJECT_DELETED]
