"""``vpcbus watch``'s pure half: the subscriptions its options make, the line each message
becomes, which lines a filter keeps and when a status counts as changed; and the progress
line of ``project create|delete --wait``."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from vpcbus import messages, watching
from vpcbus.common import EXIT_USAGE, CliError
from vpcbus.progress import Progress, pending
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.events import new_event
from vpcbus_proto.members import EipRef, WorkloadSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import MemberStatus, PoolUsage, ServiceStatus, State, Usage

NOW = datetime(2030, 1, 1, 12, 0, 1, tzinfo=UTC)
EVERYTHING = watching.build_filter([], service=None, org=None, project=None)


def status(
    service: str = "ipam", org: str = "acme", project: str = "shop", **kw: Any
) -> ServiceStatus:
    fields: dict[str, Any] = {
        "service": service, "organization": org, "project": project,
        "namespace": f"{org}-{project}", "generation": 1, "state": "Ready",
        "reason": "Reconciled", "observed_at": NOW, **kw,
    }  # fmt: skip
    return ServiceStatus.model_validate(fields)


def member(key: str, state: State = "Ready", reason: str = "Allocated") -> MemberStatus:
    return MemberStatus(member=key, generation=1, state=state, reason=reason)


def body(st: ServiceStatus) -> bytes:
    return st.model_dump_json(by_alias=True).encode()


def event(subject: str, data: Any, generation: int | None = None) -> bytes:
    return json.dumps(new_event(subject, data, generation=generation)).encode()


def shop(org: str = "acme", name: str = "shop", **kw: Any) -> ProjectSpec:
    return ProjectSpec(
        organization=org, name=name, cidr_block="10.0.0.0/24", egress_network_type="cloud", **kw
    )


# -- filters -----------------------------------------------------------------------------


def test_no_options_watch_every_subject_of_the_catalogue() -> None:
    assert EVERYTHING.types == watching.TYPES
    assert EVERYTHING.subjects() == [
        "project.*", "workload.*", "eip.*", "fip.*", "service.*", "vpcbus.status.*.*.*",
        "vpcbus.error.*.*.*", "vpcbus.dlq.*.*.*", "vpcbus.usage.pool.*",
    ]  # fmt: skip


def test_a_project_narrows_the_subjects_and_leaves_out_pool_usage() -> None:
    flt = watching.build_filter([], service=None, org="acme", project="shop")
    assert flt.types == ("event", "status", "error", "dlq")
    assert flt.subjects() == [
        "project.*", "workload.*", "eip.*", "fip.*", "service.*", "vpcbus.status.*.acme.shop",
        "vpcbus.error.*.acme.shop", "vpcbus.dlq.*.acme.shop",
    ]  # fmt: skip
    org = watching.build_filter(["status"], service=None, org="acme", project=None)
    assert org.subjects() == ["vpcbus.status.*.acme.*"]


def test_a_service_leaves_out_events_and_keeps_usage_only_for_ipam() -> None:
    nat = watching.build_filter([], service="nat", org=None, project=None)
    assert nat.subjects() == ["vpcbus.status.nat.*.*", "vpcbus.error.nat.*.*", "vpcbus.dlq.nat.*.*"]
    ipam = watching.build_filter([], service="ipam", org=None, project=None)
    assert ipam.types == ("status", "error", "dlq", "usage")


@pytest.mark.parametrize(
    ("types", "service", "org", "says"),
    [
        (["event"], "vpc", None, "events belong to no service"),
        (["usage"], None, "acme", "belongs to no project"),
        (["usage"], "dns", None, "is IPAM's"),
        ([], None, "acme.*", "not a lower-case DNS label"),
        ([], None, ">", "not a lower-case DNS label"),
    ],
)
def test_contradicting_or_unsafe_options_are_usage_errors(
    types: list[str], service: str | None, org: str | None, says: str
) -> None:
    with pytest.raises(CliError, match=says) as caught:
        watching.build_filter(types, service=service, org=org, project=None)
    assert caught.value.code == EXIT_USAGE


def test_types_given_twice_are_watched_once() -> None:
    flt = watching.build_filter(["status", "status"], service=None, org=None, project=None)
    assert flt.subjects() == ["vpcbus.status.*.*.*"]


# -- lines -------------------------------------------------------------------------------


def test_events_say_their_type_and_key_fields() -> None:
    created = messages.describe("project.created", event("project.created", shop(), 3))
    assert (created.kind, created.org, created.project) == ("event", "acme", "shop")
    assert created.summary == "project.created cidr 10.0.0.0/24 egress cloud gen 3"
    assert messages.render(NOW, created) == (
        "12:00:01 event  -    acme/shop  project.created cidr 10.0.0.0/24 egress cloud gen 3"
    )
    nic = WorkloadSpec(organization="acme", project="shop", kind="vm", name="web", ip="10.0.0.20")
    attached = messages.describe("workload.attached", event("workload.attached", nic))
    assert attached.summary == "workload.attached vm/web/default ip 10.0.0.20"
    assert (attached.org, attached.project) == ("acme", "shop")
    gone = EipRef(organization="acme", project="shop", name="web")
    assert messages.describe("eip.deleted", event("eip.deleted", gone)).summary == (
        "eip.deleted eip/web"
    )


def test_an_event_the_services_will_reject_says_why_and_keeps_its_project() -> None:
    raw = json.loads(event("project.created", shop()))
    raw["data"]["cidrBlock"] = "10.0.0.0/33"
    line = messages.describe("project.created", json.dumps(raw).encode())
    assert line.summary.startswith("project.created invalid (InvalidSpec): data.cidrBlock:")
    assert (line.org, line.project) == ("acme", "shop")
    garbage = messages.describe("project.created", b"\xff not json")
    assert garbage.summary.startswith("project.created invalid (InvalidEvent): event is not JSON")
    assert (garbage.org, garbage.project) == (None, None)
    assert " _/_  " in messages.render(NOW, garbage)


def test_a_status_says_state_reason_generation_and_what_changed_in_its_members() -> None:
    first = status(state="Pending", reason="WaitingForIpam", message="no subnet yet")
    line = messages.describe("vpcbus.status.vpc.acme.shop", body(first))
    assert (line.kind, line.service, line.org, line.project) == ("status", "vpc", "acme", "shop")
    assert line.summary == "Pending WaitingForIpam gen 1: no subnet yet"
    before = status(members=[member("workload.vm.a.default"), member("eip.x")])
    after = status(
        generation=2,
        members=[member("workload.vm.a.default"), member("eip.x", "Error", "NoAvailableIPs"),
                 member("workload.pod.b.default", "Pending", "ProjectNotFound")],
    )  # fmt: skip
    line = messages.describe("vpcbus.status.ipam.acme.shop", body(after), before)
    assert line.summary == (
        "Ready Reconciled gen 2; members eip/x Error NoAvailableIPs, "
        "pod/b/default Pending ProjectNotFound"
    )
    assert line.status == after


def test_member_changes_list_removals_and_count_what_does_not_fit() -> None:
    old = [member("eip.gone"), member("eip.kept")]
    new = [member("eip.kept"), *(member(f"workload.pod.p{i}.default") for i in range(5))]
    assert messages.member_changes(old, new) == (
        "pod/p0/default Ready, pod/p1/default Ready, pod/p2/default Ready, pod/p3/default Ready, "
        "+2 more"
    )
    assert messages.member_changes(old, old[1:]) == "-eip/gone"
    assert messages.member_changes(old, old) == ""


def test_errors_and_dead_letters_say_reason_subject_and_message() -> None:
    err = ErrorEvent(
        service="ipam", kind="dead-letter", reason="MaxDeliveries", message="x" * 300,
        subject="project.created", deliveries=5, organization="acme", project="shop", time=NOW,
    )  # fmt: skip
    line = messages.describe("vpcbus.dlq.ipam.acme.shop", err.model_dump_json().encode())
    assert (line.kind, line.service) == ("dlq", "ipam")
    assert line.summary == f"MaxDeliveries on project.created, 5 deliveries: {'x' * 97}..."
    rejected = messages.describe("vpcbus.error.vpc._._", err.model_dump_json().encode())
    assert rejected.summary.startswith("MaxDeliveries on project.created: x")
    assert (rejected.org, rejected.project) == ("_", "_")


def test_pool_usage_names_its_pool_and_counts() -> None:
    usage = PoolUsage(
        pool="cloud", gateway="100.65.0.1", observed_at=NOW,
        usage=Usage(cidr="100.65.0.0/16", capacity=10, in_use=3, quarantined=1, available=6),
    )  # fmt: skip
    line = messages.describe("vpcbus.usage.pool.cloud", usage.model_dump_json().encode())
    assert messages.render(NOW, line) == (
        "12:00:01 usage  ipam -  pool cloud 100.65.0.0/16 capacity 10 in use 3 quarantined 1 "
        "available 6"
    )


@pytest.mark.parametrize(
    ("subject", "payload", "says"),
    [
        ("vpcbus.status.ipam.acme.shop", b"not json {", "malformed ServiceStatus (Invalid JSON"),
        ("vpcbus.status.ipam.acme.shop", b'{"state": "Ready"}', "malformed ServiceStatus ("),
        ("vpcbus.error.ipam.acme.shop", b"[]", "malformed ErrorEvent ("),
        ("vpcbus.usage.pool.cloud", b"\xff\xfe", "pool cloud malformed PoolUsage ("),
        ("vpcbus.status.ipam", b"{}", "malformed ServiceStatus ("),
    ],
)
def test_a_malformed_payload_becomes_a_line_that_says_so(
    subject: str, payload: bytes, says: str
) -> None:
    line = messages.describe(subject, payload)
    assert says in line.summary
    assert line.status is None
    assert messages.render(NOW, line)


def test_json_lines_carry_the_subject_and_the_payload_parsed_or_as_text() -> None:
    assert json.loads(messages.raw_json("vpcbus.status.ipam.a.b", b'{"state": "Ready"}')) == {
        "subject": "vpcbus.status.ipam.a.b", "data": {"state": "Ready"},
    }  # fmt: skip
    assert json.loads(messages.raw_json("project.created", b"not json {")) == {
        "subject": "project.created", "data": "not json {",
    }  # fmt: skip


# -- the feed: filtering and status changes ----------------------------------------------


def test_a_project_filter_keeps_only_that_projects_messages() -> None:
    feed = watching.Feed(watching.build_filter([], service=None, org="acme", project="shop"))
    assert feed.take("project.created", event("project.created", shop())) is not None
    assert feed.take("project.created", event("project.created", shop(name="other"))) is None
    assert feed.take("project.created", event("project.created", shop(org="other"))) is None
    assert feed.take("project.created", b"garbage") is None  # names no project
    assert watching.Feed(EVERYTHING).take("project.created", b"garbage") is not None


def test_an_unchanged_status_is_shown_once_unless_every_status_is_asked_for() -> None:
    feed = watching.Feed(EVERYTHING)
    subject = "vpcbus.status.ipam.acme.shop"
    pending = status(state="Pending", reason="Reconciling", message="one")
    assert feed.take(subject, body(pending)) is not None
    assert feed.take(subject, body(pending)) is None
    assert feed.take(subject, body(pending.model_copy(update={"message": "two"}))) is None
    assert feed.take("vpcbus.status.vpc.acme.shop", body(pending)) is not None  # another key
    for change in ({"state": "Ready"}, {"reason": "Other"}, {"generation": 2},
                   {"members": [member("eip.x")]}):  # fmt: skip
        line = feed.take(subject, body(pending.model_copy(update=change)))
        assert line is not None, change
        feed.take(subject, body(pending))
    everything = watching.Feed(EVERYTHING, every_status=True)
    assert everything.take(subject, body(pending)) is not None
    assert everything.take(subject, body(pending)) is not None


def test_a_malformed_status_does_not_reset_what_was_seen() -> None:
    feed = watching.Feed(EVERYTHING)
    subject = "vpcbus.status.ipam.acme.shop"
    assert feed.take(subject, body(status())) is not None
    assert feed.take(subject, b"{") is not None
    assert feed.take(subject, body(status())) is None


# -- progress of project create|delete --wait ------------------------------------------


def test_the_pending_line_names_each_services_state_for_the_awaited_generation() -> None:
    statuses = {
        "ipam": status(generation=2),
        "vpc": status("vpc", generation=2, state="Pending", reason="WaitingForIpam"),
        "nat": status("nat", generation=1),
    }
    assert pending("acme/shop", 2, statuses) == (
        "waiting for acme/shop: ipam Ready, vpc Pending (WaitingForIpam), nat Ready at gen 1, dns -"
    )


def test_progress_is_quiet_for_two_seconds_then_prints_every_two() -> None:
    now = [100.0]
    out = io.StringIO()
    progress = Progress("acme/shop", 1, clock=lambda: now[0], out=out)
    for t in (100.5, 101.0, 101.9, 102.1, 103.0, 104.0, 104.2, 106.5):
        now[0] = t
        progress({})
    assert out.getvalue().splitlines() == [
        "waiting for acme/shop: ipam -, vpc -, nat -, dns - (2s)",
        "waiting for acme/shop: ipam -, vpc -, nat -, dns - (4s)",
        "waiting for acme/shop: ipam -, vpc -, nat -, dns - (6s)",
    ]
