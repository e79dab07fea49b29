"""The dashboard's state (:mod:`vpcbus.boards`) and fan-out (:class:`vpcbus.webserving.Hub`),
without NATS: bus messages in, table rows, event and error entries out."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vpcbus import boards, webserving
from vpcbus_proto import events, subjects
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import (
    AddressFacts,
    ExternalAddress,
    FloatingIp,
    LoadBalancer,
    PoolUsage,
    PortState,
    ServiceStatus,
    State,
    Usage,
)
from vpcbus_proto.subjects import ServiceName

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
GW = ExternalAddress(
    name="default-gw", ip_address="100.65.0.2", network="cloud", prefix_length=16,
    gateway="100.65.0.1", ready=True, ownership_type="Shared", owners=["snat"],
)  # fmt: skip


def status(
    service: ServiceName,
    state: State = "Ready",
    *,
    generation: int = 1,
    reason: str = "Reconciled",
    project: str = "shop",
    eips: tuple[ExternalAddress, ...] = (GW,),
) -> ServiceStatus:
    facts = None
    if service == "ipam":
        facts = AddressFacts(
            cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1",
            eips=list(eips),
        )  # fmt: skip
    return ServiceStatus(
        service=service, organization="acme", project=project, namespace=f"acme-{project}",
        generation=generation, state=state, reason=reason, message=f"{service} says so",
        observed_at=NOW, addresses=facts,
    )  # fmt: skip


def take_status(board: boards.Board, st: ServiceStatus) -> boards.Update | None:
    subject = subjects.status_subject(st.service, st.organization, st.project)
    return board.take(subject, st.model_dump_json(by_alias=True).encode(), NOW, 7)


def error(kind: str = "rejected", reason: str = "InvalidSpec") -> bytes:
    return ErrorEvent(
        service="ipam", kind="rejected" if kind == "rejected" else "dead-letter", reason=reason,
        message="cidrBlock is not a network", subject="project.created", event_id="e-1",
        stream_sequence=41, organization="acme", project="shop", time=NOW,
    ).model_dump_json(by_alias=True).encode()  # fmt: skip


def project_event(name: str = "shop", generation: int = 1) -> bytes:
    spec = ProjectSpec(
        organization="acme", name=name, cidr_block="10.0.0.0/24", egress_network_type="cloud"
    )
    body = events.new_event(subjects.PROJECT_CREATED, spec, generation=generation)
    return json.dumps(body).encode()


def services(row: dict[str, Any]) -> dict[str, str]:
    return {s: v["state"] for s, v in row["services"].items()}


# -- statuses -> rows ------------------------------------------------------------------------


def test_four_ready_services_make_a_ready_row_with_ipam_facts() -> None:
    board = boards.Board()
    for service in subjects.SERVICES:
        update = take_status(board, status(service))
    assert update is not None
    kind, row = update
    assert kind == "project"
    assert row == board.snapshot()["projects"][0]
    assert row["id"] == "acme/shop" and row["namespace"] == "acme-shop"
    assert row["ready"] is True and row["deleted"] is False
    assert services(row) == dict.fromkeys(subjects.SERVICES, "Ready")
    assert row["services"]["vpc"] == {
        "state": "Ready", "reason": "Reconciled", "message": "vpc says so", "generation": 1,
        "observedAt": NOW.isoformat(),
    }  # fmt: skip
    assert (row["cidr"], row["egress"], row["gateway"]) == ("10.0.0.0/24", "cloud", "10.0.0.1")
    assert row["eips"] == [
        {
            "name": "default-gw", "ipAddress": "100.65.0.2", "network": "cloud", "ready": True,
            "reason": "", "ownershipType": "Shared", "owners": ["snat"],
        }
    ]  # fmt: skip
    assert row["fips"] == [] and row["loadBalancers"] == []


def test_a_row_is_not_ready_while_a_service_lags_errs_or_is_missing() -> None:
    board = boards.Board()
    take_status(board, status("ipam"))
    _, row = take_status(board, status("vpc", "Pending", reason="WaitingForIpam")) or ("", {})
    assert services(row) == {"ipam": "Ready", "vpc": "Pending"}  # nat and dns: no status yet
    assert row["ready"] is False and row["services"]["vpc"]["reason"] == "WaitingForIpam"
    take_status(board, status("vpc"))
    take_status(board, status("nat", "Error", reason="NatFailed"))
    _, row = take_status(board, status("dns", generation=2)) or ("", {})
    assert row["ready"] is False
    _, row = take_status(board, status("nat")) or ("", {})
    assert row["ready"] is False  # dns is at generation 2, the others at 1
    for service in ("ipam", "vpc", "nat"):
        _, row = take_status(board, status(service, generation=2)) or ("", {})
    assert row["ready"] is True


def test_a_project_without_ipam_has_no_addresses() -> None:
    board = boards.Board()
    _, row = take_status(board, status("dns")) or ("", {})
    assert (row["cidr"], row["eips"], row["fips"], row["loadBalancers"]) == (None, [], [], [])


def test_deleted_everywhere_then_erased_removes_the_row() -> None:
    board = boards.Board()
    for service in subjects.SERVICES:
        _, row = take_status(board, status(service, "Deleted", reason="Deleted")) or ("", {})
    assert row["deleted"] is True and row["ready"] is False
    for service in ("ipam", "vpc", "nat"):
        update = board.take(subjects.status_subject(service, "acme", "shop"), b"", NOW)
    assert update is not None and update[0] == "project" and set(update[1]["services"]) == {"dns"}
    gone = board.take(subjects.status_subject("dns", "acme", "shop"), b"", NOW)
    assert gone == ("project", {"id": "acme/shop", "removed": True})
    assert board.snapshot()["projects"] == []
    assert board.take(subjects.status_subject("dns", "acme", "shop"), b"", NOW) is None


def test_rows_are_sorted_and_a_later_status_replaces_the_earlier() -> None:
    board = boards.Board()
    for project in ("zoo", "app"):
        take_status(board, status("ipam", "Pending", project=project))
    take_status(board, status("ipam", project="zoo", eips=()))
    rows = board.snapshot()["projects"]
    assert [r["id"] for r in rows] == ["acme/app", "acme/zoo"]
    assert services(rows[1]) == {"ipam": "Ready"} and rows[1]["eips"] == []


# -- what is not what its subject promises ---------------------------------------------------


def test_a_malformed_status_is_an_error_entry_and_changes_no_row() -> None:
    board = boards.Board()
    take_status(board, status("ipam"))
    before = board.snapshot()["projects"]
    ipam = subjects.status_subject("ipam", "acme", "shop")
    for subject, data in [
        (ipam, b"{not json"),
        (ipam, b'{"service": "ipam"}'),
        (subjects.status_subject("vpc", "acme", "shop"), status("ipam").model_dump_json().encode()),
        ("vpcbus.status.ipam.acme", b"{}"),
        ("vpcbus.status.router.acme.shop", b"{}"),
    ]:
        update = board.take(subject, data, NOW, 3)
        assert update is not None and update[0] == "failure", subject
        entry = update[1]
        assert entry["kind"] == "malformed" and entry["reason"] == "Malformed"
        assert entry["subject"] == subject and entry["message"]
    assert board.snapshot()["projects"] == before
    errors = board.snapshot()["errors"]
    assert "malformed ServiceStatus" in errors[0]["message"]
    assert "the status is about ipam acme/shop" in errors[2]["message"]
    assert (errors[0]["service"], errors[0]["project"]) == ("ipam", "acme/shop")
    assert (errors[4]["service"], errors[4]["project"]) == (None, "acme/shop")


@given(
    subject=st.sampled_from([
        "vpcbus.status.ipam.acme.shop", "vpcbus.status.x", "vpcbus.usage.pool.cloud",
        "vpcbus.error.nat.acme.shop", "vpcbus.dlq.vpc._._", "project.created", "eip.deleted",
        "workload.attached", "project", "elsewhere.entirely",
    ]),
    data=st.one_of(st.binary(max_size=64), st.just(b"{}"), st.just(b"[]"), st.just(b"null")),
)  # fmt: skip
def test_any_payload_on_any_subject_never_raises(subject: str, data: bytes) -> None:
    board = boards.Board()
    update = board.take(subject, data, NOW)
    json.dumps(board.snapshot())
    if update is not None:
        json.dumps(update[1])


# -- events, errors, pools -------------------------------------------------------------------


def test_events_are_summed_up_flagged_and_only_the_newest_kept() -> None:
    board = boards.Board(max_events=3)
    kind, entry = board.take("project.created", project_event(), NOW, 10) or ("", {})
    assert kind == "event"
    assert entry == {
        "seq": 10, "time": NOW.isoformat(), "subject": "project.created",
        "project": "acme/shop", "invalid": False,
        "summary": "project.created cidr 10.0.0.0/24 egress cloud gen 1",
    }  # fmt: skip
    _, bad = board.take("project.created", b"{oops", NOW, 11) or ("", {})
    assert bad["invalid"] is True and bad["project"] is None
    assert bad["summary"].startswith("project.created invalid (InvalidEvent)")
    _, mismatched = board.take("eip.created", project_event(), NOW, 12) or ("", {})
    assert mismatched["invalid"] is True
    board.take("project.created", project_event("app"), NOW, 13)
    assert [e["seq"] for e in board.snapshot()["events"]] == [11, 12, 13]


def test_error_and_dead_letter_records_become_entries() -> None:
    board = boards.Board(max_errors=2)
    kind, entry = board.take("vpcbus.error.ipam.acme.shop", error(), NOW, 5) or ("", {})
    assert kind == "failure"
    assert entry == {
        "seq": 5, "time": NOW.isoformat(), "kind": "rejected", "service": "ipam",
        "project": "acme/shop", "reason": "InvalidSpec", "message": "cidrBlock is not a network",
        "subject": "project.created", "eventId": "e-1", "eventSequence": 41, "deliveries": 1,
    }  # fmt: skip
    board.take("vpcbus.dlq.ipam.acme.shop", error("dead-letter", "ReconcileFailed"), NOW, 6)
    board.take("vpcbus.dlq.nat._._", b"garbage", NOW, 7)
    kinds = [(e["seq"], e["kind"], e["reason"]) for e in board.snapshot()["errors"]]
    assert kinds == [(6, "dead-letter", "ReconcileFailed"), (7, "malformed", "Malformed")]
    assert board.snapshot()["errors"][1]["project"] == "_/_"


def test_pool_usage_replaces_the_pools_last() -> None:
    board = boards.Board()
    subject = subjects.pool_usage_subject("cloud")
    for in_use in (1, 3):
        usage = PoolUsage(
            pool="cloud", gateway="100.65.0.1", observed_at=NOW,
            usage=Usage(cidr="100.65.0.0/16", capacity=10, in_use=in_use, quarantined=1,
                        available=9 - in_use),
        )  # fmt: skip
        kind, pool = board.take(subject, usage.model_dump_json().encode(), NOW) or ("", {})
    assert kind == "pool"
    assert board.snapshot()["pools"] == [pool]
    assert (pool["pool"], pool["inUse"], pool["available"], pool["quarantined"]) == (
        "cloud", 3, 6, 1,
    )  # fmt: skip
    kind, entry = board.take(subject, b"{}", NOW) or ("", {})
    assert (kind, entry["kind"], entry["project"], entry["service"]) == (
        "failure", "malformed", None, None,
    )  # fmt: skip
    assert board.snapshot()["pools"] == [pool]


def test_other_subjects_are_ignored() -> None:
    board = boards.Board()
    for subject in ("vpcbus.svc.ipam.status", "$SRV.PING", "route.created"):
        assert board.take(subject, b"{}", NOW) is None
    assert board.snapshot() == {
        "services": list(subjects.SERVICES), "projects": [], "pools": [], "events": [],
        "errors": [],
    }  # fmt: skip


# -- the hub and the page --------------------------------------------------------------------


async def test_hub_fans_out_and_cuts_off_a_page_that_falls_behind() -> None:
    hub = webserving.Hub(boards.Board())
    snapshot, fast = hub.listen()
    _, slow = hub.listen()
    assert snapshot["projects"] == [] and hub.listeners == 2
    update: boards.Update = ("pool", {"pool": "cloud"})
    for _ in range(webserving.MAX_BACKLOG):
        hub.take(update)
        hub.take(None)  # nothing new: nothing sent
    assert fast.qsize() == slow.qsize() == webserving.MAX_BACKLOG
    while not fast.empty():
        assert fast.get_nowait() == update
    hub.take(update)
    assert hub.listeners == 1
    assert [slow.get_nowait()] == [None] and slow.empty()  # None: disconnect and resync
    assert [fast.get_nowait()] == [update]
    hub.leave(fast)
    assert hub.listeners == 0
    await asyncio.sleep(0)


def test_the_page_loads_nothing_from_elsewhere_and_writes_no_markup() -> None:
    page = webserving.page().decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert not re.search(r"@import|url\(|fetch\(|XMLHttpRequest|WebSocket", page)
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page
    assert 'new EventSource("events")' in page
    for kind in ("snapshot", "project", "pool", "event", "failure"):
        assert re.search(rf"^\s+{kind}\(", page, re.M), kind


def test_a_row_lists_the_projects_fips_and_load_balancers() -> None:
    board = boards.Board()
    st = status("ipam")
    assert st.addresses is not None
    facts = st.addresses.model_copy(update={
        "fips": [FloatingIp(name="ssh", eip="fip-ssh-abcde", external_ip="100.65.0.9",
                            target_ip="10.0.0.5", ready=True),
                 FloatingIp(name="db", eip="fip-db-abcde", ready=False, reason="TargetNotFound")],
        "services": [LoadBalancer(name="web", eip="default-gw", ingress_ip="100.65.0.2",
                                  endpoints=["10.0.0.5"], ready=True,
                                  ports=[PortState(port=80, target_port=8080, protocol="TCP",
                                                   ready=True)])],
    })  # fmt: skip
    _, row = take_status(board, st.model_copy(update={"addresses": facts})) or ("", {})
    assert row["fips"] == ["ssh 100.65.0.9 -> 10.0.0.5", "db ? -> ? (TargetNotFound)"]
    assert row["loadBalancers"] == ["web 100.65.0.2 80/TCP"]
