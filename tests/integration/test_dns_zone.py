"""A project's zone end to end without a chassis: real nats-server, real OVN NB, the four
services as processes, the CLI as a user runs it. The zone follows workloads and services,
``vpcbus dns list|resolve`` answer from the switch's DNS row, a row changed by hand is
repaired by the resync, a malformed zone request gets error 400, and a deleted project leaves
no DNS row and no DNS record. Real packets: tests/datapath/test_project_dns.py.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus.client import Client
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import endpoints
from vpcbus_proto.zones import ZONE_ENDPOINT

pytestmark = [pytest.mark.connected]

ORG, PROJECT = "zones", "shop"
REF, KEY = f"{ORG}/{PROJECT}", f"{ORG}.{PROJECT}"
ZONE = f"{ORG}-{PROJECT}.svc.cluster.local"

vpcbus = helpers.vpcbus  # the CLI, as a user runs it


def dns_row(ovn: OvnCentral) -> tuple[str, dict[str, str]] | None:
    """The project's DNS row: its uuid and records (None when it has none)."""
    for row in helpers.nb_rows(ovn, "DNS", "_uuid,records,external_ids"):
        if helpers.ids(row).get("vpcbus-project") == KEY:
            records = row["records"]
            uuid = row["_uuid"]
            assert isinstance(records, list) and isinstance(uuid, list)
            return str(uuid[1]), {str(k): str(v) for k, v in records[1]}
    return None


async def listed(env: dict[str, str]) -> dict[str, tuple[str, list[str]]]:
    done = await vpcbus(env, "dns", "list", "-p", REF, "-o", "json")
    assert done.returncode == 0, done.stderr
    zone = json.loads(done.stdout)
    return {r["name"]: (r["source"], r["addresses"]) for r in zone["records"]}


async def test_zone_follows_workloads_and_services_and_drift_is_repaired(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    await helpers.create_ready(client, helpers.spec(ORG, PROJECT))
    attach = await vpcbus(service_env, "workload", "attach", "-p", REF, "--kind", "vm", "db")
    assert attach.returncode == 0, attach.stderr
    create = await vpcbus(service_env, "svc", "create", "-p", REF, "shop", "--port", "443",
                          "--endpoint", "10.0.0.9", "--bind-default-gw")  # fmt: skip
    assert create.returncode == 0, create.stderr
    ipam = await client.status("ipam", ORG, PROJECT)
    assert ipam is not None and ipam.addresses is not None
    db = next(w.ip_address for w in ipam.addresses.workloads if w.name == "db")
    gw_eip = ipam.addresses.eip("default-gw")
    assert gw_eip is not None
    want = {
        f"gateway.{ZONE}": ("gateway", ["10.0.0.1"]),
        f"db.{ZONE}": ("workload", [db]),
        f"shop.{ZONE}": ("service", ["10.0.0.9"]),
        f"shop-ext.{ZONE}": ("service-ext", [gw_eip.ip_address]),
    }

    async def zone_is(expected: dict[str, tuple[str, list[str]]]) -> bool:
        return await listed(service_env) == expected

    assert await helpers.eventually(lambda: zone_is(want))
    row = dns_row(ovn)
    assert row is not None
    assert row[1] == {name: " ".join(ips) for name, (_, ips) in want.items()}

    # without VPCBUS_DNS_UPSTREAM the workloads ask the router, which answers the zone only
    dns = await client.status("dns", ORG, PROJECT)
    assert dns is not None and dns.resolver is not None
    assert dns.resolver.nameservers == ["10.0.0.1"]
    resolved = await vpcbus(service_env, "dns", "resolve", "-p", REF, "shop-ext")
    assert resolved.returncode == 0 and gw_eip.ip_address in resolved.stdout

    # drift: a stale name added and a wanted one changed by hand; the resync repairs both
    ovn.nbctl("set", "DNS", row[0], f'records:"ghost.{ZONE}"="10.0.0.66"',
              f'records:"db.{ZONE}"="10.0.0.77"')  # fmt: skip
    assert await helpers.eventually(lambda: zone_is(want), timeout=30)

    # the service goes: its names go; the workload goes: its name goes
    gone = await vpcbus(service_env, "svc", "delete", "-p", REF, "shop")
    assert gone.returncode == 0, gone.stderr
    detach = await vpcbus(service_env, "workload", "detach", "-p", REF, "--kind", "vm", "db")
    assert detach.returncode == 0, detach.stderr
    only_gateway = {f"gateway.{ZONE}": ("gateway", ["10.0.0.1"])}
    assert await helpers.eventually(lambda: zone_is(only_gateway))

    # the project goes: no DNS row, no DNS record, and `dns list` says so
    await helpers.delete_done(client, ORG, PROJECT)
    assert dns_row(ovn) is None

    async def no_record() -> bool:
        keys = await helpers.kv_keys(client)
        return not any(KEY in k for k in keys["vpcbus-dns"])

    assert await helpers.eventually(no_record)
    after = await vpcbus(service_env, "dns", "list", "-p", REF)
    assert after.returncode == 1 and "not served" in after.stdout


async def test_a_malformed_zone_request_gets_error_400(
    services: ServiceProcs, client: Client
) -> None:
    nc = client.nc
    for body in (b"not json", b'{"organization": "Bad Org", "project": "x"}', b"{}"):
        reply = await nc.request(ZONE_ENDPOINT, body, timeout=5)
        assert reply.headers is not None
        assert reply.headers.get(endpoints.ERROR_CODE_HEADER) == "400", body
    ok = await nc.request(ZONE_ENDPOINT, b'{"organization": "no", "project": "such"}', timeout=5)
    assert not (ok.headers or {}).get(endpoints.ERROR_HEADER)
    assert json.loads(ok.data)["served"] is False
