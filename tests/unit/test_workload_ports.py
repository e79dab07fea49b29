"""Workload NICs in the VPC and DNS services: the pure builders (one port and one name per
NIC from IPAM's status) and the appliers against an in-memory NB (``tests.unit.fakes``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.unit.fakes import FakeNb
from tests.unit.test_desired import converge_vpc, eip, ids, project
from vpcbus_dns import desired as dns_desired
from vpcbus_dns import ovn as dns_ovn
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts, MemberStatus, ServiceStatus, WorkloadAddress
from vpcbus_runtime.ovn import OWNER, PROJECT
from vpcbus_vpc import desired as vpc_desired
from vpcbus_vpc import ovn as vpc_ovn
from vpcbus_vpc.desired import DesiredVpc
from vpcbus_vpc.reconciler import port_states

ACME = project("acme", "shop")


def nic(
    name: str, ip: str, *, kind: str = "vm", interface: str = "default", mac: str = ""
) -> WorkloadAddress:
    return WorkloadAddress.model_validate(
        {"member": f"workload.{kind}.{name}.{interface}", "kind": kind, "name": name,
         "interface": interface, "ip_address": ip,
         "mac_address": mac or f"0e:00:00:00:00:{int(ip.split('.')[-1]):02x}"}
    )  # fmt: skip


def with_nics(spec: ProjectSpec, *nics: WorkloadAddress, gw_ip: str = "100.65.0.2") -> DesiredVpc:
    gw = eip(gw_ip)
    facts = AddressFacts(
        cidr_block=spec.cidr_block,
        egress_network_type=spec.egress_network_type,
        gateway_ip=str(spec.gateway),
        eips=[gw],
        workloads=list(nics),
    )
    return vpc_desired.build(spec.key, spec.namespace, spec, gw, facts, chassis="gw1")


def converge(nb: FakeNb, want: DesiredVpc) -> dict[str, str]:
    conflicts: dict[str, str] = nb.transact(lambda api, txn: vpc_ovn.converge_vpc(api, txn, want))[
        0
    ]
    return conflicts


def workload_rows(nb: FakeNb, key: str) -> dict[str, Any]:
    return {
        r.name: r
        for r in nb.rows("Logical_Switch_Port")
        if ids(r).get("vpcbus-role") == "workload" and ids(r).get(PROJECT) == key
    }


# -- VPC: desired ports -----------------------------------------------------------------------


def test_one_port_per_nic_named_like_kube_ovn_with_mac_and_ip() -> None:
    want = with_nics(
        ACME,
        nic("web", "10.0.0.3"),
        nic("db", "10.0.0.2", kind="pod"),
        nic("web", "10.0.0.4", interface="storage"),
    )
    assert [(p.name, p.member, p.address) for p in want.workloads] == [
        ("db.acme-shop", "workload.pod.db.default", "0e:00:00:00:00:02 10.0.0.2"),
        ("web.acme-shop", "workload.vm.web.default", "0e:00:00:00:00:03 10.0.0.3"),
        ("web.acme-shop.storage", "workload.vm.web.storage", "0e:00:00:00:00:04 10.0.0.4"),
    ]
    # the ports are not listed among the status objects: a project may have thousands
    assert want.objects() == with_nics(ACME).objects()


def test_two_nics_that_would_share_a_port_name_get_one_port() -> None:
    # IPAM refuses the second (NameConflict); the builder still never emits a name twice
    want = with_nics(ACME, nic("a", "10.0.0.2", kind="vm"), nic("a", "10.0.0.3", kind="pod"))
    assert [(p.name, p.member) for p in want.workloads] == [
        ("a.acme-shop", "workload.pod.a.default")
    ]


# -- VPC: the applier -------------------------------------------------------------------------


def test_workload_ports_are_owned_rows_on_the_project_switch_with_port_security() -> None:
    nb = FakeNb()
    want = with_nics(ACME, nic("a", "10.0.0.2"), nic("b", "10.0.0.3"))
    assert converge(nb, want) == {}
    rows = workload_rows(nb, "acme.shop")
    assert set(rows) == {"a.acme-shop", "b.acme-shop"}
    a = rows["a.acme-shop"]
    assert a.addresses == a.port_security == ["0e:00:00:00:00:02 10.0.0.2"]
    assert ids(a) == {
        OWNER: "vpc",
        PROJECT: "acme.shop",
        "vpcbus-namespace": "acme-shop",
        "vpcbus-role": "workload",
        "vpcbus-member": "workload.vm.a.default",
    }
    switch = nb.named("Logical_Switch", "acme-shop-default")
    assert {p.name for p in switch.ports} == {"a.acme-shop", "b.acme-shop", want.lan.switch_port}
    assert converge_vpc(nb, want) == 0  # idempotent: nothing new the second time


def test_detached_nic_loses_its_port_readdressed_nic_keeps_its_row() -> None:
    nb = FakeNb()
    converge(nb, with_nics(ACME, nic("a", "10.0.0.2"), nic("b", "10.0.0.3")))
    b_before = workload_rows(nb, "acme.shop")["b.acme-shop"]
    converge(nb, with_nics(ACME, nic("b", "10.0.0.9", mac="0e:00:00:00:00:aa")))
    rows = workload_rows(nb, "acme.shop")
    assert set(rows) == {"b.acme-shop"}
    assert rows["b.acme-shop"].uuid == b_before.uuid
    assert rows["b.acme-shop"].port_security == ["0e:00:00:00:00:aa 10.0.0.9"]
    switch = nb.named("Logical_Switch", "acme-shop-default")
    assert {p.name for p in switch.ports} == {"b.acme-shop", "acme-shop-default-acme-shop"}
    # the last NIC detached: only the router's port is left
    converge(nb, with_nics(ACME))
    assert workload_rows(nb, "acme.shop") == {}
    assert [p.name for p in switch.ports] == ["acme-shop-default-acme-shop"]


def test_drift_on_a_workload_port_is_repaired() -> None:
    nb = FakeNb()
    want = with_nics(ACME, nic("a", "10.0.0.2"))
    converge(nb, want)
    row = workload_rows(nb, "acme.shop")["a.acme-shop"]
    row.port_security = []  # someone switched anti-spoofing off by hand
    row.addresses = ["unknown"]
    converge(nb, want)
    assert row.addresses == row.port_security == ["0e:00:00:00:00:02 10.0.0.2"]


def foreign_port(nb: FakeNb, switch: Any, name: str) -> Any:
    """A port somebody else made by hand on ``switch``."""
    row = nb.transact(lambda api, txn: txn.insert(api.tables["Logical_Switch_Port"]))[0]
    row.name, row.addresses, row.port_security, row.external_ids = name, ["x"], [], {OWNER: "k8s"}
    switch.ports.append(row)
    return row


def test_a_port_name_taken_by_a_foreign_row_is_reported_and_left_alone() -> None:
    nb = FakeNb()
    converge(nb, with_nics(ACME))
    other = nb.transact(lambda api, txn: txn.insert(api.tables["Logical_Switch"]))[0]
    other.name, other.ports, other.external_ids = "someone-else", [], {}
    elsewhere = foreign_port(nb, other, "a.acme-shop")
    here = foreign_port(nb, nb.named("Logical_Switch", "acme-shop-default"), "c.acme-shop")
    want = with_nics(ACME, nic("a", "10.0.0.2"), nic("b", "10.0.0.3"), nic("c", "10.0.0.4"))
    for _ in range(2):  # the next converge neither takes nor drops them
        conflicts = converge(nb, want)
        assert conflicts == {
            "a.acme-shop": "port a.acme-shop already exists and is not this NIC's (owner: k8s)",
            "c.acme-shop": "port c.acme-shop already exists and is not this NIC's (owner: k8s)",
        }
        for row in (elsewhere, here):
            assert row.addresses == ["x"] and ids(row) == {OWNER: "k8s"}
        assert here in nb.named("Logical_Switch", "acme-shop-default").ports
        assert set(workload_rows(nb, "acme.shop")) == {"b.acme-shop"}


def test_same_cidr_projects_get_their_own_ports_and_tear_down_alone() -> None:
    nb = FakeNb()
    globex = project("globex", "shop")
    a = with_nics(ACME, nic("a", "10.0.0.2"), nic("b", "10.0.0.3"))
    g = with_nics(globex, nic("a", "10.0.0.2"), gw_ip="100.65.0.3")
    converge(nb, a)
    converge(nb, g)
    assert set(workload_rows(nb, "acme.shop")) == {"a.acme-shop", "b.acme-shop"}
    assert set(workload_rows(nb, "globex.shop")) == {"a.globex-shop"}
    converge(nb, with_nics(ACME))  # detaching acme's NICs leaves globex's port alone
    assert set(workload_rows(nb, "globex.shop")) == {"a.globex-shop"}

    converge(nb, a)
    removed = nb.transact(lambda api, txn: vpc_ovn.teardown_vpc(api, txn, "acme.shop"))[0]
    assert "2 workload ports" in removed
    # (the fake NB does not collect the router's ports and routes, as OVSDB does)
    switches = ("Logical_Switch", "Logical_Switch_Port")
    left = [r for t in switches for r in nb.rows(t) if ids(r).get(PROJECT) == "acme.shop"]
    assert left == []
    assert set(workload_rows(nb, "globex.shop")) == {"a.globex-shop"}
    assert "a.globex-shop" in {p.name for p in nb.named("Logical_Switch", g.switch).ports}


def ipam_status(*members: tuple[str, int]) -> ServiceStatus:
    return ServiceStatus(
        service="ipam", organization="acme", project="shop", namespace="acme-shop",
        generation=1, state="Ready", reason="Allocated", observed_at=datetime.now(UTC),
        members=[
            MemberStatus(member=m, generation=g, state="Ready", reason="Allocated")
            for m, g in members
        ],
    )  # fmt: skip


def test_port_states_carry_ipam_member_generations() -> None:
    want = with_nics(ACME, nic("a", "10.0.0.2"), nic("b", "10.0.0.3"), nic("c", "10.0.0.4"))
    ipam = ipam_status(("workload.vm.b.default", 7), ("workload.vm.a.default", 3))
    states = port_states(want, ipam, {"c.acme-shop": "taken"})
    assert [(s.member, s.generation, s.state, s.reason, s.message) for s in states] == [
        ("workload.vm.a.default", 3, "Ready", "PortBound", "a.acme-shop"),
        ("workload.vm.b.default", 7, "Ready", "PortBound", "b.acme-shop"),
        ("workload.vm.c.default", 0, "Error", "PortNameTaken", "taken"),
    ]


# -- DNS --------------------------------------------------------------------------------------


def test_zone_names_every_default_nic_and_keeps_gateway_reserved() -> None:
    want = dns_desired.build(
        "acme.shop",
        "acme-shop",
        "10.0.0.1",
        [
            nic("web", "10.0.0.3"),
            nic("db", "10.0.0.2", kind="pod"),
            nic("web", "10.0.0.4", interface="storage"),
            nic("gateway", "10.0.0.5"),
        ],
    )
    assert want.records == {
        "gateway.acme-shop.svc.cluster.local": "10.0.0.1",
        "web.acme-shop.svc.cluster.local": "10.0.0.3",
        "db.acme-shop.svc.cluster.local": "10.0.0.2",
    }
    assert want.objects() == ["DNS/gateway.acme-shop.svc.cluster.local"]
    assert want.count("workload") == 2
    assert want.shadowed == ("vm/gateway (gateway.acme-shop.svc.cluster.local)",)


def test_zone_row_follows_nics_in_place() -> None:
    nb = FakeNb()
    converge(nb, with_nics(ACME))

    def zone(*nics: WorkloadAddress) -> Any:
        want = dns_desired.build("acme.shop", "acme-shop", "10.0.0.1", nics)
        nb.transact(lambda api, txn: dns_ovn.converge_zone(api, txn, want))
        [row] = nb.rows("DNS")
        return row

    first = zone(nic("a", "10.0.0.2"), nic("b", "10.0.0.3"))
    assert first.records["a.acme-shop.svc.cluster.local"] == "10.0.0.2"
    row = zone(nic("b", "10.0.0.7"))  # a detached, b re-addressed
    assert row.uuid == first.uuid
    assert row.records == {
        "gateway.acme-shop.svc.cluster.local": "10.0.0.1",
        "b.acme-shop.svc.cluster.local": "10.0.0.7",
    }
