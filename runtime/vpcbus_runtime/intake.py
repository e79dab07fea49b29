"""Decoding lifecycle events: bytes on a subject -> a validated event, or a clear rejection.

Pure (no I/O); used by :mod:`.controller`. The rejection message names the offending
field the way a user wrote it, so it can go straight into a status or a CLI message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from vpcbus_proto import names, subjects
from vpcbus_proto.events import (
    EVENT_MODELS,
    MAX_EVENT_BYTES,
)
from vpcbus_proto.members import (
    EipRef,
    EipSpec,
    FipRef,
    FipSpec,
    LbServiceRef,
    LbServiceSpec,
    WorkloadRef,
    WorkloadSpec,
)
from vpcbus_proto.projects import ProjectSpec


@dataclass(frozen=True)
class Accepted:
    organization: str
    name: str
    event_id: str
    generation: int | None
    spec: ProjectSpec | None  # None: deletion


@dataclass(frozen=True)
class AcceptedMember:
    """A member event: ``workload``/``eip``/``fip``/``service`` is None for a removal."""

    organization: str
    name: str  # the project
    member: str
    event_id: str
    generation: int | None
    workload: WorkloadSpec | None = None
    eip: EipSpec | None = None
    fip: FipSpec | None = None
    service: LbServiceSpec | None = None


#: What each lifecycle subject carries (one table for the services, schemas and docs).
_MODELS = EVENT_MODELS


@dataclass(frozen=True)
class Rejected:
    reason: str
    message: str
    event_id: str | None = None
    organization: str | None = None
    name: str | None = None


def _utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot: lone surrogates (``"\\ud800"``)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _identity(raw: object, *, member: bool) -> tuple[str | None, str | None, str | None]:
    """Best-effort org, project and id from a payload that failed validation."""
    if not isinstance(raw, dict):
        return None, None, None
    data = raw.get("data")
    org = data.get("organization") if isinstance(data, dict) else None
    name = data.get("project" if member else "name") if isinstance(data, dict) else None
    event_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    if event_id is not None and not _utf8(event_id):
        event_id = None  # it could not be echoed in the error record
    if not (isinstance(org, str) and isinstance(name, str)):
        return None, None, event_id
    if not (names.is_label(org) and names.is_label(name)):
        return None, None, event_id
    return org, name, event_id


def describe(exc: ValidationError) -> str:
    """One line per problem: ``data.cidrBlock: cidrBlock '10.0.0.0/33' is not ...``."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "event"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def decode(subject: str, data: bytes) -> Accepted | AcceptedMember | Rejected:
    if len(data) > MAX_EVENT_BYTES:
        return Rejected("EventTooLarge", f"event is {len(data)} bytes; limit {MAX_EVENT_BYTES}")
    model = _MODELS.get(subject)
    if model is None:
        return Rejected("UnknownSubject", f"no lifecycle event is published on {subject!r}")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # also: too deep, int of > 4300 digits
        return Rejected("InvalidEvent", f"event is not JSON: {exc}")
    is_member = subject in subjects.MEMBER_EVENTS
    org, name, event_id = _identity(raw, member=is_member)
    try:
        event = model.model_validate(raw)
    except ValidationError as exc:
        in_data = all(err["loc"][:1] == ("data",) for err in exc.errors())
        reason = "InvalidSpec" if org and name and in_data else "InvalidEvent"
        return Rejected(reason, describe(exc), event_id, org, name)
    data_org: str = event.data.organization
    data_project: str = event.data.project if is_member else event.data.name
    expected = subjects.event_type(subject)
    if event.type != expected:
        return Rejected(
            "TypeMismatch",
            f"event type {event.type!r} does not match subject {subject!r} (want {expected!r})",
            event.id,
            data_org,
            data_project,
        )
    if isinstance(event.data, WorkloadRef | EipRef | FipRef | LbServiceRef):
        return AcceptedMember(
            data_org,
            data_project,
            event.data.member,
            event.id,
            event.generation,
            workload=event.data if isinstance(event.data, WorkloadSpec) else None,
            eip=event.data if isinstance(event.data, EipSpec) else None,
            fip=event.data if isinstance(event.data, FipSpec) else None,
            service=event.data if isinstance(event.data, LbServiceSpec) else None,
        )
    spec = event.data if isinstance(event.data, ProjectSpec) else None
    return Accepted(data_org, data_project, event.id, event.generation, spec)
