"""Service discovery over ``nats.micro``: every service answers ``$SRV.PING|INFO|STATS`` with
real figures, and ``vpcbus.svc.<service>.status`` with its view of one project.

Real nats-server, real OVN, the four services as processes (the module's own stack).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus.client import Client
from vpcbus_runtime.controller import percentile

pytestmark = [pytest.mark.connected]

SERVICES = ("ipam", "vpc", "nat", "dns")


async def test_every_service_answers_ping_and_info_with_its_status_endpoint(
    services: ServiceProcs, client: Client
) -> None:
    for service in SERVICES:
        ping = json.loads((await client.nc.request(f"$SRV.PING.vpcbus-{service}", b"")).data)
        assert ping["name"] == f"vpcbus-{service}"
        info = json.loads((await client.nc.request(f"$SRV.INFO.vpcbus-{service}", b"")).data)
        subjects = {e["subject"] for e in info["endpoints"]}
        assert f"vpcbus.svc.{service}.status" in subjects
        assert ("vpcbus.svc.dns.zone" in subjects) == (service == "dns")


async def test_stats_count_events_reconciles_latency_and_consumer_lag(
    services: ServiceProcs, client: Client
) -> None:
    before = {s: await helpers.service_figures(client, s) for s in SERVICES}
    await helpers.create_ready(client, helpers.spec("disc", "stats"))

    for service in SERVICES:
        after = await helpers.service_figures(client, service)
        assert after["events"] >= before[service]["events"] + 1, service
        assert after["reconciles"] >= before[service]["reconciles"] + 1, service
        latency = after["reconcile_ms"]
        assert latency["count"] >= 1 and 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        assert after["queue_depth"] >= 0 and after["in_flight"] >= 0

    handled = datetime.now(UTC)

    async def caught_up() -> bool:  # the lag is read from the server every few seconds
        consumer = (await helpers.service_figures(client, "ipam"))["consumer"]
        return (
            consumer is not None
            and datetime.fromisoformat(consumer["at"]) > handled  # read after the events
            and consumer["pending"] == 0 == consumer["ack_pending"]
        )

    assert await helpers.eventually(caught_up, timeout=15.0)


async def test_status_endpoint_returns_the_services_view_of_a_project(
    services: ServiceProcs, client: Client
) -> None:
    await helpers.create_ready(client, helpers.spec("disc", "view", cidr="10.9.0.0/24"))
    body = json.dumps({"organization": "disc", "project": "view"}).encode()

    async def settled() -> bool:
        view = json.loads((await client.nc.request("vpcbus.svc.ipam.status", body)).data)
        return view["queued"] is False

    assert await helpers.eventually(settled)
    view = json.loads((await client.nc.request("vpcbus.svc.ipam.status", body)).data)
    assert view["service"] == "ipam" and view["project"] == "disc.view"
    assert view["record"]["spec"]["cidrBlock"] == "10.9.0.0/24"
    assert view["status"]["state"] == "Ready"
    assert view["status"]["generation"] == view["record"]["generation"]
    assert view["members"] == {}

    unknown = json.loads(
        (
            await client.nc.request(
                "vpcbus.svc.vpc.status", b'{"organization": "disc", "project": "nope"}'
            )
        ).data
    )
    assert unknown["record"] is None and unknown["status"] is None

    bad = await client.nc.request("vpcbus.svc.vpc.status", b"not json")
    assert bad.headers is not None and bad.headers.get("Nats-Service-Error-Code") == "400"


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )


async def test_a_reconcilers_own_log_lines_carry_the_project_and_reconcile_id(
    services: ServiceProcs, client: Client
) -> None:
    await helpers.create_ready(client, helpers.spec("disc", "logs", cidr="10.8.0.0/24"))
    await helpers.delete_done(client, "disc", "logs")

    def lines() -> list[dict[str, Any]]:
        text = (services.logdir / "vpc.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    torn = [r for r in lines() if r["event"] == "vpc torn down" and r.get("project") == "disc.logs"]
    assert torn, "the VPC reconciler logs its teardown"
    rid = torn[-1]["reconcile_id"]
    assert any(r["event"] == "reconciled" and r.get("reconcile_id") == rid for r in lines()), (
        "the controller's line of the same run has the same reconcile id"
    )
    assert torn[-1]["service"] == "vpc"
