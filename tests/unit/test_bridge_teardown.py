"""The bridge's finalizer plan and the EIp objects of IPAM's own EIPs (pure mapping).
Snapshots are built by hand, with the helpers of :mod:`tests.unit.test_bridge_mapping`."""

from __future__ import annotations

from typing import Any

from tests.unit.test_bridge_mapping import obj, project, snap, status
from vpcbus_bridge.mapping import autoeips, events, members, objects, statuses, teardown
from vpcbus_bridge.mapping.objects import EIP, FIP, PROJECT, SERVICE
from vpcbus_proto import subjects
from vpcbus_proto.status import (
    AddressFacts,
    ExternalAddress,
    FloatingIp,
    LoadBalancer,
    MemberStatus,
    ServiceStatus,
)

FIN = objects.FINALIZER
GONE: dict[str, Any] = {"deletionTimestamp": "2026-01-02T03:04:05Z"}
OURS = {objects.OWNER_LABEL: objects.BRIDGE_OWNER, objects.PROJECT_LABEL: "acme.prod"}


def changes(plan: list[teardown.FinalizerChange]) -> set[tuple[str, str, bool]]:
    return {(c.watched.short, c.name, c.keep) for c in plan}


def deleted(key: str, family: str, generation: int, **ref: str) -> events.Published:
    return events.Published.model_validate(
        {"key": key, "family": family, "generation": generation, "fingerprint": "f",
         "uid": "u", "ref": ref, "deleted": True})  # fmt: skip


def address(name: str, ip: str = "100.65.0.9") -> ExternalAddress:
    return ExternalAddress(name=name, ip_address=ip, network="cloud", prefix_length=16,
                           gateway="100.65.0.1", ready=True, ownership_type="Shared")  # fmt: skip


def facts(*eips: str, **kw: Any) -> AddressFacts:
    return AddressFacts(cidr_block="10.0.0.0/24", egress_network_type="cloud",
                        gateway_ip="10.0.0.1", eips=[address(e) for e in eips], **kw)  # fmt: skip


# -- finalizers --------------------------------------------------------------------------


def test_the_finalizer_goes_on_projects_and_bridged_members_only() -> None:
    snapshot = snap(
        project(),
        (EIP, obj(EIP, "acme-prod", "web")),
        (EIP, obj(EIP, "acme-prod", "default-gw", {"childRef": "acme-prod-ext-cloud"})),
        (EIP, obj(EIP, "acme-prod", "fip-db-abcde", labels=OURS)),
        (FIP, obj(FIP, "acme-prod", "db", {"ipAddress": "10.0.0.9"})),
        (EIP, obj(EIP, "elsewhere", "stray")),
        (EIP, obj(EIP, "acme-prod", "done", finalizers=[FIN])),
    )
    plan = teardown.plan(snapshot, {}, {}, removals=True)
    assert changes(plan) == {("project", "prod", True), ("eip", "web", True), ("fip", "db", True)}
    add = next(c for c in plan if c.name == "web").manifest()
    assert add["metadata"] == {"name": "web", "namespace": "acme-prod", "uid": "uid-acme-prod-web",
                               "finalizers": [FIN]}  # fmt: skip


def test_a_deleted_project_keeps_its_finalizer_until_every_service_says_deleted() -> None:
    snapshot = snap(project(finalizers=[FIN], **GONE))
    gone = {"project.acme.prod": deleted("project.acme.prod", "project", 10,
                                         organization="acme", name="prod")}  # fmt: skip

    def plan(nat: ServiceStatus | None, **kw: Any) -> set[tuple[str, str, bool]]:
        sts: dict[str, ServiceStatus] = {
            s: status(s, "Deleted", 10) for s in subjects.SERVICES if s != "nat"
        }
        if nat is not None:
            sts["nat"] = nat
        args = {"snapshot": snapshot, "published": gone, "removals": True, **kw}
        return changes(teardown.plan(statuses={"acme.prod": sts}, **args))

    remove = {("project", "prod", False)}
    assert plan(status("nat", "Ready", 3)) == set()
    assert plan(status("nat", "Deleted", 9)) == set()  # an older deletion's
    assert plan(status("nat", "Deleted", 10)) == remove
    assert plan(None) == remove  # never reported, or purged after its tombstone
    assert plan(status("nat", "Deleted", 10), removals=False) == set()
    assert plan(status("nat", "Deleted", 10), published={}) == remove  # never published
    alive = {"project.acme.prod": gone["project.acme.prod"].model_copy(update={"deleted": False})}
    assert plan(status("nat", "Deleted", 10), published=alive) == set()
    left = snap(project(finalizers=[FIN], **GONE), (EIP, obj(EIP, "acme-prod", "x", labels=OURS)))
    assert plan(status("nat", "Deleted", 10), snapshot=left) == set()  # its EIps go first


def test_a_deleted_eip_waits_until_ipam_has_released_it_even_without_its_project() -> None:
    snapshot = snap((EIP, obj(EIP, "acme-prod", "web", finalizers=[FIN], **GONE)))
    key = "member.acme.prod.eip.web"
    gone = {key: deleted(key, "eip", 12, organization="acme", project="prod", name="web")}

    def plan(member: str | None, generation: int, *eips: str) -> set[tuple[str, str, bool]]:
        raw = {"member": "eip.web", "generation": generation, "state": member, "reason": "R"}
        states = [MemberStatus.model_validate(raw)] if member else []
        ipam = status("ipam", addresses=facts(*eips), members=states)
        return changes(teardown.plan(snapshot, {"acme.prod": {"ipam": ipam}}, gone, removals=True))

    assert plan("Ready", 11, "web") == set()
    assert plan("Deleted", 12, "web") == set()  # the address is still reported
    assert plan("Deleted", 11) == set()
    assert plan("Deleted", 12) == {("eip", "web", False)}
    assert plan(None, 0) == {("eip", "web", False)}  # forgotten after its tombstone


