"""The doctor's cross-check of OVN NB with IPAM's allocations (``vpcbus.crosschecks``): pure,
over a hand-built NB view and statuses. A consistent project is clean; each kind of
disagreement is named once, by the object a service would name."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.test_desired import eip
from vpcbus.crosschecks import NbView, Owned, Port, cross_check
from vpcbus_proto.status import AddressFacts, MemberStatus, ServiceStatus, WorkloadAddress

KEY, NS = "acme.shop", "acme-shop"
IDS = {"vpcbus-owner": "vpc", "vpcbus-project": KEY}


def nic(name: str, ip: str, mac: str) -> WorkloadAddress:
    return WorkloadAddress(member=f"workload.vm.{name}.default", kind="vm", name=name,
                           interface="default", ip_address=ip, mac_address=mac)  # fmt: skip


WEB = nic("web", "10.0.0.2", "0e:00:00:00:00:02")


def status(service: str, generation: int = 1, **more: object) -> ServiceStatus:
    return ServiceStatus.model_validate(
        {"service": service, "organization": "acme", "project": "shop", "namespace": NS,
         "generation": generation, "state": "Ready", "reason": "x",
         "observed_at": datetime.now(UTC), **more}
    )  # fmt: skip


def statuses(*workloads: WorkloadAddress, vpc_generation: int = 1) -> dict[str, ServiceStatus]:
    facts = AddressFacts(
        cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1",
        eips=[eip()], workloads=list(workloads),
    )  # fmt: skip
    return {
        "ipam": status("ipam", addresses=facts),
        "vpc": status("vpc", vpc_generation),
        "nat": status("nat"),
    }


def nb() -> NbView:
    """The project's NB as VPC and NAT build it, with the NIC web."""
    view = NbView()
    lan, ext = f"{NS}-{NS}-default", f"{NS}-ext-cloud"
    view.switch_projects = {f"{NS}-default": KEY, "ext-cloud": ""}
    view.router_ports = {lan: ("0a:00:00:00:00:01", ("10.0.0.1/24",)),
                         ext: ("0a:00:00:00:00:02", ("100.65.0.2/16",))}  # fmt: skip
    workload = {**IDS, "vpcbus-role": "workload", "vpcbus-member": WEB.member}
    view.ports = [
        Port(f"{NS}-default-{NS}", f"{NS}-default", ("router",), IDS, lan),
        Port(f"web.{NS}", f"{NS}-default", ("0e:00:00:00:00:02 10.0.0.2",), workload, ""),
        Port(f"ext-cloud-{NS}", "ext-cloud", ("router",), IDS, ext),
        Port("ext-cloud-localnet", "ext-cloud", ("unknown",), {}, ""),
    ]
    view.snat = {KEY: ["100.65.0.2"]}
    view.owned = [Owned("Logical_Router", NS, "vpc", KEY)]
    return view


def kinds(view: NbView, st: dict[str, ServiceStatus] | None = None) -> set[tuple[str, str]]:
    found = cross_check(view, {KEY: statuses(WEB) if st is None else st}, {KEY})
    assert all(f.service == "cross-check" for f in found)
    return {(f.kind, f.object) for f in found}


def test_a_consistent_project_is_clean() -> None:
    assert kinds(nb()) == set()


def test_one_ip_or_mac_on_two_ports_of_a_switch_is_a_duplicate() -> None:
    view = nb()
    view.ports.append(Port("intruder", f"{NS}-default", ("0e:00:00:00:00:09 10.0.0.1",), {}, ""))
    view.ports.append(Port("twin", "ext-cloud", ("0a:00:00:00:00:02 100.65.0.9",), {}, ""))
    found = cross_check(view, {KEY: statuses(WEB)}, {KEY})
    dup = {(f.project, f.object, f.detail) for f in found if f.kind == "duplicate"}
    assert dup == {
        (KEY, f"Logical_Switch/{NS}-default ip 10.0.0.1", f"on ports {NS}-default-{NS}, intruder"),
        ("-", "Logical_Switch/ext-cloud mac 0a:00:00:00:00:02", f"on ports ext-cloud-{NS}, twin"),
    }


def test_ports_and_router_addresses_are_checked_against_ipam() -> None:
    view = nb()
    view.ports[1] = Port(f"web.{NS}", f"{NS}-default", ("0e:00:00:00:00:02 10.0.0.99",),
                         view.ports[1].ids, "")  # fmt: skip
    db = nic("db", "10.0.0.3", "0e:00:00:00:00:03")
    stray = {**IDS, "vpcbus-role": "workload", "vpcbus-member": "workload.vm.gone.default"}
    view.ports.append(
        Port(f"gone.{NS}", f"{NS}-default", ("0e:00:00:00:00:07 10.0.0.7",), stray, "")
    )
    view.router_ports[f"{NS}-ext-cloud"] = ("0a:00:00:00:00:02", ("100.65.0.8/16",))
    view.snat = {KEY: ["100.65.0.8"]}
    assert kinds(view, statuses(WEB, db)) == {
        ("mismatch", f"Logical_Switch_Port/web.{NS}"),
        ("missing", f"Logical_Switch_Port/db.{NS}"),
        ("mismatch", f"Logical_Switch_Port/gone.{NS}"),
        ("mismatch", f"Logical_Router_Port/{NS}-ext-cloud"),
        ("mismatch", "NAT/snat:10.0.0.0/24->100.65.0.2"),
    }


def test_a_project_vpc_is_still_building_is_not_cross_checked() -> None:
    view = nb()
    view.ports.pop(1)  # web's port is not there yet ...
    assert kinds(view, statuses(WEB, vpc_generation=0)) == set()  # ... VPC is not done
    refused = statuses(WEB)
    port = MemberStatus(member=WEB.member, generation=1, state="Error", reason="PortNameTaken")
    refused["vpc"] = status("vpc", members=[port])
    assert kinds(view, refused) == set()  # VPC says why (its member status)
    assert kinds(view) == {("missing", f"Logical_Switch_Port/web.{NS}")}


def test_rows_of_a_project_no_service_knows_are_orphans() -> None:
    view = nb()
    view.owned.append(Owned("Logical_Switch", "ghost-x-default", "vpc", "ghost.x"))
    view.owned.append(Owned("Logical_Switch", "ext-cloud", "vpc", ""))  # shared: no project
    found = cross_check(view, {KEY: statuses(WEB)}, {KEY})
    assert [(f.project, f.kind, f.object) for f in found] == [
        ("ghost.x", "orphan", "Logical_Switch/ghost-x-default")
    ]
    assert cross_check(view, {KEY: statuses(WEB)}, {KEY}, only=KEY) == []
