"""``vpcbus doctor`` end to end: real nats-server, real OVN NB/SB + ovn-northd, the four services
as real processes, the CLI as a user runs it. A converged stack is clean; a row deleted and a
row changed by hand, a row owned by vpcbus for a project nobody knows and a leaked address in
IPAM's KV are each named (exit 1) without a byte of NB changing; ``--fix`` repairs them all
(exit 0 afterwards); and the dry runs never stop a service from serving events.

The periodic resync is off here (an hour), so drift made by hand stays until the doctor
repairs it. Tests share the module's stack and run in file order; organization ``doc`` is
this file's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import SERVICE_ENV, ServiceProcs
from tests.integration import helpers
from vpcbus.client import Client, member_at
from vpcbus.embedded.natsd import NatsServer
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import subjects
from vpcbus_proto.doctor import DoctorReply
from vpcbus_proto.members import WorkloadSpec

pytestmark = [pytest.mark.connected]

ORG, NAME = "doc", "shop"
KEY, NS = f"{ORG}.{NAME}", f"{ORG}-{NAME}"
WEB = WorkloadSpec(organization=ORG, project=NAME, kind="vm", name="web")
LEAK = f"subnet.{KEY}.10.0.0.77"
GHOST = "Logical_Switch/ghost-x-default"


@pytest.fixture(scope="module")
def service_env(nats_server: NatsServer, ovn: OvnCentral) -> dict[str, str]:
    """conftest's, with the periodic resync an hour apart: it would repair the drift first."""
    return {
        **os.environ, **SERVICE_ENV, "VPCBUS_RESYNC_SECONDS": "3600",
        "NATS_URL": nats_server.url, "OVN_NB_DB": ovn.nb_db,
    }  # fmt: skip