# -- IPAM's own EIPs ---------------------------------------------------------------------


def test_ipams_own_eips_become_eip_objects_that_are_never_published_back() -> None:
    lb = {"type": "LoadBalancer", "ports": [{"port": 80}]}
    items = [
        project(),
        (EIP, obj(EIP, "acme-prod", "web", {"externalNetworkType": "cloud"})),
        (
            FIP,
            obj(FIP, "acme-prod", "db", {"ipAddress": "10.0.0.9", "externalNetworkType": "cloud"}),
        ),
        (FIP, obj(FIP, "acme-prod", "ssh", {"ipAddress": "10.0.0.8", "eip": "web"})),
        (SERVICE, obj(SERVICE, "acme-prod", "shop", lb)),
    ]
    ipam = status("ipam", addresses=facts(
        "default-gw", "web", "fip-db-abcde", "slb-shop-12345", "fip-gone-xxxxx",
        fips=[FloatingIp(name="db", eip="fip-db-abcde", ready=True),
              FloatingIp(name="ssh", eip="web", ready=True),
              FloatingIp(name="gone", eip="fip-gone-xxxxx", ready=True)],
        services=[LoadBalancer(name="shop", eip="slb-shop-12345", ready=True)],
    ))  # fmt: skip
    sts = {"acme.prod": {"ipam": ipam}}
    plan = autoeips.plan(snap(*items), sts, deletions=True)
    made = {m["metadata"]["name"]: m for m in plan.apply}
    assert set(made) == {"default-gw", "fip-db-abcde", "slb-shop-12345"}  # not the user's web
    assert plan.delete == []
    assert made["default-gw"]["spec"] == {"childRef": "acme-prod-ext-cloud"}
    assert "ownerReferences" not in made["default-gw"]["metadata"]
    fip = made["fip-db-abcde"]
    assert fip["spec"] == {"externalNetworkType": "cloud"}
    assert fip["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "vpcbus", **OURS}  # fmt: skip
    assert fip["metadata"]["ownerReferences"] == [{"apiVersion": "kube-dc.com/v1", "kind": "FIp",
        "name": "db", "uid": "uid-acme-prod-db", "controller": True}]  # fmt: skip
    slb = made["slb-shop-12345"]["metadata"]["ownerReferences"]
    assert [(r["kind"], r["name"]) for r in slb] == [("Service", "shop")]

    # Written and watched back: nothing more to apply, nothing published for them, and their
    # status says they go with their owner.
    written = [(EIP, obj(EIP, "acme-prod", n, m["spec"], labels=m["metadata"]["labels"]))
               for n, m in made.items()]  # fmt: skip
    snapshot = snap(*items, *written)
    assert autoeips.plan(snapshot, sts, deletions=True) == autoeips.Plan([], [])
    wanted, _ = members.desired(snapshot)
    assert sorted(k for k in wanted if ".eip." in k) == ["member.acme.prod.eip.web"]
    found = statuses.status_patches(snapshot, sts, {}, [], "2026-01-02T03:04:05Z")
    shown = {p.name: p.status for p in found if p.watched is EIP}
    assert shown["fip-db-abcde"]["deleteReleased"] is True
    assert shown["fip-db-abcde"]["ipAddress"] == "100.65.0.9"
    assert shown["fip-db-abcde"]["ovnEIpRef"] == "acme-prod-fip-db"  # as the NAT backend names it
    assert shown["slb-shop-12345"]["ovnEIpRef"] == "acme-prod-slb-shop"
    assert shown["default-gw"]["ovnEIpRef"] == "acme-prod-ext-cloud"
    assert "deleteReleased" not in shown["default-gw"] and "deleteReleased" not in shown["web"]

    # IPAM stops reporting the FIP's EIP: it is deleted (only once statuses are all read).
    released = status("ipam", addresses=facts("default-gw", "web", "slb-shop-12345",
        services=[LoadBalancer(name="shop", eip="slb-shop-12345", ready=True)]))  # fmt: skip
    later = {"acme.prod": {"ipam": released}}
    assert autoeips.plan(snapshot, later, deletions=True).delete == [("acme-prod", "fip-db-abcde")]
    assert autoeips.plan(snapshot, later, deletions=False).delete == []
    assert autoeips.plan(snapshot, {}, deletions=True).delete == []  # IPAM not heard yet


def test_a_kube_dc_default_gw_is_left_alone_and_a_gone_projects_eips_wait_for_ipam() -> None:
    theirs = (EIP, obj(EIP, "acme-prod", "default-gw", {"childRef": "acme-prod-ext-cloud"}))
    sts = {"acme.prod": {"ipam": status("ipam", addresses=facts("default-gw"))}}
    assert autoeips.plan(snap(project(), theirs), sts, deletions=True) == autoeips.Plan([], [])

    ours = (EIP, obj(EIP, "acme-prod", "default-gw", {"childRef": "acme-prod-ext-cloud"},
                     labels=OURS))  # fmt: skip
    dying = snap((PROJECT, project(**GONE)[1]), ours)
    assert autoeips.plan(dying, sts, deletions=True).delete == []  # IPAM still holds it
    done = {"acme.prod": {"ipam": status("ipam", "Deleted", 10)}}
    assert autoeips.plan(dying, done, deletions=True).delete == [("acme-prod", "default-gw")]
    assert autoeips.plan(dying, {}, deletions=True).delete == [("acme-prod", "default-gw")]
