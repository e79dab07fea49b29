"""``vpcbus_runtime.kubeslice`` (``Slice``, ``SliceGroup``) against the fake API server with
the real client: a service's slice is found by its labels only, applied and pruned, torn
down in order, and audited (missing, drifted, extra, orphan) without writing; fields others
add are no drift."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import apiserver_fixture, kube_fixture, kubeconfig_fixture  # noqa: F401
from vpcbus_runtime.kube import KubeClient
from vpcbus_runtime.kubeslice import Slice, SliceGroup

pytestmark = [pytest.mark.connected]

API = "kubeovn.io/v1"
LABELS = {"app.kubernetes.io/managed-by": "vpcbus", "vpcbus.io/owner": "vpc"}


def obj(kind: str, name: str, key: str = "acme.shop", owner: str = "vpc", **spec: Any) -> Any:
    labels = {**LABELS, "vpcbus.io/owner": owner, "vpcbus.io/project": key}
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "labels": labels},
            "spec": spec}  # fmt: skip


def names(objects: list[Any]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


async def test_apply_prune_audit_and_teardown_touch_only_the_slice(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    s = Slice(kube, "vpc", API, ("Subnet", "Vpc"), labels=LABELS,
              project_label="vpcbus.io/project", field_manager="vpcbus-vpc")  # fmt: skip
    want = [obj("Vpc", "acme-shop", namespaces=["acme-shop"]), obj("Subnet", "acme-shop-default",
            cidrBlock="10.0.0.0/24")]  # fmt: skip
    await s.apply("acme.shop", want)
    await kube.apply(obj("Vpc", "other", owner="nat"), field_manager="vpcbus-nat")  # not ours
    await kube.apply(obj("Vpc", "globex-x", key="globex.x"), field_manager="vpcbus-vpc")
    assert await s.owned_keys() == ["acme.shop", "globex.x"]
    assert await s.audit("acme.shop", want) == []

    await kube.delete(API, "Subnet", "acme-shop-default")
    await kube.apply(obj("Vpc", "acme-shop", namespaces=["changed"]), field_manager="vpcbus-vpc")
    await kube.apply(obj("Subnet", "acme-shop-stale"), field_manager="vpcbus-vpc")
    found = {(f.kind, f.object) for f in await s.audit("acme.shop", want)}
    assert found == {("missing", "Subnet/acme-shop-default"), ("drifted", "Vpc/acme-shop"),
                     ("extra", "Subnet/acme-shop-stale")}  # fmt: skip
    assert await kube.get(API, "Subnet", "acme-shop-default") is None, "the audit wrote nothing"

    await s.apply("acme.shop", want)  # repairs and prunes
    assert await s.audit("acme.shop", want) == []
    assert names((await kube.list(API, "Subnet"))[0]) == ["acme-shop-default"]

    orphans = await s.audit("globex.x", None)
    assert [(f.kind, f.object) for f in orphans] == [("orphan", "Vpc/globex-x")]
    with apiserver.store.cond:
        mark = apiserver.store.rv
    result = await s.teardown("acme.shop")
    assert (result.state, result.reason) == ("Deleted", "TornDown")
    assert names((await kube.list(API, "Vpc"))[0]) == ["globex-x", "other"]
    with apiserver.store.cond:
        deleted = [e.key[3] for e in apiserver.store.events if e.rv > mark and e.type == "DELETED"]
    assert deleted == ["acme-shop-default", "acme-shop"], "the slice's order: Subnet, then Vpc"


async def test_fields_others_add_are_no_drift_but_a_changed_field_of_ours_is(
    kube: KubeClient,
) -> None:
    """Kube-OVN's controller writes defaults into specs we apply (a Subnet's ``enableLb``);
    under server-side apply those fields are not ours, so the audit does not call them drift."""
    s = Slice(kube, "vpc", API, ("Subnet",), labels=LABELS,
              project_label="vpcbus.io/project", field_manager="vpcbus-vpc")  # fmt: skip
    want = [obj("Subnet", "acme-shop-default", cidrBlock="10.0.0.0/24", excludeIps=["10.0.0.1"])]
    await s.apply("acme.shop", want)
    added = {"apiVersion": API, "kind": "Subnet", "metadata": {"name": "acme-shop-default"},
             "spec": {"enableLb": True, "gatewayType": "distributed"}}  # fmt: skip
    await kube.apply(added, field_manager="kube-ovn-controller")
    stored = await kube.get(API, "Subnet", "acme-shop-default")
    assert stored is not None and stored["spec"]["enableLb"] is True
    assert await s.audit("acme.shop", want) == []
    changed = {**added, "spec": {"excludeIps": ["10.0.0.1", "10.0.0.9"]}}
    await kube.apply(changed, field_manager="kube-ovn-controller", force=True)
    found = [(f.kind, f.object) for f in await s.audit("acme.shop", want)]
    assert found == [("drifted", "Subnet/acme-shop-default")]


async def test_a_slice_group_applies_the_last_part_first_and_tears_down_in_order(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    nad_api = "k8s.cni.cncf.io/v1"
    own = {**LABELS, "vpcbus.io/project": "acme.shop"}
    nad = {"apiVersion": nad_api, "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "default", "namespace": "acme-shop", "labels": own},
           "spec": {"config": "{}"}}  # fmt: skip
    kw: Any = {"labels": LABELS, "project_label": "vpcbus.io/project",
               "field_manager": "vpcbus-vpc"}  # fmt: skip
    group = SliceGroup((
        Slice(kube, "vpc", nad_api, ("NetworkAttachmentDefinition",), **kw),
        Slice(kube, "vpc", API, ("Subnet", "Vpc"), **kw),
    ))  # fmt: skip
    want = [nad, obj("Vpc", "acme-shop"), obj("Subnet", "acme-shop-default")]
    stored = (await group.apply("acme.shop", want)).stored
    assert [o["kind"] for o in stored] == ["Vpc", "Subnet", "NetworkAttachmentDefinition"]
    assert await group.owned_keys() == ["acme.shop"]
    assert await group.audit("acme.shop", want) == []
    orphans = {(f.kind, f.object) for f in await group.audit("acme.shop", None)}
    assert orphans == {
        ("orphan", "NetworkAttachmentDefinition/default"),
        ("orphan", "Vpc/acme-shop"),
        ("orphan", "Subnet/acme-shop-default"),
    }
    with apiserver.store.cond:
        mark = apiserver.store.rv
    result = await group.teardown("acme.shop")
    assert (result.state, result.reason) == ("Deleted", "TornDown")
    with apiserver.store.cond:
        deleted = [e.key[3] for e in apiserver.store.events if e.rv > mark and e.type == "DELETED"]
    assert deleted == ["default", "acme-shop-default", "acme-shop"]


async def test_a_pruned_object_still_terminating_holds_back_later_kinds(
    kube: KubeClient, apiserver: FakeApiServer
) -> None:
    """As Kube-OVN refuses to delete an OvnEip while a NAT rule still uses it, pruning goes
    kind by kind: a stale rule held by its finalizer keeps the stale OvnEip, and the outcome
    is Pending (not Ready, not an error) until it is gone."""
    s = Slice(kube, "nat", API, ("OvnFip", "OvnEip"), labels={**LABELS, "vpcbus.io/owner": "nat"},
              project_label="vpcbus.io/project", field_manager="vpcbus-nat")  # fmt: skip
    rule, eip = obj("OvnFip", "acme-shop-fip-db", owner="nat"), obj("OvnEip", "x", owner="nat")
    await s.apply("acme.shop", [eip, rule])
    finalizer = "kubeovn.io/kube-ovn-controller"
    held = {"apiVersion": API, "kind": "OvnFip",
            "metadata": {"name": "acme-shop-fip-db", "finalizers": [finalizer]}}  # fmt: skip
    await kube.apply(held, field_manager="kube-ovn-controller")

    applied = await s.apply("acme.shop", [])
    assert applied.terminating == ["OvnFip/acme-shop-fip-db"]
    assert await kube.get(API, "OvnEip", "x") is not None, "the OvnEip waits for its rule"
    result = s.outcome(applied, [], lambda _: None, "done")
    assert (result.state, result.reason) == ("Pending", "WaitingForDeletion")
    assert result.requeue_after is not None

    released = {**held, "metadata": {"name": "acme-shop-fip-db", "finalizers": []}}
    await kube.apply(released, field_manager="kube-ovn-controller")
    assert await kube.get(API, "OvnFip", "acme-shop-fip-db") is None
    applied = await s.apply("acme.shop", [])
    assert applied.terminating == [] and await kube.get(API, "OvnEip", "x") is None
    assert s.outcome(applied, [], lambda _: None, "done").state == "Ready"