def dump(central: OvnCentral) -> str:
    argv = ["ovsdb-client", "dump", central.nb_db, "OVN_Northbound"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


async def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    """``vpcbus doctor --json ARGS``: the exit code and the report."""
    proc = await helpers.vpcbus(env, "doctor", "--json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report


def named(report: dict[str, Any], key: str = "findings") -> set[tuple[str, str, str]]:
    return {(f["service"], f["kind"], f["object"]) for f in report[key]}


async def clean(env: dict[str, str]) -> bool:
    """The doctor finds nothing (a NIC just attached may still be reaching DNS, say)."""
    code, _report = await doctor(env)
    return code == 0


async def test_a_converged_stack_is_clean_and_the_doctor_writes_nothing(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    await helpers.create_ready(client, helpers.spec(ORG, NAME))
    watch = await client.watch(ORG, NAME)
    try:
        published = await client.attach(WEB)
        done = member_at(WEB.member, published.generation, services=("ipam", "vpc"))
        await watch.until(done, timeout=30, event_id=published.event_id)
    finally:
        await watch.stop()
    assert await helpers.eventually(lambda: clean(service_env), timeout=30)
    before = dump(ovn)
    code, report = await doctor(service_env)
    assert (code, report["findings"], report["fixed"]) == (0, [], [])
    assert set(report["projects"]) == set(subjects.SERVICES)
    assert all(n >= 1 for n in report["projects"].values())
    assert dump(ovn) == before


async def test_drift_leaks_and_orphans_are_named_and_fixed(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    st = await client.statuses(ORG, NAME)
    gw = st["ipam"].addresses.eip("default-gw")  # type: ignore[union-attr]
    assert gw is not None
    snat = f"NAT/snat:10.0.0.0/24->{gw.ip_address}"
    port = f"web.{NS}"
    addresses = ovn.nbctl("get", "Logical_Switch_Port", port, "addresses")
    # By hand: a row deleted, a row changed, a row of nobody's project, a leaked address.
    ovn.nbctl("lr-nat-del", NS, "snat", "10.0.0.0/24")
    ovn.nbctl("lsp-set-addresses", port, "0e:00:00:00:00:99 10.0.0.99")
    ovn.nbctl("create", "Logical_Switch", "name=ghost-x-default",
              'external_ids={"vpcbus-owner"="vpc", "vpcbus-project"="ghost.x"}')  # fmt: skip
    kv = await client.js.key_value(subjects.IPAM_ADDRESSES_BUCKET)
    held = {"holder": "vm/ghost/default", "held": True, "at": time.time() - 3600}
    await kv.create(LEAK, json.dumps(held).encode())
    wanted = {
        ("nat", "missing", snat),
        ("vpc", "drifted", f"Logical_Switch_Port/{port}"),
        ("vpc", "orphan", GHOST),
        ("ipam", "leak", LEAK),
    }
    before = dump(ovn)
    report: dict[str, Any] = {}

    async def all_named() -> bool:  # the services' NB replicas get the changes in a moment
        nonlocal report
        code, report = await doctor(service_env)
        return code == 1 and wanted <= named(report)

    assert await helpers.eventually(all_named, timeout=30), report
    assert dump(ovn) == before  # the dry runs wrote nothing
    assert (await kv.get(LEAK)).value == json.dumps(held).encode()
    drifted = next(f for f in report["findings"] if f["kind"] == "drifted")
    assert "10.0.0.99" in drifted["detail"] and "10.0.0.2" in drifted["detail"]
    assert sum(f["object"] == GHOST for f in report["findings"]) == 1  # (cross-check: the same)
    table = await helpers.vpcbus(service_env, "doctor")
    assert table.returncode == 1
    assert all(obj in table.stdout for _s, _k, obj in wanted), table.stdout

    fixed = await helpers.vpcbus(service_env, "doctor", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    # Only the doctor repairs these two; the others a peer's status change may repair first
    # (IPAM's sweep changes its status, and VPC and NAT reconcile on it).
    assert "fixed" in fixed.stdout and LEAK in fixed.stdout and GHOST in fixed.stdout
    assert "doctor: nothing wrong" in fixed.stdout
    assert gw.ip_address in ovn.nbctl("lr-nat-list", NS)
    assert ovn.nbctl("get", "Logical_Switch_Port", port, "addresses") == addresses
    assert "ghost" not in ovn.nbctl("ls-list")
    leaked = (await kv.get(LEAK)).value
    assert leaked is not None and json.loads(leaked)["held"] is False  # released by the sweep
    code, report = await doctor(service_env)
    assert (code, report["findings"]) == (0, [])


async def test_one_project_and_bad_arguments(
    services: ServiceProcs, service_env: dict[str, str]
) -> None:
    code, report = await doctor(service_env, "-p", f"{ORG}/{NAME}")
    assert (code, report["findings"]) == (0, [])
    assert report["projects"] == dict.fromkeys(subjects.SERVICES, 1)
    code, report = await doctor(service_env, "-p", f"{ORG}/nothing-here")
    assert (code, report["findings"]) == (0, [])
    bad = await helpers.vpcbus(service_env, "doctor", "-p", "not-a-project")
    assert bad.returncode == 2 and "ORG/PROJECT" in bad.stderr


async def test_dry_runs_leave_the_services_serving_events(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    replies: list[DoctorReply] = []

    async def audit_forever() -> None:
        while True:
            for service in subjects.SERVICES:
                msg = await client.nc.request(f"vpcbus.svc.{service}.doctor", b"", timeout=30)
                replies.append(DoctorReply.model_validate_json(msg.data))

    auditing = asyncio.create_task(audit_forever())
    try:
        await helpers.create_ready(client, helpers.spec(ORG, "two", "10.1.0.0/24"))
        nic = WorkloadSpec(organization=ORG, project="two", kind="pod", name="api")
        watch = await client.watch(ORG, "two")
        try:
            published = await client.attach(nic)
            done = member_at(nic.member, published.generation, services=("ipam", "vpc"))
            await watch.until(done, timeout=30, event_id=published.event_id)
        finally:
            await watch.stop()
    finally:
        auditing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await auditing
    assert len(replies) >= len(subjects.SERVICES)  # audits ran while the project was built
    assert "doc-two" in {r["name"] for r in helpers.nb_rows(ovn, "Logical_Router")}
    assert f"api.{ORG}-two" in ovn.nbctl("lsp-list", f"{ORG}-two-default")
    assert await helpers.eventually(lambda: clean(service_env), timeout=30)
    assert all(services.alive().values())


async def test_a_deleted_router_and_shared_port_are_named_once_and_rebuilt(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    """NAT cannot check (or repair) its rule without VPC's router: it is ``blocked`` until the
    doctor's later rounds; the shared localnet port, which every project's VPC run would
    create, is named once."""
    ovn.nbctl("lr-del", f"{ORG}-two")  # its ports and NAT rule go with it
    ovn.nbctl("lsp-del", "ext-cloud-localnet")
    wanted = {
        ("vpc", "missing", f"Logical_Router/{ORG}-two"),
        ("nat", "blocked", "-"),
        ("vpc", "missing", "Logical_Switch_Port/ext-cloud-localnet"),
    }
    report: dict[str, Any] = {}

    async def all_named() -> bool:
        nonlocal report
        code, report = await doctor(service_env)
        return code == 1 and wanted <= named(report)

    assert await helpers.eventually(all_named, timeout=30), report
    blocked = next(f for f in report["findings"] if f["kind"] == "blocked")
    assert blocked["project"] == f"{ORG}.two" and "RouterMissing" in blocked["detail"]
    localnet = [f for f in report["findings"] if f["object"].endswith("ext-cloud-localnet")]
    assert len(localnet) == 1, localnet
    fixed = await helpers.vpcbus(service_env, "doctor", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "snat" in ovn.nbctl("lr-nat-list", f"{ORG}-two")
    assert "ext-cloud-localnet" in ovn.nbctl("lsp-list", "ext-cloud")


async def test_a_service_that_does_not_answer_is_exit_4(
    services: ServiceProcs, service_env: dict[str, str]
) -> None:
    services.stop("dns")
    down = await helpers.vpcbus(service_env, "doctor", "--timeout", "3")
    assert down.returncode == 4, down.stdout + down.stderr
    assert "no dns service answered vpcbus.svc.dns.doctor" in down.stderr
