"""Workload NICs end to end: real nats-server, real OVN NB/SB + ovn-northd, the four services
as real processes. A NIC attached through the bus gets an address from IPAM, a switch port
with port security from VPC and a name from DNS; the ports are proven with NB rows and
``ovn-trace``; detaching, a second project with the same CIDR and deleting leave nothing stale.

Tests share the module's stack and run in file order; organization ``wlp`` is this file's own.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus import tracing
from vpcbus.client import Client, Statuses, member_at, member_gone
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import names
from vpcbus_proto.members import WorkloadSpec
from vpcbus_proto.status import WorkloadAddress

pytestmark = [pytest.mark.connected]

ORG = "wlp"
STATIC_IP = "10.0.0.50"
NEW_IP = "10.0.0.60"


def vm(project: str, name: str, ip: str | None = None) -> WorkloadSpec:
    return WorkloadSpec(organization=ORG, project=project, kind="vm", name=name, ip=ip)


async def attach_all(client: Client, project: str, *nics: WorkloadSpec) -> Statuses:
    """Attach the NICs and wait until IPAM and VPC have settled each at its event."""
    watch = await client.watch(ORG, project)
    statuses: Statuses = {}
    try:
        published = [(nic, await client.attach(nic)) for nic in nics]
        for nic, p in published:
            done = member_at(nic.member, p.generation, services=("ipam", "vpc"))
            statuses = await watch.until(done, timeout=30, event_id=p.event_id)
        return statuses
    finally:
        await watch.stop()


def addressed(statuses: Statuses, nic: WorkloadSpec) -> WorkloadAddress:
    facts = statuses["ipam"].addresses
    assert facts is not None
    [found] = [w for w in facts.workloads if w.member == nic.member]
    return found


def port_name(project: str, nic: WorkloadSpec) -> str:
    return names.workload_port(names.namespace(ORG, project), nic.name, nic.interface)


def switch_ports(ovn: OvnCentral, project: str) -> set[str]:
    listing = ovn.nbctl("lsp-list", f"{names.namespace(ORG, project)}-default")
    return set(re.findall(r"\((.+)\)", listing))


def workload_ports(ovn: OvnCentral) -> dict[str, dict[str, object]]:
    """Every workload port in the NB by name, with addresses and port security as lists."""
    cols = "name,addresses,port_security,external_ids"
    out = {}
    for row in helpers.nb_rows(ovn, "Logical_Switch_Port", cols):
        if helpers.ids(row).get("vpcbus-role") == "workload":
            for column in ("addresses", "port_security"):
                value = row[column]  # one element is sent bare, more as ["set", [...]]
                row[column] = value[1] if isinstance(value, list) else [value]
            out[str(row["name"])] = row
    return out


def zone(ovn: OvnCentral, project: str) -> dict[str, str]:
    """The records of the project's DNS row (owned by dns)."""
    key = names.project_key(ORG, project)
    for row in helpers.nb_rows(ovn, "DNS", "records,external_ids"):
        if helpers.ids(row).get("vpcbus-project") == key:
            records = row["records"]
            assert isinstance(records, list) and records[0] == "map"
            return dict(records[1])
    return {}


async def zone_is(ovn: OvnCentral, project: str, want: dict[str, str]) -> dict[str, str]:
    """Wait for the workload names of the zone to be ``want``; the zone's final records."""

    async def check() -> bool:
        records = zone(ovn, project)
        return {k: v for k, v in records.items() if not k.startswith("gateway.")} == want

    assert await helpers.eventually(check, timeout=20), (zone(ovn, project), want)
    return zone(ovn, project)


def fqdn(project: str, nic: WorkloadSpec) -> str:
    return names.workload_fqdn(names.namespace(ORG, project), nic.name)


