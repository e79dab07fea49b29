"""What the dashboard shows, folded from bus messages: the pure half of ``vpcbus dashboard``.

A :class:`Board` takes each message the dashboard reads (a service's status, a pool's usage, a
lifecycle event, an error or dead letter) and returns the :data:`Update` to send to the open
pages, or None when the page shows nothing new. :meth:`Board.snapshot` is everything, for a page
that just connected and for ``GET /api/state``. It is all JSON-ready data, named as on the wire
(camelCase):

* ``projects``: a row per project: each service's state, reason, message and generation, IPAM's
  CIDR, egress, gateway and EIPs, its floating IPs (``fips``: ``name ext -> target``) and
  LoadBalancer services (``loadBalancers``: ``name ip ports``), each marked when not ready.
* ``events``: the last :data:`MAX_EVENTS` lifecycle events, oldest first, each summed up as
  ``vpcbus watch`` does (:func:`vpcbus.messages.describe`) and flagged ``invalid`` when the
  services will reject it.
* ``errors``: the last :data:`MAX_ERRORS` error and dead-letter records, plus any message that
  is not what its subject promises (kind ``malformed``).
* ``pools``: each external pool's accounting.

Nothing here raises on what arrives. Used by :mod:`vpcbus.dashboard`.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from vpcbus import messages
from vpcbus_proto import names, subjects
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.status import (
    AddressFacts,
    PoolUsage,
    ServiceStatus,
    project_deleted,
    project_ready,
)
from vpcbus_runtime import intake

#: Lifecycle events and error records a board keeps (the newest).
MAX_EVENTS: Final = 50
MAX_ERRORS: Final = 50

Json = dict[str, Any]
#: ``(kind, data)``: the kind names a server-sent event (``project``, ``pool``, ``event``,
#: ``failure``: an entry of ``errors``, as ``error`` is ``EventSource``'s own); ``data`` is one
#: row or entry of :meth:`Board.snapshot`.
Update = tuple[str, Json]


class Board:
    """Statuses by project and service, pools, and the newest events and errors."""

    def __init__(self, *, max_events: int = MAX_EVENTS, max_errors: int = MAX_ERRORS) -> None:
        self._statuses: dict[str, dict[str, ServiceStatus]] = {}
        self._pools: dict[str, Json] = {}
        self._events: deque[Json] = deque(maxlen=max_events)
        self._errors: deque[Json] = deque(maxlen=max_errors)

    def take(self, subject: str, data: bytes, when: datetime, seq: int = 0) -> Update | None:
        """Fold one message in; ``when`` and ``seq``: when and where its stream stored it."""
        kind = messages.kind_of(subject)
        if kind == "status":
            return self._status(subject, data, when, seq)
        if kind == "usage":
            return self._usage(subject, data, when, seq)
        if kind in ("error", "dlq"):
            return self._error(subject, data, when, seq)
        if f"{subject.split('.', 1)[0]}.*" in subjects.EVENT_SUBJECTS:
            return self._event(subject, data, when, seq)
        return None

    def snapshot(self) -> Json:
        return {
            "services": list(subjects.SERVICES),
            "projects": [row(key, self._statuses[key]) for key in sorted(self._statuses)],
            "pools": [self._pools[name] for name in sorted(self._pools)],
            "events": list(self._events),
            "errors": list(self._errors),
        }

    # -- folding ---------------------------------------------------------------------------

    def _status(self, subject: str, data: bytes, when: datetime, seq: int) -> Update | None:
        tokens = subject.split(".")
        if len(tokens) != 5 or tokens[2] not in subjects.SERVICES:
            return self._malformed(subject, data, when, seq, "not a status subject")
        service, org, project = tokens[2:]
        key = f"{org}/{project}"
        if not data:  # a purged or erased status: the service no longer reports on it
            found = self._statuses.get(key, {})
            if found.pop(service, None) is None:
                return None
            if not found:
                del self._statuses[key]
                return "project", {"id": key, "removed": True}
            return "project", row(key, found)
        try:
            st = ServiceStatus.model_validate_json(data)
        except ValidationError:
            return self._malformed(subject, data, when, seq)
        if (st.service, st.organization, st.project) != (service, org, project):
            named = f"{st.service} {st.organization}/{st.project}"
            return self._malformed(subject, data, when, seq, f"the status is about {named}")
        self._statuses.setdefault(key, {})[service] = st
        return "project", row(key, self._statuses[key])

    def _usage(self, subject: str, data: bytes, when: datetime, seq: int) -> Update | None:
        try:
            usage = PoolUsage.model_validate_json(data)
        except ValidationError:
            return self._malformed(subject, data, when, seq)
        u = usage.usage
        pool = {
            "pool": usage.pool, "cidr": u.cidr, "gateway": usage.gateway,
            "capacity": u.capacity, "inUse": u.in_use, "quarantined": u.quarantined,
            "available": u.available, "observedAt": usage.observed_at.isoformat(),
        }  # fmt: skip
        self._pools[usage.pool] = pool
        return "pool", pool

    def _event(self, subject: str, data: bytes, when: datetime, seq: int) -> Update:
        line = messages.describe(subject, data)
        project = f"{line.org}/{line.project}" if line.org and line.project else None
        entry = {
            "seq": seq, "time": when.isoformat(), "subject": subject, "project": project,
            "summary": line.summary,
            "invalid": isinstance(intake.decode(subject, data), intake.Rejected),
        }  # fmt: skip
        self._events.append(entry)
        return "event", entry

    def _error(self, subject: str, data: bytes, when: datetime, seq: int) -> Update:
        try:
            err = ErrorEvent.model_validate_json(data)
        except ValidationError:
            return self._malformed(subject, data, when, seq)
        org, project = err.organization or subjects.UNKNOWN, err.project or subjects.UNKNOWN
        entry = {
            "seq": seq, "time": err.time.isoformat(), "kind": err.kind, "service": err.service,
            "project": f"{org}/{project}", "reason": err.reason, "message": err.message,
            "subject": err.subject, "eventId": err.event_id,
            "eventSequence": err.stream_sequence, "deliveries": err.deliveries,
        }  # fmt: skip
        self._errors.append(entry)
        return "failure", entry

    def _malformed(
        self, subject: str, data: bytes, when: datetime, seq: int, why: str | None = None
    ) -> Update:
        """An error entry for a message that is not what its subject promises."""
        tokens = subject.split(".")
        service, org, project = (tokens[2:5] + [subjects.UNKNOWN] * 3)[:3]
        entry = {
            "seq": seq, "time": when.isoformat(), "kind": "malformed",
            "service": service if service in subjects.SERVICES else None,
            "project": None if tokens[1] == "usage" else f"{org}/{project}",
            "reason": "Malformed", "message": why or messages.describe(subject, data).summary,
            "subject": subject, "eventId": None, "eventSequence": None, "deliveries": 1,
        }  # fmt: skip
        self._errors.append(entry)
        return "failure", entry


# -- rows ----------------------------------------------------------------------------------


def row(key: str, statuses: dict[str, ServiceStatus]) -> Json:
    """One project as the table shows it; ``key`` is ``org/project``."""
    org, _, name = key.partition("/")
    ipam = statuses.get("ipam")
    facts = ipam.addresses if ipam is not None else None
    return {
        "id": key,
        "organization": org,
        "project": name,
        "namespace": names.namespace(org, name),
        "ready": project_ready(statuses),
        "deleted": project_deleted(statuses),
        "services": {
            service: {
                "state": st.state,
                "reason": st.reason,
                "message": st.message,
                "generation": st.generation,
                "observedAt": st.observed_at.isoformat(),
            }
            for service, st in statuses.items()
        },
        **_addresses(facts),
    }


def _addresses(facts: AddressFacts | None) -> Json:
    if facts is None:
        return {"cidr": None, "egress": None, "gateway": None, "eips": [], "workloads": 0,
                "fips": [], "loadBalancers": []}  # fmt: skip
    eips = [
        {
            "name": e.name,
            "ipAddress": e.ip_address,
            "network": e.network,
            "ready": e.ready,
            "reason": e.reason,
            "ownershipType": e.ownership_type,
            "owners": e.owners,
        }
        for e in facts.eips
    ]
    return {
        "cidr": facts.cidr_block,
        "egress": facts.egress_network_type,
        "gateway": facts.gateway_ip,
        "eips": eips,
        "workloads": len(facts.workloads),
        "fips": [
            f"{f.name} {f.external_ip or '?'} -> {f.target_ip or '?'}"
            + ("" if f.ready else f" ({f.reason})")
            for f in facts.fips
        ],
        "loadBalancers": [
            f"{s.name} {s.ingress_ip or '<pending>'} "
            + ",".join(f"{p.port}/{p.protocol}" for p in s.ports)
            + ("" if s.ready else f" ({s.reason})")
            for s in facts.services
        ],
    }
