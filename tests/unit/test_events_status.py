"""CloudEvents envelopes, per-service status and the project readiness rule."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vpcbus_proto import subjects
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.events import MAX_EVENT_BYTES, ProjectDeleted, ProjectUpserted, new_event
from vpcbus_proto.projects import ProjectRef, ProjectSpec
from vpcbus_proto.status import (
    AddressFacts,
    ExternalAddress,
    ServiceStatus,
    State,
    parse_status,
    project_deleted,
    project_ready,
)

SPEC = ProjectSpec(
    organization="acme", name="shop", cidr_block="10.0.0.0/24", egress_network_type="cloud"
)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
STATES: tuple[State, ...] = get_args(State)


def test_new_event_is_a_cloudevent_for_its_subject() -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC, generation=3, source="/test")
    assert body["specversion"] == "1.0"
    assert body["type"] == "io.vpcbus.project.created"
    assert body["source"] == "/test"
    assert body["datacontenttype"] == "application/json"
    assert body["generation"] == 3
    assert uuid.UUID(body["id"])  # a fresh UUID by default
    assert datetime.fromisoformat(body["time"]).tzinfo is not None
    # data is the camelCase wire form, without nulls
    assert body["data"] == {
        "organization": "acme",
        "name": "shop",
        "cidrBlock": "10.0.0.0/24",
        "egressNetworkType": "cloud",
    }
    parsed = ProjectUpserted.model_validate(json.loads(json.dumps(body)))
    assert parsed.data == SPEC and parsed.generation == 3 and parsed.id == body["id"]


def test_new_event_without_generation_omits_it_and_ids_are_unique() -> None:
    a = new_event(subjects.PROJECT_DELETED, SPEC.ref)
    b = new_event(subjects.PROJECT_DELETED, SPEC.ref)
    assert "generation" not in a
    assert a["id"] != b["id"]
    assert new_event(subjects.PROJECT_DELETED, SPEC.ref, event_id="e-1")["id"] == "e-1"
    parsed = ProjectDeleted.model_validate(a)
    assert parsed.generation is None
    assert parsed.data == ProjectRef(organization="acme", name="shop")


def test_a_spec_sent_as_a_deletion_is_not_a_deletion() -> None:
    # ProjectRef forbids extra fields: the CLI must send the ref, not the spec.
    with pytest.raises(ValidationError, match="cidrBlock"):
        ProjectDeleted.model_validate(new_event(subjects.PROJECT_DELETED, SPEC))


def test_envelope_ignores_unknown_extension_attributes_but_data_does_not() -> None:
    body: dict[str, Any] = new_event(subjects.PROJECT_CREATED, SPEC)
    body["traceparent"] = "00-abc-def-01"
    assert ProjectUpserted.model_validate(body).data == SPEC
    body["data"]["colour"] = "blue"
    with pytest.raises(ValidationError, match="colour"):
        ProjectUpserted.model_validate(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("specversion", "0.3"),
        ("id", ""),
        ("id", "x" * 257),
        ("source", ""),
        ("type", ""),
        ("generation", 0),
        ("generation", -1),
        ("generation", 2**53 + 1),
        ("generation", "one"),
        ("datacontenttype", "text/plain"),
        ("data", None),
    ],
)
def test_envelope_constraints(field: str, value: object) -> None:
    body: dict[str, Any] = new_event(subjects.PROJECT_CREATED, SPEC)
    body[field] = value
    with pytest.raises(ValidationError):
        ProjectUpserted.model_validate(body)


@pytest.mark.parametrize("generation", [1, 2**53])
def test_generation_bounds_are_inclusive(generation: int) -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC, generation=generation)
    assert ProjectUpserted.model_validate(body).generation == generation


def test_max_event_bytes_leaves_room_for_any_valid_event() -> None:
    # The longest possible fields still fit with a wide margin.
    big = ProjectSpec(
        organization="o" * 31,
        name="p" * 31,
        cidr_block="100.100.100.0/24",
        egress_network_type="public",
        gw_lan_ip="100.100.100.254",
    )
    body = new_event(subjects.PROJECT_UPDATED, big, generation=2**53, event_id="i" * 256)
    body["source"] = "s" * 1024
    body["subject"] = "t" * 1024
    assert len(json.dumps(body).encode()) < MAX_EVENT_BYTES // 8


# -- status ------------------------------------------------------------------------------------


def status(service: str, generation: int = 1, state: State = "Ready") -> ServiceStatus:
    return ServiceStatus.model_validate(
        {
            "service": service,
            "organization": "acme",
            "project": "shop",
            "namespace": "acme-shop",
            "generation": generation,
            "state": state,
            "reason": "Reconciled",
            "observedAt": NOW.isoformat(),
        }
    )


def all_ready(generation: int = 1) -> dict[str, ServiceStatus]:
    return {s: status(s, generation) for s in subjects.SERVICES}


def test_project_is_ready_when_all_four_report_ready_for_one_generation() -> None:
    assert project_ready(all_ready())


@pytest.mark.parametrize("missing", subjects.SERVICES)
def test_project_is_not_ready_while_a_service_is_silent(missing: str) -> None:
    statuses = all_ready()
    del statuses[missing]
    assert not project_ready(statuses)


def test_an_extra_unknown_reporter_does_not_make_it_ready() -> None:
    statuses = all_ready()
    statuses["lb"] = status("dns")
    assert not project_ready(statuses)


@settings(deadline=None, max_examples=100)
@given(
    st.fixed_dictionaries(
        {s: st.tuples(st.integers(0, 3), st.sampled_from(STATES)) for s in subjects.SERVICES}
    )
)
def test_project_ready_rule(reports: dict[str, tuple[int, State]]) -> None:
    statuses = {s: status(s, g, st_) for s, (g, st_) in reports.items()}
    same_generation = len({g for g, _ in reports.values()}) == 1
    every_ready = all(state == "Ready" for _, state in reports.values())
    assert project_ready(statuses) == (same_generation and every_ready)
    assert project_deleted(statuses) == all(state == "Deleted" for _, state in reports.values())


def test_project_deleted_of_nobody_is_vacuously_true() -> None:
    assert project_deleted({})
    assert not project_ready({})


def test_status_serialises_camel_case_and_round_trips() -> None:
    eip = ExternalAddress(
        name="default-gw",
        ip_address="100.65.0.2",
        network="cloud",
        prefix_length=16,
        gateway="100.65.0.1",
        ready=True,
        ownership_type="Shared",
        owners=["Snat/acme-shop"],
    )
    facts = AddressFacts(
        cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1", eips=[eip]
    )
    original = status("ipam").model_copy(update={"addresses": facts})
    wire = json.loads(original.model_dump_json(by_alias=True))
    assert {"observedAt", "addresses"} <= set(wire)
    assert wire["addresses"]["gatewayIp"] == "10.0.0.1"
    assert wire["addresses"]["eips"][0]["ipAddress"] == "100.65.0.2"
    assert ServiceStatus.model_validate(wire) == original
    assert facts.eip("default-gw") == eip
    assert facts.eip("other") is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("service", "lb"), ("state", "Done"), ("generation", -1), ("unknown", 1)],
)
def test_status_rejects_bad_values(field: str, value: object) -> None:
    body = json.loads(status("vpc").model_dump_json(by_alias=True))
    body[field] = value
    with pytest.raises(ValidationError):
        ServiceStatus.model_validate(body)


def test_error_event_wire_form() -> None:
    err = ErrorEvent(
        service="nat",
        kind="rejected",
        reason="InvalidSpec",
        message="data.cidrBlock: bad",
        subject="project.created",
        event_id="e-1",
        stream_sequence=7,
        time=NOW,
    )
    wire = json.loads(err.model_dump_json(by_alias=True))
    assert wire["eventId"] == "e-1" and wire["streamSequence"] == 7 and wire["deliveries"] == 1
    assert ErrorEvent.model_validate(wire) == err
    with pytest.raises(ValidationError):
        ErrorEvent.model_validate({**wire, "kind": "fatal"})


def _status() -> ServiceStatus:
    return ServiceStatus(
        service="vpc",
        organization="acme",
        project="shop",
        namespace="acme-shop",
        generation=1,
        state="Ready",
        reason="Converged",
        observed_at=datetime.now(UTC),
    )


def test_parse_status_believes_a_status_only_on_its_own_subject() -> None:
    good = _status()
    body = good.model_dump_json(by_alias=True).encode()
    assert parse_status("vpcbus.status.vpc.acme.shop", body) == good
    assert parse_status("vpcbus.status.nat.acme.shop", body) is None  # another service's
    assert parse_status("vpcbus.status.vpc.acme.other", body) is None  # another project's
    assert parse_status("vpcbus.status.vpc.acme.shop", b"not json {") is None
    assert parse_status("vpcbus.status.vpc.acme.shop", b'{"service": "vpc"}') is None
    assert parse_status("vpcbus.status.vpc.acme.shop", b"") is None


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_parse_status_never_raises(data: bytes) -> None:
    assert parse_status("vpcbus.status.vpc.acme.shop", data) is None
