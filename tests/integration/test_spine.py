"""The spine end to end: real nats-server, real OVN NB/SB + ovn-northd, the four services
as real processes. Project events in, isolated VPCs out, proven with NB rows and ovn-trace.

Tests share one stack (module fixtures) and run in file order; the last one deletes
everything and checks that NB, KV and the status stream hold nothing of it.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus import tracing
from vpcbus.client import Client, RejectedError, ready_at
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import events, subjects
from vpcbus_proto.projects import ProjectRef

pytestmark = [pytest.mark.connected]

GATEWAY_MAC = "02:65:00:00:00:01"


async def test_two_projects_with_the_same_cidr_become_ready(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    a = await helpers.create_ready(client, helpers.spec("acme", "prod"))
    b = await helpers.create_ready(client, helpers.spec("beta", "prod"))

    eip_a = a["ipam"].addresses.eip("default-gw")  # type: ignore[union-attr]
    eip_b = b["ipam"].addresses.eip("default-gw")  # type: ignore[union-attr]
    assert eip_a is not None and eip_b is not None
    assert eip_a.ip_address != eip_b.ip_address
    assert eip_a.ip_address.startswith("100.65.") and eip_a.network == "cloud"

    routers = {r["name"] for r in helpers.nb_rows(ovn, "Logical_Router")}
    switches = {s["name"] for s in helpers.nb_rows(ovn, "Logical_Switch")}
    assert {"acme-prod", "beta-prod"} <= routers
    assert {"acme-prod-default", "beta-prod-default", "ext-cloud"} <= switches

    # Nothing joins the two VPCs: each router's ports are its own, and the only switch they
    # share is the external one, through their own EIPs.
    lrps = {
        r["name"]: r
        for r in helpers.nb_rows(ovn, "Logical_Router_Port", "name,networks,external_ids")
    }
    for router, peer in (("acme-prod", "beta-prod"), ("beta-prod", "acme-prod")):
        ports = ovn.nbctl("--bare", "--columns=ports", "find", "Logical_Router", f"name={router}")
        names_ = {
            ovn.nbctl("get", "Logical_Router_Port", uuid, "name").strip('"')
            for uuid in ports.split()
        }
        assert names_ == {f"{router}-{router}-default", f"{router}-ext-cloud"}
        assert not any(peer in n for n in names_)
    assert lrps["acme-prod-acme-prod-default"]["networks"] == "10.0.0.1/24"
    assert lrps["beta-prod-beta-prod-default"]["networks"] == "10.0.0.1/24"
    assert lrps["acme-prod-ext-cloud"]["networks"] == f"{eip_a.ip_address}/16"

    nat = ovn.nbctl("lr-nat-list", "acme-prod")
    assert "snat" in nat and eip_a.ip_address in nat and "10.0.0.0/24" in nat
    routes = ovn.nbctl("lr-route-list", "acme-prod")
    assert "0.0.0.0/0" in routes and "100.65.0.1" in routes
    dns = ovn.nbctl("--bare", "--columns=records", "list", "DNS")
    assert "gateway.acme-prod.svc.cluster.local" in dns

    # Every row carries its owner and project.
    owned = helpers.owned_rows(ovn)
    assert set(owned["NAT"]) == {"acme.prod", "beta.prod"}
    assert set(owned["DNS"]) == {"acme.prod", "beta.prod"}


async def test_trace_to_internet_leaves_snatted_to_the_project_eip(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    st = await client.statuses("acme", "prod")
    eip = st["ipam"].addresses.eip("default-gw")  # type: ignore[union-attr]
    assert eip is not None
    helpers.learn_gateway_mac(ovn, "acme-prod", "acme-prod-ext-cloud", "100.65.0.1", GATEWAY_MAC)

    verdict = tracing.trace(
        ovn.nb_db, ovn.sb_db, "acme", "prod", tracing.Packet("10.0.0.10", "8.8.8.8", "tcp", 80)
    )
    assert verdict.delivered, verdict.raw
    assert verdict.snat == eip.ip_address
    assert verdict.outputs == ["ext-cloud-localnet"]
    assert verdict.datapaths[0] == "acme-prod" and "ext-cloud" in verdict.datapaths
    assert not any(dp.startswith("beta-prod") for dp in verdict.datapaths)


async def test_trace_to_the_same_private_address_never_leaves_the_project(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    # 10.0.0.11 exists in both projects' CIDR; from A it may only ever reach A's switch.
    verdict = tracing.trace(
        ovn.nb_db, ovn.sb_db, "acme", "prod", tracing.Packet("10.0.0.10", "10.0.0.11")
    )
    assert set(verdict.datapaths) <= {"acme-prod", "acme-prod-default"}, verdict.raw
    assert verdict.snat is None
    # Nobody holds 10.0.0.11 in A yet: the router asks for it on A's switch and stops there.
    assert verdict.arp_for == "10.0.0.11"
    assert not verdict.delivered


async def test_malformed_event_gets_an_error_and_the_services_keep_serving(
    services: ServiceProcs, client: Client
) -> None:
    errors = await client.nc.subscribe("vpcbus.error.>")
    await client.js.publish(subjects.PROJECT_CREATED, b"{not json", stream=subjects.EVENTS_STREAM)
    seen: set[str] = set()
    while len(seen) < 4:
        msg = await errors.next_msg(timeout=10)
        body = json.loads(msg.data)
        if body["reason"] == "InvalidEvent" and "not JSON" in body["message"]:
            seen.add(body["service"])
    await errors.unsubscribe()
    assert seen == set(subjects.SERVICES)
    assert all(services.alive().values())
    await helpers.create_ready(client, helpers.spec("acme", "after-junk"))


async def test_invalid_cidr_is_rejected_with_a_clear_status(
    services: ServiceProcs, client: Client
) -> None:
    body = events.new_event(subjects.PROJECT_CREATED, helpers.spec("acme", "badnet"))
    body["data"]["cidrBlock"] = "10.0.0.0/33"
    watch = await client.watch("acme", "badnet")
    published = await client.publish_body(subjects.PROJECT_CREATED, body)
    with pytest.raises(RejectedError) as info:
        await watch.until(ready_at(published.generation), timeout=10, event_id=published.event_id)
    await watch.stop()
    assert {e.reason for e in info.value.errors} == {"InvalidSpec"}
    assert any("cidrBlock" in e.message and "10.0.0.0/33" in e.message for e in info.value.errors)
    ipam = await client.status("ipam", "acme", "badnet")
    assert ipam is not None and ipam.state == "Error" and "cidrBlock" in ipam.message
    assert all(services.alive().values())


async def test_public_project_is_refused_while_public_is_disabled(
    services: ServiceProcs, client: Client
) -> None:
    public = helpers.spec("acme", "pub").model_copy(update={"egress_network_type": "public"})
    watch = await client.watch("acme", "pub")
    published = await client.upsert(public)
    with pytest.raises(RejectedError) as info:
        await watch.until(ready_at(published.generation), timeout=10, event_id=published.event_id)
    await watch.stop()
    assert [e.service for e in info.value.errors] == ["ipam"]
    assert "public projects are disabled" in info.value.errors[0].message
    ipam = await client.status("ipam", "acme", "pub")
    assert ipam is not None and ipam.state == "Error"
    assert ipam.reason == "PublicProjectsDisabled"
    # Nothing was built for it.
    vpc = await client.status("vpc", "acme", "pub")
    assert vpc is not None and vpc.state == "Pending" and vpc.reason == "WaitingForIpam"
    await helpers.delete_done(client, "acme", "pub")
    await helpers.create_ready(client, helpers.spec("acme", "after-public"))


async def test_same_event_twice_and_update_before_create(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    # The same event delivered twice (no Nats-Msg-Id, so the stream keeps both copies).
    body = events.new_event(subjects.PROJECT_CREATED, helpers.spec("acme", "twice"))
    raw = json.dumps(body).encode()
    await client.js.publish(subjects.PROJECT_CREATED, raw, stream=subjects.EVENTS_STREAM)
    second = await client.js.publish(subjects.PROJECT_CREATED, raw, stream=subjects.EVENTS_STREAM)
    watch = await client.watch("acme", "twice")
    statuses = await watch.until(ready_at(second.seq - 1), timeout=20)
    await watch.stop()
    assert {s.state for s in statuses.values()} == {"Ready"}
    assert (
        len([r for r in helpers.nb_rows(ovn, "Logical_Router") if r["name"] == "acme-twice"]) == 1
    )

    # With Nats-Msg-Id the stream itself drops the duplicate.
    p1 = await client.publish_body(subjects.PROJECT_CREATED, body)
    p2 = await client.publish_body(subjects.PROJECT_CREATED, body)
    assert p2.duplicate and p2.sequence == p1.sequence

    # updated (generation 2, /23) arrives before created (generation 1, /24): /23 wins.
    watch = await client.watch("acme", "ooo")
    await client.upsert(helpers.spec("acme", "ooo", "10.8.0.0/23"), update=True, generation=2)
    await client.upsert(helpers.spec("acme", "ooo", "10.8.0.0/24"), generation=1)
    statuses = await watch.until(ready_at(2), timeout=20)
    await watch.stop()
    assert statuses["ipam"].addresses is not None
    assert statuses["ipam"].addresses.cidr_block == "10.8.0.0/23"
    assert "10.8.0.0/23" in ovn.nbctl("lr-nat-list", "acme-ooo")
    assert "10.8.0.0/24" not in ovn.nbctl("lr-nat-list", "acme-ooo")


async def test_deleting_everything_leaves_nb_kv_and_status_empty(
    services: ServiceProcs, client: Client, ovn: OvnCentral
) -> None:
    projects = set(await client.all_statuses())
    assert {"acme.prod", "beta.prod"} <= projects
    for key in sorted(projects):
        org, name = key.split(".")
        await helpers.delete_done(client, org, name)

    async def empty() -> bool:
        keys = await helpers.kv_keys(client)
        return (
            not helpers.owned_rows(ovn)
            and not any(keys.values())
            and not await client.all_statuses()
        )

    assert await helpers.eventually(empty, timeout=30), (
        helpers.owned_rows(ovn),
        await helpers.kv_keys(client),
        await client.all_statuses(),
    )
    # Only the shared external switch (platform infrastructure) remains.
    assert {r["name"] for r in helpers.nb_rows(ovn, "Logical_Router")} == set()
    assert {s["name"] for s in helpers.nb_rows(ovn, "Logical_Switch")} == {"ext-cloud"}
    assert ovn.nbctl("--bare", "--columns=_uuid", "list", "NAT") == ""
    assert ProjectRef(organization="acme", name="prod").namespace == "acme-prod"