def l2_trace(ovn: OvnCentral, project: str, src: WorkloadAddress, dst: WorkloadAddress,
             *, src_ip: str | None = None) -> tracing.Verdict:  # fmt: skip
    """ovn-trace an ICMP echo from ``src``'s port straight to ``dst``'s MAC and IP."""
    inport = port_name(project, vm(project, src.name))
    flow = (
        f'inport == "{inport}" && eth.src == {src.mac_address} && eth.dst == {dst.mac_address}'
        f" && {tracing.Packet(src_ip or src.ip_address, dst.ip_address).match()}"
    )
    ovn.nbctl("--wait=sb", "sync")
    datapath = f"{names.namespace(ORG, project)}-default"
    runs = [
        subprocess.run(
            ["ovn-trace", f"--db={ovn.sb_db}", *extra, datapath, flow],
            check=True, capture_output=True, text=True,
        ).stdout
        for extra in ([], ["--minimal"])
    ]  # fmt: skip
    return tracing.parse(runs[0], runs[1])


WEB = vm("alpha", "web")
DB = vm("alpha", "db", STATIC_IP)


async def test_attached_vms_get_ports_with_port_security_and_names(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    await helpers.create_ready(client, helpers.spec(ORG, "alpha"))
    statuses = await attach_all(client, "alpha", WEB, DB)
    web, db = addressed(statuses, WEB), addressed(statuses, DB)
    assert db.ip_address == STATIC_IP and db.static
    assert web.ip_address != STATIC_IP

    ports = workload_ports(ovn)
    for nic, address in ((WEB, web), (DB, db)):
        name = port_name("alpha", nic)
        row = ports[name]
        expected = [f"{address.mac_address} {address.ip_address}"]
        assert row["addresses"] == expected and row["port_security"] == expected
        assert helpers.ids(row) == {
            "vpcbus-owner": "vpc",
            "vpcbus-project": "wlp.alpha",
            "vpcbus-namespace": "wlp-alpha",
            "vpcbus-role": "workload",
            "vpcbus-member": nic.member,
        }
        # VPC reports the port for the generation IPAM reports for the same member
        vpc_member = statuses["vpc"].member(nic.member)
        ipam_member = statuses["ipam"].member(nic.member)
        assert vpc_member is not None and ipam_member is not None
        assert (vpc_member.state, vpc_member.reason, vpc_member.message) == (
            "Ready",
            "PortBound",
            name,
        )
        assert vpc_member.generation == ipam_member.generation
    assert {"web.wlp-alpha", "db.wlp-alpha"} <= switch_ports(ovn, "alpha")
    assert "2 workload ports" in statuses["vpc"].message

    records = await zone_is(
        ovn, "alpha", {fqdn("alpha", WEB): web.ip_address, fqdn("alpha", DB): STATIC_IP}
    )
    assert records["gateway.wlp-alpha.svc.cluster.local"] == "10.0.0.1"
    # the zone hangs off the project switch only
    dns_on = ovn.nbctl("--bare", "--columns=name", "find", "Logical_Switch", "dns_records!=[]")
    assert "wlp-alpha-default" in dns_on.split()


async def test_trace_from_one_vm_port_reaches_the_other(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    statuses = await client.statuses(ORG, "alpha")
    web, db = addressed(statuses, WEB), addressed(statuses, DB)

    # on the switch, straight to db's MAC: output to db's port and nowhere else
    verdict = l2_trace(ovn, "alpha", web, db)
    assert verdict.delivered, verdict.raw
    assert verdict.outputs == ["db.wlp-alpha"]
    assert verdict.datapaths == ["wlp-alpha-default"]

    # port security: web may not send as another address
    spoofed = l2_trace(ovn, "alpha", web, db, src_ip="10.0.0.99")
    assert not spoofed.delivered, spoofed.raw

    # through the router (the CLI's trace starts at web's port): routed back to db's port,
    # whose MAC the router knows from the port's addresses
    routed = tracing.trace(
        ovn.nb_db, ovn.sb_db, ORG, "alpha", tracing.Packet(web.ip_address, db.ip_address)
    )
    assert routed.outputs == ["db.wlp-alpha"], routed.raw
    assert routed.datapaths[0] == "wlp-alpha-default" and "wlp-alpha" in routed.datapaths


async def test_detach_removes_the_port_and_the_name_and_keeps_the_other(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    db_row = workload_ports(ovn)["db.wlp-alpha"]
    watch = await client.watch(ORG, "alpha")
    try:
        published = await client.detach(WEB)
        await watch.until(
            member_gone(WEB.member, services=("ipam", "vpc")),
            timeout=30,
            event_id=published.event_id,
        )
    finally:
        await watch.stop()

    ports = workload_ports(ovn)
    assert "web.wlp-alpha" not in ports and "web.wlp-alpha" not in switch_ports(ovn, "alpha")
    assert ports["db.wlp-alpha"] == db_row  # untouched
    vpc = await client.status("vpc", ORG, "alpha")
    assert vpc is not None and [m.member for m in vpc.members] == [DB.member]
    records = await zone_is(ovn, "alpha", {fqdn("alpha", DB): STATIC_IP})
    assert fqdn("alpha", WEB) not in records


async def test_readdressed_nic_changes_its_port_and_its_name(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    moved = vm("alpha", "db", NEW_IP)
    statuses = await attach_all(client, "alpha", moved)
    db = addressed(statuses, moved)
    assert db.ip_address == NEW_IP
    row = workload_ports(ovn)["db.wlp-alpha"]
    assert row["addresses"] == row["port_security"] == [f"{db.mac_address} {NEW_IP}"]
    records = await zone_is(ovn, "alpha", {fqdn("alpha", DB): NEW_IP})
    assert STATIC_IP not in records.values()


async def test_a_second_project_with_the_same_cidr_gets_its_own_ports_and_names(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    before = workload_ports(ovn)["db.wlp-alpha"]
    alpha_zone = zone(ovn, "alpha")
    await helpers.create_ready(client, helpers.spec(ORG, "beta"))
    # the same names as in alpha, and the static address alpha's db had first
    b_db, b_web = vm("beta", "db", STATIC_IP), vm("beta", "web")
    statuses = await attach_all(client, "beta", b_db, b_web)
    db, web = addressed(statuses, b_db), addressed(statuses, b_web)
    assert db.ip_address == STATIC_IP

    ports = workload_ports(ovn)
    assert ports["db.wlp-beta"]["addresses"] == [f"{db.mac_address} {STATIC_IP}"]
    assert helpers.ids(ports["db.wlp-beta"])["vpcbus-project"] == "wlp.beta"
    assert {"db.wlp-beta", "web.wlp-beta"} <= switch_ports(ovn, "beta")
    assert not switch_ports(ovn, "beta") & switch_ports(ovn, "alpha")
    assert ports["db.wlp-alpha"] == before
    await zone_is(ovn, "beta", {fqdn("beta", b_db): STATIC_IP, fqdn("beta", b_web): web.ip_address})
    assert zone(ovn, "alpha") == alpha_zone

    # beta's web reaches beta's 10.0.0.50, never alpha's
    verdict = l2_trace(ovn, "beta", web, db)
    assert verdict.outputs == ["db.wlp-beta"], verdict.raw
    assert verdict.datapaths == ["wlp-beta-default"]


async def test_deleting_the_projects_leaves_no_owned_rows(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    for project in ("alpha", "beta"):
        await helpers.delete_done(client, ORG, project)
    mine = {"wlp.alpha", "wlp.beta"}

    async def gone() -> bool:
        owned = helpers.owned_rows(ovn)
        return not any(mine & set(keys) for keys in owned.values())

    assert await helpers.eventually(gone, timeout=20), helpers.owned_rows(ovn)
    assert not [p for p in workload_ports(ovn) if p.endswith((".wlp-alpha", ".wlp-beta"))]
    assert zone(ovn, "alpha") == zone(ovn, "beta") == {}
