"""The bridge's pure mapping: Kube-DC objects -> desired events -> what to publish, and the
services' statuses -> the objects' ``status``. Snapshots are built by hand (the mapping
reads slimmed objects); a hypothesis test drives plan() through random histories."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vpcbus_bridge.mapping import events, members, objects, statuses
from vpcbus_bridge.mapping.objects import EIP, FIP, POD, PROJECT, SERVICE, VMI, Watched
from vpcbus_bridge.mapping.progress import Behind, behind
from vpcbus_proto import subjects
from vpcbus_proto.members import FipSpec, LbServiceSpec, WorkloadSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import (
    AddressFacts,
    ExternalAddress,
    FloatingIp,
    LoadBalancer,
    MemberStatus,
    ServiceStatus,
)

NOW = "2026-01-02T03:04:05Z"
_rv = itertools.count(100)


def obj(
    watched: Watched,
    ns: str,
    name: str,
    spec: dict[str, Any] | None = None,
    *,
    status: dict[str, Any] | None = None,
    rv: int | None = None,
    **meta: Any,
) -> dict[str, Any]:
    raw = {
        "apiVersion": watched.api_version,
        "kind": watched.kind,
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{ns}-{name}",
            "resourceVersion": str(rv if rv is not None else next(_rv)),
            **meta,
        },
        "spec": spec or {},
        "status": status or {},
    }
    return objects.slim(watched, raw)


def snap(*items: tuple[Watched, dict[str, Any]]) -> dict[str, dict[tuple[str, str], Any]]:
    out: dict[str, dict[tuple[str, str], Any]] = {w.short: {} for w in objects.WATCHED}
    for watched, o in items:
        out[watched.short][(o["metadata"]["namespace"], o["metadata"]["name"])] = o
    return out


def project(org: str = "acme", name: str = "prod", cidr: str = "10.0.0.0/24", **kw: Any) -> Any:
    return PROJECT, obj(PROJECT, org, name, {"cidrBlock": cidr, "egressNetworkType": "cloud"}, **kw)


def pod(name: str, ip: str | None = "10.0.0.5", phase: str = "Running", **kw: Any) -> Any:
    status = {"phase": phase, **({"podIP": ip} if ip else {})}
    return POD, obj(POD, "acme-prod", name, status=status, **kw)


# -- objects -> desired events -----------------------------------------------------------


def test_a_project_maps_to_its_spec_with_the_allowlist_annotation() -> None:
    notes = {objects.EGRESS_ALLOWLIST: "10.8.0.0/24, 192.0.2.10", "other.io/x": "dropped"}
    _, p = project(annotations=notes, rv=7)
    wanted, problems = members.desired(snap((PROJECT, p)))
    assert problems == []
    d = wanted["project.acme.prod"]
    assert d.family == "project" and d.revision == 7 and d.uid == "uid-acme-prod"
    assert d.data == ProjectSpec(
        organization="acme",
        name="prod",
        cidr_block="10.0.0.0/24",
        egress_network_type="cloud",
        egress_allowlist=["10.8.0.0/24", "192.0.2.10/32"],
    )
    assert "other.io/x" not in p["metadata"]["annotations"]  # slim keeps only what it reads


def test_members_count_only_in_the_backing_namespace_of_a_live_project() -> None:
    eip = (EIP, obj(EIP, "acme-prod", "ingress", {"externalNetworkType": "cloud"}))
    stray = (EIP, obj(EIP, "other-ns", "x"))
    wanted, _ = members.desired(snap(project(), eip, stray))
    assert set(wanted) == {"project.acme.prod", "member.acme.prod.eip.ingress"}
    assert wanted["member.acme.prod.eip.ingress"].data.model_dump(exclude_none=True) == {
        "organization": "acme",
        "project": "prod",
        "name": "ingress",
        "external_network_type": "cloud",
    }

    going = project(deletionTimestamp="2026-01-01T00:00:00Z")
    assert members.desired(snap(going, eip))[0] == {}


def test_the_gateway_eip_is_reported_never_published() -> None:
    gw = (EIP, obj(EIP, "acme-prod", "default-gw", {"childRef": "acme-prod-ext-cloud"}))
    named = (EIP, obj(EIP, "acme-prod", "default-gw"))
    assert set(members.desired(snap(project(), gw))[0]) == {"project.acme.prod"}
    assert set(members.desired(snap(project(), named))[0]) == {"project.acme.prod"}


def test_a_fip_to_a_vm_defaults_to_its_first_interface() -> None:
    vmi = (
        VMI,
        obj(
            VMI,
            "acme-prod",
            "db",
            {"domain": {"devices": {"interfaces": [{"name": "vpc_net_0"}, {"name": "second"}]}}},
            status={"phase": "Running"},
        ),
    )
    fip = (FIP, obj(FIP, "acme-prod", "ssh", {"vmTarget": {"vmName": "db"}}))
    wanted, _ = members.desired(snap(project(), vmi, fip))
    data = wanted["member.acme.prod.fip.ssh"].data
    assert isinstance(data, FipSpec) and data.vm_target is not None
    assert data.vm_target.holder == "vm/db/vpc-net-0"
    # Without the VMI the proto default applies; an explicit interface is kept.
    alone = members.desired(snap(project(), fip))[0]["member.acme.prod.fip.ssh"].data
    assert isinstance(alone, FipSpec) and alone.vm_target is not None
    assert alone.vm_target.interface_name is None
    spec = {"vmTarget": {"vmName": "db", "interfaceName": "second"}}
    named = (FIP, obj(FIP, "acme-prod", "ssh", spec))
    chosen = members.desired(snap(project(), vmi, named))[0]["member.acme.prod.fip.ssh"].data
    assert isinstance(chosen, FipSpec) and chosen.vm_target is not None
    assert chosen.vm_target.holder == "vm/db/second"


def test_an_invalid_object_is_a_problem_not_a_removal() -> None:
    bad = (
        FIP,
        obj(FIP, "acme-prod", "both", {"ipAddress": "10.0.0.9", "vmTarget": {"vmName": "x"}}),
    )
    wanted, problems = members.desired(snap(project(cidr="10.0.0.0/33"), bad))
    assert wanted == {}
    assert {(p.short, p.key) for p in problems} == {
        ("project", "project.acme.prod"),
        ("fip", "member.acme.prod.fip.both"),
    }
    assert any(
        "ipAddress and vmTarget cannot be set at the same time" in p.message for p in problems
    )


def test_a_load_balancer_takes_kube_dc_annotations_and_the_running_pods_it_selects() -> None:
    svc = (
        SERVICE,
        obj(
            SERVICE,
            "acme-prod",
            "web",
            {
                "type": "LoadBalancer",
                "selector": {"app": "web"},
                "ports": [
                    {"port": 80, "targetPort": 8080},
                    {"port": 53, "targetPort": "5353", "protocol": "UDP"},
                ],
            },
            rv=10,
            annotations={objects.BIND_EIP: "ingress"},
        ),
    )
    a = pod("a", "10.0.0.12", labels={"app": "web"}, rv=20)
    b = pod("b", "10.0.0.3", labels={"app": "web"}, rv=15)
    pending = pod("c", "10.0.0.4", phase="Pending", labels={"app": "web"}, rv=30)
    other = pod("d", "10.0.0.6", labels={"app": "db"}, rv=40)
    wanted, _ = members.desired(snap(project(), svc, a, b, pending, other))
    d = wanted["member.acme.prod.service.web"]
    assert isinstance(d.data, LbServiceSpec)
    assert d.data.endpoints == ["10.0.0.3", "10.0.0.12"]
    assert [(p.port, p.target_port, p.protocol) for p in d.data.ports] == [
        (80, 8080, "TCP"),
        (53, 5353, "UDP"),
    ]
    assert d.data.bind_on_eip == "ingress" and not d.data.bind_on_default_gw_eip
    assert d.revision == 20  # the newest object it was built from

    vm = (
        SERVICE,
        obj(
            SERVICE,
            "acme-prod",
            "ssh",
            {
                "type": "LoadBalancer",
                "selector": {objects.VM_SELECTOR: "db"},
                "ports": [{"port": 22}],
            },
            annotations={objects.BIND_DEFAULT_GW: "true"},
        ),
    )
    metallb = (
        SERVICE,
        obj(
            SERVICE,
            "acme-prod",
            "m",
            {"type": "LoadBalancer", "loadBalancerClass": "metallb", "ports": [{"port": 1}]},
        ),
    )
    plain = (SERVICE, obj(SERVICE, "acme-prod", "c", {"type": "ClusterIP", "ports": [{"port": 1}]}))
    named = (
        SERVICE,
        obj(
            SERVICE,
            "acme-prod",
            "n",
            {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": "http"}]},
        ),
    )
    wanted, problems = members.desired(snap(project(), vm, metallb, plain, named))
    ssh = wanted["member.acme.prod.service.ssh"].data
    assert isinstance(ssh, LbServiceSpec) and ssh.vm_selector == "db" and ssh.bind_on_default_gw_eip
    assert {k for k in wanted if "service" in k} == {"member.acme.prod.service.ssh"}
    assert [p.name for p in problems] == ["n"] and "named targetPort" in problems[0].message


def test_pods_and_vm_interfaces_are_workload_nics() -> None:
    mac = {objects.POD_MAC: "0a:58:0a:00:00:05"}
    running = pod("web", "10.0.0.5", annotations=mac)
    launcher = pod("virt-launcher-db-x", "10.0.0.7", labels={"kubevirt.io": "virt-launcher"})
    host = (
        POD,
        obj(
            POD,
            "acme-prod",
            "h",
            {"hostNetwork": True},
            status={"phase": "Running", "podIP": "192.0.2.1"},
        ),
    )
    no_ip = pod("new", None)
    vmi = (
        VMI,
        obj(
            VMI,
            "acme-prod",
            "db",
            status={
                "phase": "Running",
                "interfaces": [
                    {"name": "vpc_net_0", "ipAddress": "10.0.0.20", "mac": "02:00:00:00:00:20"},
                    {"name": "nothing-yet"},
                ],
            },
        ),
    )
    wanted, _ = members.desired(snap(project(), running, launcher, host, no_ip, vmi))
    nics = {k: d.data for k, d in wanted.items() if d.family == "workload"}
    assert set(nics) == {
        "member.acme.prod.workload.pod.web.default",
        "member.acme.prod.workload.vm.db.vpc-net-0",
    }
    web = nics["member.acme.prod.workload.pod.web.default"]
    assert isinstance(web, WorkloadSpec) and (web.ip, web.mac) == ("10.0.0.5", "0a:58:0a:00:00:05")
    db = nics["member.acme.prod.workload.vm.db.vpc-net-0"]
    assert isinstance(db, WorkloadSpec) and db.holder == "vm/db/vpc-net-0" and db.ip == "10.0.0.20"


# -- desired -> what to publish ----------------------------------------------------------


def publish(
    items: list[Any], published: dict[str, events.Published], revision: int
) -> list[events.Publish]:
    wanted, problems = members.desired(snap(*items))
    actions = events.plan(wanted, published, problems, revision)
    for a in actions:
        published[a.record.key] = a.record
    return actions


def test_a_change_is_published_once_and_a_removal_outranks_it() -> None:
    published: dict[str, events.Published] = {}
    eip = (EIP, obj(EIP, "acme-prod", "x", rv=5))
    first = publish([project(rv=3), eip], published, 5)
    assert [(a.subject, a.generation) for a in first] == [
        (subjects.PROJECT_CREATED, 3),
        (subjects.EIP_CREATED, 5),
    ]
    assert first[0].event_id == events.event_id("uid-acme-prod", "project.acme.prod", 3)
    assert publish([project(rv=9), eip], published, 9) == []  # a status write: same spec

    changed = publish([project(cidr="10.0.1.0/24", rv=11), eip], published, 11)
    assert [(a.subject, a.generation) for a in changed] == [(subjects.PROJECT_UPDATED, 11)]

    gone = publish([], published, 12)
    assert [(a.subject, a.generation) for a in gone] == [
        (subjects.EIP_DELETED, 12),
        (subjects.PROJECT_DELETED, 12),
    ]  # members first
    assert gone[1].data.model_dump() == {"organization": "acme", "name": "prod"}

    back = publish([project(rv=12)], published, 12)  # re-created at an older-looking revision
    assert [(a.subject, a.generation) for a in back] == [(subjects.PROJECT_CREATED, 13)]


def test_an_invalid_edit_keeps_what_was_published() -> None:
    published: dict[str, events.Published] = {}
    publish([project(rv=3)], published, 3)
    assert publish([project(cidr="not-a-cidr", rv=4)], published, 4) == []
    assert not published["project.acme.prod"].deleted


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, tuple[int, bool]]]:
    """Snapshots over time: project name -> (cidr choice, with an EIp)."""
    names = st.sampled_from(["a", "b", "c"])
    state = st.dictionaries(names, st.tuples(st.integers(0, 2), st.booleans()), max_size=3)
    return draw(st.lists(state, min_size=1, max_size=8))


@settings(max_examples=150, deadline=None)
@given(histories())
def test_plan_converges_and_generations_only_grow(
    history: list[dict[str, tuple[int, bool]]],
) -> None:
    published: dict[str, events.Published] = {}
    generations: dict[str, list[int]] = {}
    rv = 1
    for step in history:
        items = []
        for name, (cidr, with_eip) in sorted(step.items()):
            rv += 1
            items.append(project("org", name, f"10.{cidr}.0.0/24", rv=rv))
            if with_eip:
                rv += 1
                items.append((EIP, obj(EIP, f"org-{name}", "e", rv=rv)))
        for a in publish(items, published, rv):
            generations.setdefault(a.record.key, []).append(a.generation)
        wanted, problems = members.desired(snap(*items))
        assert events.plan(wanted, published, problems, rv) == []  # nothing left to say
        live = {k for k, r in published.items() if not r.deleted}
        assert live == set(wanted)
        assert all(published[k].fingerprint == events.fingerprint(d) for k, d in wanted.items())
    for gens in generations.values():
        assert gens == sorted(gens) and len(set(gens)) == len(gens)


# -- statuses -> Kube status -------------------------------------------------------------


def status(service: str, state: str = "Ready", generation: int = 3, **kw: Any) -> ServiceStatus:
    return ServiceStatus(
        service=service,
        organization="acme",
        project="prod",
        namespace="acme-prod",
        generation=generation,
        state=state,
        reason=kw.pop("reason", "Reconciled"),
        observed_at=datetime.now(UTC),
        **kw,
    )


def four(**ipam: Any) -> dict[str, dict[str, ServiceStatus]]:
    sts: dict[str, ServiceStatus] = {s: status(s) for s in subjects.SERVICES}
    sts["ipam"] = status("ipam", **ipam)
    return {"acme.prod": sts}


def record(generation: int = 3) -> dict[str, events.Published]:
    return {
        "project.acme.prod": events.Published(
            key="project.acme.prod",
            family="project",
            generation=generation,
            fingerprint="f",
            uid="u",
            ref={"organization": "acme", "name": "prod"},
        )
    }


def patches(items: list[Any], sts: Any, published: Any) -> dict[str, dict[str, Any]]:
    snapshot = snap(*items)
    _, problems = members.desired(snapshot)
    found = statuses.status_patches(snapshot, sts, published, problems, NOW)
    return {f"{p.watched.short}/{p.name}": p.status for p in found}


def test_a_project_is_ready_when_all_four_services_are_ready_at_its_generation() -> None:
    out = patches([project(generation=2)], four(), record(3))
    assert out["project/prod"] == {
        "ready": True,
        "namespace": "acme-prod",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciled",
                "message": "ipam, vpc, nat and dns are Ready",
                "observedGeneration": 2,
                "lastTransitionTime": NOW,
            }
        ],
    }

    behind = patches([project()], four(), record(4))["project/prod"]
    assert behind["ready"] is False and "not at generation 4" in behind["conditions"][0]["message"]
    sts = four()
    sts["acme.prod"]["nat"] = status("nat", "Pending", reason="WaitingForVpc", message="no router")
    waiting = patches([project()], sts, record(3))["project/prod"]["conditions"][0]
    assert (waiting["reason"], waiting["message"]) == ("WaitingForVpc", "nat: Pending: no router")
    invalid = patches([project(cidr="10.0.0.0/33")], four(), {})["project/prod"]
    assert invalid["conditions"][0]["reason"] == "InvalidSpec" and invalid["ready"] is False


def test_a_project_is_ready_only_with_all_four_at_one_and_the_same_generation() -> None:
    """All at (or past) the published generation is not enough: one generation for all."""
    sts = four()
    sts["acme.prod"]["dns"] = status("dns", generation=4)
    condition = patches([project()], sts, record(3))["project/prod"]["conditions"][0]
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False",
        "Pending",
        "the services are at different generations",
    )


# -- progress: the one "all services at this state and generation" answer -------------------


def test_behind_is_none_when_all_are_at_the_state_and_generation_or_later() -> None:
    sts: dict[str, ServiceStatus] = {
        s: status(s, generation=3 if s != "dns" else 5) for s in subjects.SERVICES
    }
    assert behind(sts, "Ready", 3, subjects.SERVICES) is None
    assert behind(sts, "Ready", 3) is None


def test_behind_names_the_first_in_order_and_why() -> None:
    sts = {
        "ipam": status("ipam"),
        "vpc": status("vpc", generation=2),
        "nat": status("nat", "Error"),
    }
    assert behind(sts, "Ready", 3, subjects.SERVICES) == Behind("vpc", "generation", sts["vpc"])
    del sts["vpc"]
    assert behind(sts, "Ready", 3, subjects.SERVICES) == Behind("vpc", "absent", None)
    assert behind(sts, "Ready", 3) == Behind("nat", "state", sts["nat"])
    older = {"ipam": status("ipam", "Ready", generation=2)}  # older generation before state
    assert behind(older, "Deleted", 3) == Behind("ipam", "generation", older["ipam"])


def test_behind_without_services_does_not_wait_for_an_absent_one() -> None:
    """The finalizer's reading: a service that never reported (or was purged) is done."""
    sts = {"vpc": status("vpc", "Deleted", generation=4)}
    assert behind(sts, "Deleted", 4) is None
    assert behind({}, "Deleted", 4) is None
    assert behind(sts, "Deleted", 5) == Behind("vpc", "generation", sts["vpc"])


