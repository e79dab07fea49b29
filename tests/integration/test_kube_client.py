"""KubeClient (the real ``kubernetes`` client underneath) against the fake API server in the
test process: server-side apply, status, get, list, delete and watch, asserted on the
server's state, and every failure arriving as one of our two error types."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import apiserver_fixture, kube_fixture, kubeconfig_fixture  # noqa: F401
from vpcbus_runtime.errors import PermanentError, TemporaryError
from vpcbus_runtime.kube import KubeClient, ResourceExpiredError

pytestmark = [pytest.mark.connected]

KDC = "kube-dc.com/v1"
MANAGER = "vpcbus-test"


def project(name: str, ns: str = "acme", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": KDC,
        "kind": "Project",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"cidrBlock": "10.0.0.0/24", "egressNetworkType": "cloud", **spec},
    }


async def test_apply_creates_then_merges_per_field_manager(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    created = await kube.apply(project("prod", gwLanIp="10.0.0.1"), field_manager=MANAGER)
    stored = apiserver.object(KDC, "projects", "prod", "acme")
    assert stored == created
    assert stored["spec"]["gwLanIp"] == "10.0.0.1"
    assert stored["metadata"]["generation"] == 1

    again = await kube.apply(project("prod", gwLanIp="10.0.0.1"), field_manager=MANAGER)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    # A second manager adds a label; the first one's fields stay.
    labelled = project("prod")
    labelled["metadata"]["labels"] = {"team": "net"}
    del labelled["spec"]
    await kube.apply(labelled, field_manager="other")
    stored = apiserver.object(KDC, "projects", "prod", "acme")
    assert stored is not None
    assert stored["metadata"]["labels"] == {"team": "net"}
    assert stored["spec"]["gwLanIp"] == "10.0.0.1"
    assert stored["metadata"]["generation"] == 1  # a label is not a spec change
    assert {f["manager"] for f in stored["metadata"]["managedFields"]} == {MANAGER, "other"}

    # The first manager stops applying gwLanIp and changes the CIDR: both take effect.
    await kube.apply(project("prod", cidrBlock="10.1.0.0/24"), field_manager=MANAGER)
    stored = apiserver.object(KDC, "projects", "prod", "acme")
    assert stored is not None
    assert stored["spec"] == {"cidrBlock": "10.1.0.0/24", "egressNetworkType": "cloud"}
    assert stored["metadata"]["generation"] == 2
    assert stored["metadata"]["labels"] == {"team": "net"}


async def test_apply_status_writes_only_the_status(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    with pytest.raises(PermanentError) as missing:
        await kube.apply_status({**project("prod"), "status": {"ready": True}}, field_manager="b")
    assert missing.value.reason == "NotFound"

    await kube.apply(project("prod"), field_manager=MANAGER)
    changed = project("prod", cidrBlock="192.168.0.0/24")  # ignored on the status subresource
    result = await kube.apply_status({**changed, "status": {"ready": True}}, field_manager="b")
    stored = apiserver.object(KDC, "projects", "prod", "acme")
    assert stored == result
    assert stored["status"] == {"ready": True}
    assert stored["spec"]["cidrBlock"] == "10.0.0.0/24"
    assert stored["metadata"]["generation"] == 1

    # A spec apply leaves the status alone.
    await kube.apply({**project("prod"), "status": {"ready": False}}, field_manager=MANAGER)
    assert apiserver.object(KDC, "projects", "prod", "acme")["status"] == {"ready": True}  # type: ignore[index]


async def test_get_and_list_with_a_label_selector(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    for name, ns, tier in (("a", "acme", "web"), ("b", "acme", "db"), ("c", "beta", "web")):
        obj = project(name, ns)
        obj["metadata"]["labels"] = {"tier": tier}
        await kube.apply(obj, field_manager=MANAGER)
    await kube.apply(project("d", "beta"), field_manager=MANAGER)

    everything, version = await kube.list(KDC, "Project")
    assert sorted(o["metadata"]["name"] for o in everything) == ["a", "b", "c", "d"]
    assert version == str(apiserver.resource_version)

    async def names(namespace: str | None = None, selector: str | None = None) -> list[str]:
        items, _ = await kube.list(KDC, "Project", namespace, label_selector=selector)
        return sorted(o["metadata"]["name"] for o in items)

    assert await names("acme") == ["a", "b"]
    assert await names(selector="tier=web") == ["a", "c"]
    assert await names(selector="tier!=web") == ["b", "d"]
    assert await names(selector="tier") == ["a", "b", "c"]
    assert await names(selector="!tier") == ["d"]
    assert await names("beta", "tier in (web,db)") == ["c"]

    found = await kube.get(KDC, "Project", "c", "beta")
    assert found is not None and found["metadata"]["labels"] == {"tier": "web"}
    assert await kube.get(KDC, "Project", "c", "acme") is None
    # Cluster-scoped kinds go to the cluster path.
    await kube.apply(
        {"apiVersion": "kubeovn.io/v1", "kind": "Vpc", "metadata": {"name": "acme-prod"}},
        field_manager=MANAGER,
    )
    assert apiserver.object("kubeovn.io/v1", "vpcs", "acme-prod") is not None
    assert await kube.get("kubeovn.io/v1", "Vpc", "acme-prod") is not None


async def test_delete_twice_is_gone_then_already_gone(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    await kube.apply(project("prod"), field_manager=MANAGER)
    assert await kube.delete(KDC, "Project", "prod", "acme") is True
    assert apiserver.object(KDC, "projects", "prod", "acme") is None
    assert await kube.delete(KDC, "Project", "prod", "acme") is False


async def collect(kube: KubeClient, into: list[tuple[str, dict[str, Any]]], **kw: Any) -> None:
    async with contextlib.aclosing(kube.watch(KDC, "Project", **kw)) as changes:
        async for change in changes:
            into.append(change)


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


async def test_watch_sees_added_modified_deleted_in_order(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    await kube.apply(project("old"), field_manager=MANAGER)
    _, version = await kube.list(KDC, "Project")
    seen: list[tuple[str, dict[str, Any]]] = []
    watcher = asyncio.create_task(collect(kube, seen, resource_version=version))
    await kube.apply(project("prod"), field_manager=MANAGER)
    await kube.apply(project("prod", cidrBlock="10.9.0.0/24"), field_manager=MANAGER)
    await kube.delete(KDC, "Project", "prod", "acme")
    await until(lambda: len(seen) == 3)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher

    assert [(t, o["metadata"]["name"]) for t, o in seen] == [
        ("ADDED", "prod"), ("MODIFIED", "prod"), ("DELETED", "prod"),
    ]  # fmt: skip
    assert seen[1][1]["spec"]["cidrBlock"] == "10.9.0.0/24"
    versions = [int(o["metadata"]["resourceVersion"]) for _, o in seen]
    assert versions == sorted(versions) and len(set(versions)) == 3

    # Without a resourceVersion the current objects come first; the server ends the watch
    # with a bookmark of where it got to.
    fresh: list[tuple[str, dict[str, Any]]] = []
    await collect(kube, fresh, timeout_seconds=1)
    assert [(t, o["metadata"].get("name")) for t, o in fresh] == [
        ("ADDED", "old"),
        ("BOOKMARK", None),
    ]
    assert fresh[-1][1]["metadata"]["resourceVersion"] == str(apiserver.resource_version)


async def test_watch_from_a_compacted_version_is_expired_and_a_relist_recovers(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    first = await kube.apply(project("a"), field_manager=MANAGER)
    await kube.apply(project("b"), field_manager=MANAGER)
    apiserver.compact()
    with pytest.raises(ResourceExpiredError) as expired:
        await collect(kube, [], resource_version=first["metadata"]["resourceVersion"])
    assert isinstance(expired.value, TemporaryError) and expired.value.reason == "Expired"

    items, version = await kube.list(KDC, "Project")
    assert len(items) == 2
    seen: list[tuple[str, dict[str, Any]]] = []
    watcher = asyncio.create_task(collect(kube, seen, resource_version=version))
    await kube.delete(KDC, "Project", "a", "acme")
    await until(lambda: seen == [("DELETED", seen[0][1])] if seen else False)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (503, TemporaryError, "KubeServerError"),
        (500, TemporaryError, "KubeServerError"),
        (409, TemporaryError, "Conflict"),
        (429, TemporaryError, "TooManyRequests"),
        (410, ResourceExpiredError, "Expired"),
        (422, PermanentError, "Invalid"),
        (403, PermanentError, "Forbidden"),
        (400, PermanentError, "BadRequest"),
    ],
)
async def test_http_failures_arrive_as_typed_errors(
    kube: KubeClient, apiserver: FakeApiServer, status: int, error: type[Exception], reason: str
) -> None:
    apiserver.fail_next(status)
    with pytest.raises(error) as caught:
        await kube.apply(project("prod"), field_manager=MANAGER)
    assert caught.value.reason == reason  # type: ignore[attr-defined]
    assert apiserver.object(KDC, "projects", "prod", "acme") is None
    await kube.apply(project("prod"), field_manager=MANAGER)  # the next request is fine
    assert apiserver.object(KDC, "projects", "prod", "acme") is not None


async def test_bad_credentials_unknown_kinds_and_no_server_are_typed(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    path = apiserver.write_kubeconfig(tmp_path / "wrong", token="another-token")
    client = KubeClient.from_config(str(path))
    with pytest.raises(PermanentError) as refused:
        await client.get(KDC, "Project", "prod", "acme")
    assert refused.value.reason == "Unauthorized"
    with pytest.raises(PermanentError) as unknown:
        await client.get("apps/v1", "Deployment", "x", "acme")
    assert unknown.value.reason == "UnknownKind"
    with pytest.raises(PermanentError) as homeless:
        await client.delete(KDC, "Project", "prod")  # a namespaced kind needs its namespace
    assert homeless.value.reason == "Invalid"
    await client.close()

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path.write_text(path.read_text().replace(apiserver.url, f"http://127.0.0.1:{port}"))
    nowhere = KubeClient.from_config(str(path))
    with pytest.raises(TemporaryError) as unreachable:
        await nowhere.list(KDC, "Project")
    assert unreachable.value.reason == "KubeUnreachable"
    await nowhere.close()
    with pytest.raises(PermanentError) as no_config:
        KubeClient.from_config(str(tmp_path / "absent"))
    assert no_config.value.reason == "NoKubeConfig"
