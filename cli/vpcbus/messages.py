"""What one bus message says, in one line: the pure half of ``vpcbus watch``.

:func:`describe` reads any message of the subject catalogue (a lifecycle event, a status, an
error or dead letter, a pool's usage) into a :class:`Line`; :func:`render` prints it as
``time type service org/project summary``. Events are decoded exactly as the services decode
them (:func:`vpcbus_runtime.intake.decode`), so an event they will reject shows as
``invalid`` with their reason. A payload that is not what its subject promises becomes a
``malformed`` line; nothing here raises on what arrives.

Used by :mod:`vpcbus.watching`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.status import MemberStatus, PoolUsage, ServiceStatus
from vpcbus_runtime import intake

#: Member changes listed on one status line; the rest are counted.
MAX_MEMBERS: Final = 4
#: Characters of a message or a malformed payload shown on a line.
MAX_TEXT: Final = 100

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class Line:
    kind: str  # event | status | error | dlq | usage
    summary: str
    service: str | None = None
    org: str | None = None
    project: str | None = None
    status: ServiceStatus | None = None  # a well-formed status, to tell what changed


def kind_of(subject: str) -> str:
    for kind in ("status", "error", "dlq", "usage"):
        if subject.startswith(f"vpcbus.{kind}."):
            return kind
    return "event"


def describe(subject: str, data: bytes, before: ServiceStatus | None = None) -> Line:
    """The line for one message; ``before``: the last status seen on the same subject."""
    kind = kind_of(subject)
    if kind == "event":
        return _event(subject, data)
    if kind == "usage":
        return Line(kind, _usage(subject.rsplit(".", 1)[-1], data), "ipam")
    tokens = subject.split(".")
    service, org, project = (tokens[2:5] + ["_"] * 3)[:3]
    if kind == "status":
        st = _parse(ServiceStatus, data)
        if isinstance(st, str):
            return Line(kind, st, service, org, project)
        return Line(kind, _status(st, before), service, org, project, st)
    err = _parse(ErrorEvent, data)
    if isinstance(err, str):
        return Line(kind, err, service, org, project)
    tries = f", {err.deliveries} deliveries" if kind == "dlq" else ""
    summary = f"{err.reason} on {err.subject}{tries}: {_cut(err.message)}"
    return Line(kind, summary, service, org, project)


def _parse(model: type[_M], data: bytes) -> _M | str:
    """The model, or ``malformed <Model> (<first problem>): <payload>``."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        problem = f"{where}: {first['msg']}" if where else first["msg"]
        return f"malformed {model.__name__} ({_cut(problem)}): {_cut(repr(_text(data)))}"


def _event(subject: str, data: bytes) -> Line:
    verdict = intake.decode(subject, data)
    if isinstance(verdict, intake.Rejected):
        summary = f"{subject} invalid ({verdict.reason}): {_cut(verdict.message)}"
        return Line("event", summary, None, verdict.organization, verdict.name)
    facts: list[str] = []
    if isinstance(verdict, intake.AcceptedMember):
        facts.append(slashed(verdict.member))
        if verdict.workload is not None:
            facts += _facts(ip=verdict.workload.ip, mac=verdict.workload.mac)
        if verdict.eip is not None:
            facts += _facts(network=verdict.eip.external_network_type)
    elif verdict.spec is not None:
        spec = verdict.spec
        facts += _facts(cidr=spec.cidr_block, egress=spec.egress_network_type, gw=spec.gw_lan_ip)
    facts += _facts(gen=verdict.generation)
    return Line("event", " ".join([subject, *facts]), None, verdict.organization, verdict.name)


def _facts(**values: object) -> list[str]:
    return [f"{k} {v}" for k, v in values.items() if v is not None]


def _usage(pool: str, data: bytes) -> str:
    usage = _parse(PoolUsage, data)
    if isinstance(usage, str):
        return f"pool {pool} {usage}"
    u = usage.usage
    return (
        f"pool {pool} {u.cidr} capacity {u.capacity} in use {u.in_use} "
        f"quarantined {u.quarantined} available {u.available}"
    )


def _status(st: ServiceStatus, before: ServiceStatus | None) -> str:
    text = f"{st.state} {st.reason} gen {st.generation}"
    if st.message and st.state != "Ready":
        text += f": {_cut(st.message)}"
    changed = member_changes(before.members if before else [], st.members)
    if changed:
        text += f"; members {changed}"
    return text


def member_changes(old: Sequence[MemberStatus], new: Sequence[MemberStatus]) -> str:
    """``vm/a/default Ready, eip/x Error NoAvailableIPs, -pod/b/default``: what differs."""
    was = {m.member: m for m in old}
    now = {m.member: m for m in new}
    parts = [_member(m) for key, m in now.items() if was.get(key) != m]
    parts += [f"-{slashed(key)}" for key in was if key not in now]
    more = f", +{len(parts) - MAX_MEMBERS} more" if len(parts) > MAX_MEMBERS else ""
    return ", ".join(parts[:MAX_MEMBERS]) + more


def _member(m: MemberStatus) -> str:
    why = f" {m.reason}" if m.state in ("Pending", "Error") else ""
    return f"{slashed(m.member)} {m.state}{why}"


def slashed(member: str) -> str:
    """``workload.vm.web.default`` -> ``vm/web/default``; ``eip.x`` -> ``eip/x``."""
    return member.removeprefix("workload.").replace(".", "/")


def unchanged(before: ServiceStatus, after: ServiceStatus) -> bool:
    """Nothing a watcher is told about differs (the message and IPAM's facts may)."""
    return (before.state, before.reason, before.generation, before.members) == (
        after.state, after.reason, after.generation, after.members,
    )  # fmt: skip


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def render(when: datetime, line: Line) -> str:
    """``12:00:01 status ipam acme/shop  Ready Reconciled gen 1`` (time in UTC)."""
    where = "-" if line.kind == "usage" else f"{line.org or '_'}/{line.project or '_'}"
    return f"{when:%H:%M:%S} {line.kind:<6} {line.service or '-':<4} {where}  {line.summary}"


def raw_json(subject: str, data: bytes) -> str:
    """``{"subject": ..., "data": ...}``: the payload parsed, or as text when not JSON."""
    try:
        body: object = json.loads(data)
    except (ValueError, RecursionError):
        body = _text(data)
    return json.dumps({"subject": subject, "data": body})