def test_an_unchanged_status_is_not_written_and_transition_times_stay() -> None:
    first = patches([project()], four(), record())["project/prod"]
    earlier = {**first, "conditions": [{**first["conditions"][0], "lastTransitionTime": "then"}]}
    assert patches([project(status=earlier)], four(), record()) == {}
    sts = four()
    sts["acme.prod"]["dns"] = status("dns", "Error", reason="Broken")
    flipped = patches([project(status=earlier)], sts, record())["project/prod"]
    assert flipped["conditions"][0]["lastTransitionTime"] == NOW


def test_eip_fip_and_service_statuses_come_from_ipam() -> None:
    facts = AddressFacts(
        cidr_block="10.0.0.0/24",
        egress_network_type="cloud",
        gateway_ip="10.0.0.1",
        eips=[
            ExternalAddress(
                name="ingress",
                ip_address="100.65.0.7",
                network="cloud",
                prefix_length=16,
                gateway="100.65.0.1",
                ready=True,
                ownership_type="Exclusive",
                owners=["FIp/ssh"],
            )
        ],
        fips=[
            FloatingIp(
                name="ssh",
                eip="ingress",
                external_ip="100.65.0.7",
                target_ip="10.0.0.20",
                vm_name="db",
                interface="default",
                mac_address="02:00:00:00:00:20",
                ready=True,
            )
        ],
        services=[LoadBalancer(name="web", eip="default-gw", ingress_ip="100.65.0.2", ready=True)],
    )
    items = [
        project(),
        (EIP, obj(EIP, "acme-prod", "ingress")),
        (EIP, obj(EIP, "acme-prod", "waiting")),
        (FIP, obj(FIP, "acme-prod", "ssh", {"vmTarget": {"vmName": "db"}, "eip": "ingress"})),
        (
            SERVICE,
            obj(SERVICE, "acme-prod", "web", {"type": "LoadBalancer", "ports": [{"port": 80}]}),
        ),
    ]
    failed = MemberStatus(
        member="eip.waiting",
        generation=1,
        state="Error",
        reason="NoAvailableIPs",
        message="pool cloud is full",
    )
    out = patches(items, four(addresses=facts, members=[failed]), record())
    eip = out["eip/ingress"]
    assert {k: eip[k] for k in ("ready", "ipAddress", "ownershipType", "ovnEIpRef", "owners")} == {
        "ready": True,
        "ipAddress": "100.65.0.7",
        "ownershipType": "Exclusive",
        "ovnEIpRef": "acme-prod-eip-ingress",
        "owners": [{"type": "FIp", "ownerRef": "ssh"}],
    }
    assert out["eip/waiting"]["ready"] is False
    assert out["eip/waiting"]["conditions"][0]["reason"] == "NoAvailableIPs"
    fip = out["fip/ssh"]
    assert (fip["ready"], fip["externalIP"], fip["resolvedTargetIP"], fip["eip"]) == (
        True,
        "100.65.0.7",
        "10.0.0.20",
        "ingress",
    )
    assert fip["targetVMInterface"]["vmName"] == "db" and fip["ovnFip"] == "acme-prod-fip-ssh"
    assert out["service/web"] == {"loadBalancer": {"ingress": [{"ip": "100.65.0.2"}]}}
