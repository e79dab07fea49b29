"""Floating IPs end to end: real nats-server, real OVN NB/SB + ovn-northd, the four services as
processes, driven through ``vpcbus fip ...`` as a user would. A FIP on a VM becomes a
``dnat_and_snat`` row on the project's router, ``ovn-trace`` shows the VM's outbound traffic
translated to the FIP instead of the default-gw EIP, bad requests get clear errors
and leave nothing, fixing the cause makes a FIP ready without a restart, and deleting FIPs and
the project leaves no NAT row and no FIP EIP behind.

Tests share one stack (module fixtures) and run in file order.
"""

from __future__ import annotations

import signal

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus import tracing
from vpcbus.client import Client, member_at
from vpcbus.common import EXIT_TIMEOUT
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto.members import WorkloadSpec

pytestmark = [pytest.mark.connected]

ORG, PROJECT = "fips", "web"
REF = f"{ORG}/{PROJECT}"
GATEWAY_MAC = "02:65:00:00:00:01"
ROUTER = f"{ORG}-{PROJECT}"


vpcbus = helpers.vpcbus  # the CLI, as a user runs it


def fip_rows(ovn: OvnCentral) -> list[tuple[str, str]]:
    rows = helpers.nb_rows(ovn, "NAT", "type,external_ip,logical_ip,external_ids")
    return sorted(
        (str(r["external_ip"]), str(r["logical_ip"]))
        for r in rows
        if r["type"] == "dnat_and_snat"
        and helpers.ids(r).get("vpcbus-project") == f"{ORG}.{PROJECT}"
    )


async def test_a_fip_on_a_vm_is_a_nat_row_and_inbound_packets_reach_the_vm(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    await helpers.create_ready(client, helpers.spec(ORG, PROJECT))
    nic = WorkloadSpec(organization=ORG, project=PROJECT, kind="vm", name="app")
    watch = await client.watch(ORG, PROJECT)
    try:
        published = await client.attach(nic)
        statuses = await watch.until(
            member_at(nic.member, published.generation, services=("ipam", "vpc")), timeout=30
        )
    finally:
        await watch.stop()
    facts = statuses["ipam"].addresses
    assert facts is not None
    app_ip = facts.workloads[0].ip_address

    done = await vpcbus(service_env, "fip", "create", "-p", REF, "ssh", "--vm", "app")
    assert done.returncode == 0, done.stderr
    external = done.stdout.split()[2]
    assert done.stdout.startswith(f"fip ssh: {external} -> {app_ip} (app/default) via eip fip-ssh-")
    assert fip_rows(ovn) == [(external, app_ip)]

    listed = await vpcbus(service_env, "fip", "get", "-p", REF)
    head, row = listed.stdout.splitlines()[:2]
    assert head.split()[:4] == ["NAME", "TARGET", "IP", "EXTERNAL"]
    assert row.split()[:6] == ["ssh", app_ip, external, "app", "default", "true"]
    eips = await vpcbus(service_env, "get", "eip", "-p", REF)
    assert any(line.split()[:2] == [line.split()[0], external] and "Exclusive" in line
               for line in eips.stdout.splitlines())  # fmt: skip

    # The VM's own traffic leaves from the FIP, not from the default-gw EIP. (Inbound to the
    # FIP is proven with packets in tests/datapath/test_fip_datapath.py: ovn-trace 23.03 stops
    # at a gateway router's un-SNAT stage.)
    helpers.learn_gateway_mac(ovn, ROUTER, f"{ROUTER}-ext-cloud", "100.65.0.1", GATEWAY_MAC)
    out = tracing.trace(ovn.nb_db, ovn.sb_db, ORG, PROJECT, tracing.Packet(app_ip, "8.8.8.8"))
    assert out.snat == external, out.raw


async def test_bad_fip_requests_get_clear_errors_and_build_nothing(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    before = fip_rows(ovn)
    both = await vpcbus(service_env, "fip", "create", "-p", REF, "x", "--ip", "10.0.0.9",
                        "--vm", "app")  # fmt: skip
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    cases = {
        ("--ip", "10.0.0.1"): "TargetReserved",
        ("--ip", "10.9.0.9"): "TargetOutOfSubnet",
        ("--vm", "ghost"): "TargetNotFound",
        ("--ip", "10.0.0.50", "--eip", "nope"): "EipNotFound",
        ("--ip", "10.0.0.51", "--network", "mars"): "UnknownNetwork",
    }
    for i, (args, reason) in enumerate(cases.items()):
        done = await vpcbus(service_env, "fip", "create", "-p", REF, f"bad{i}", *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert f"fip bad{i}: {reason}: " in done.stderr, done.stderr
        gone = await vpcbus(service_env, "fip", "delete", "-p", REF, f"bad{i}")
        assert gone.returncode == 0, gone.stderr
    assert fip_rows(ovn) == before  # nothing half-built


async def test_a_shared_eip_conflict_resolves_itself_when_the_first_fip_goes(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    created = await vpcbus(service_env, "eip", "create", "-p", REF, "pub")
    assert created.returncode == 0, created.stderr
    pub = created.stdout.split()[2]
    first = await vpcbus(service_env, "fip", "create", "-p", REF, "one", "--ip", "10.0.0.60",
                         "--eip", "pub")  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = await vpcbus(service_env, "fip", "create", "-p", REF, "two", "--ip", "10.0.0.61",
                          "--eip", "pub")  # fmt: skip
    assert second.returncode == 1 and "EipInUse: " in second.stderr
    assert "taken by FIP one" in second.stderr
    assert (pub, "10.0.0.60") in fip_rows(ovn) and (pub, "10.0.0.61") not in fip_rows(ovn)

    assert (await vpcbus(service_env, "fip", "delete", "-p", REF, "one")).returncode == 0

    async def two_took_over() -> bool:  # no new event for "two": IPAM re-resolves it
        return (pub, "10.0.0.61") in fip_rows(ovn)

    assert await helpers.eventually(two_took_over, timeout=30)
    assert (pub, "10.0.0.60") not in fip_rows(ovn)


async def test_deleting_fips_and_the_project_leaves_no_nat_row_or_fip_eip(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    # `fip delete` returns when the rule is gone from NAT, not when IPAM released the FIP:
    # with NAT stopped it times out and the rule stays; NAT back, the rule goes.
    before = fip_rows(ovn)
    assert len(before) == 2  # ssh's and two's
    nat = services.procs["nat"]
    nat.send_signal(signal.SIGSTOP)
    try:
        stuck = await vpcbus(service_env, "fip", "delete", "-p", REF, "ssh", "--timeout", "3")
        rows = fip_rows(ovn)  # before NAT runs again
    finally:
        nat.send_signal(signal.SIGCONT)
    assert stuck.returncode == EXIT_TIMEOUT, (stuck.stdout, stuck.stderr)
    assert rows == before
    done = await vpcbus(service_env, "fip", "delete", "-p", REF, "two")
    assert done.returncode == 0, done.stderr
    assert fip_rows(ovn) == []
    eips = await vpcbus(service_env, "get", "eip", "-p", REF)
    assert "fip-ssh-" not in eips.stdout
    await helpers.delete_done(client, ORG, PROJECT)
    owned = helpers.owned_rows(ovn)
    assert all(f"{ORG}.{PROJECT}" not in keys for keys in owned.values()), owned
