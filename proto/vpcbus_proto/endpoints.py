"""The request/reply endpoints of a running service, as AsyncAPI channels.

Every service process registers with nats.micro (:mod:`vpcbus_runtime.service`) as
``vpcbus-<service>``, which answers ``$SRV.PING|INFO|STATS`` (discovery and counters), and
adds the endpoints ``vpcbus.svc.<service>.status`` (request ``{organization, project}``,
reply the service's view of that project) and ``vpcbus.svc.<service>.doctor``
(:mod:`.doctor`). These are core NATS request/reply subjects,
not stored in any stream.

The runtime and nats-py own these facts (proto may import neither), so they are restated
here; ``tests/contract/test_asyncapi.py`` compares them with the runtime's source and with
the replies nats-py builds.
"""

from __future__ import annotations

from typing import Any, Final

from vpcbus_proto import channels, doctor, subjects, zones

#: The status endpoint (``{service}``: the service's name).
STATUS_ENDPOINT: Final = "vpcbus.svc.{service}.status"
#: The nats.micro service name.
MICRO_NAME: Final = "vpcbus-{service}"
#: nats.micro's control subjects: ``$SRV.<verb>``, ``$SRV.<verb>.<name>``, ``…<name>.<id>``.
MICRO_PREFIX: Final = "$SRV"
MICRO_VERBS: Final = ("PING", "INFO", "STATS")
#: nats.micro's default queue group: one instance of a service answers an endpoint request.
MICRO_QUEUE_GROUP: Final = "q"
#: nats.micro reports a failed request in these reply headers (the body is then empty).
ERROR_HEADER: Final = "Nats-Service-Error"
ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"


def micro_type(verb: str) -> str:
    """The ``type`` of a nats.micro reply, e.g. ``io.nats.micro.v1.ping_response``."""
    return f"io.nats.micro.v1.{verb.lower()}_response"


def _string(description: str | None = None, **more: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"type": "string", **more}
    if description:
        found["description"] = description
    return found


def _nullable_ref(schema: str) -> dict[str, Any]:
    return {"anyOf": [{"$ref": f"#/components/schemas/{schema}"}, {"type": "null"}]}


def _object(properties: dict[str, Any], description: str, **more: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **more,
    }


_METADATA = {"type": "object", "additionalProperties": {"type": "string"}}
_NAMES = [MICRO_NAME.format(service=s) for s in subjects.SERVICES]


def _identity(verb: str) -> dict[str, Any]:
    return {
        "type": {"const": micro_type(verb)},
        "id": _string("This instance's id (one per process)."),
        "name": {"enum": _NAMES},
        "version": _string("The service's version (semver)."),
        "metadata": _METADATA,
    }


#: The JSON Schemas of the bodies, by component name.
SCHEMAS: Final[dict[str, Any]] = {
    "StatusRequest": {
        "type": "object",
        "description": "Which project (both DNS labels); anything else gets error 400.",
        "properties": {"organization": _string(), "project": _string()},
        "required": ["organization", "project"],
    },
    "StatusReply": _object(
        {
            "service": {"enum": list(subjects.SERVICES), "description": "Who answered."},
            "project": _string("The project key, `<organization>.<project>`."),
            "record": {
                "type": ["object", "null"],
                "description": "The service's record of the project (what it was last asked "
                "to make of it, folded from lifecycle events); null when it has none. `spec` "
                "null: deleted (a tombstone).",
                "properties": {
                    "organization": _string(),
                    "name": _string(),
                    "generation": {"type": "integer"},
                    "event_id": _string(),
                    "spec": _nullable_ref("ProjectSpec"),
                    "deleted_at": {"type": ["string", "null"], "format": "date-time"},
                    "previous_spec": _nullable_ref("ProjectSpec"),
                },
                "required": ["organization", "name", "generation", "event_id", "spec"],
                "additionalProperties": False,
            },
            "revision": {
                "type": "integer",
                "minimum": 0,
                "description": "KV revision of the record; 0 when absent.",
            },
            "members": {
                "type": "object",
                "description": "The project's members (NICs, EIPs, FIPs, LoadBalancer services) "
                "the service knows, by member key (`workload.<kind>.<name>.<interface>`, "
                "`eip.<name>`, `fip.<name>`, `service.<name>`); one with none of `workload`, "
                "`eip`, `fip`, `service` was removed (a tombstone). Empty for services that "
                "consume no member events.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "organization": _string(),
                        "project": _string(),
                        "member": _string(),
                        "generation": {"type": "integer"},
                        "event_id": _string(),
                        "workload": _nullable_ref("WorkloadSpec"),
                        "eip": _nullable_ref("EipSpec"),
                        "fip": _nullable_ref("FipSpec"),
                        "service": _nullable_ref("LbServiceSpec"),
                        "deleted_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                    "required": ["organization", "project", "member", "generation", "event_id"],
                    "additionalProperties": False,
                },
            },
            "queued": {
                "type": "boolean",
                "description": "The project is waiting to be reconciled, being reconciled, or "
                "due again (a retry, a paced burst).",
            },
            "status": {
                **_nullable_ref("ServiceStatus"),
                "description": "What the service last published on its status subject.",
            },
        },
        "The reply of the status endpoint: the service's whole view of one project.",
    ),
    "ServiceErrorHeaders": {
        "type": "object",
        "description": "Set when the request failed; the body is then empty.",
        "properties": {
            ERROR_HEADER: _string("What went wrong."),
            ERROR_CODE_HEADER: _string(
                "400: the request is not `{organization, project}` with DNS labels (the "
                "doctor's: a `DoctorRequest`); 503: the service's backend could not be read; "
                "500: the service failed to answer."
            ),
        },
    },
    "MicroRequest": {"description": "Ignored: nats.micro answers any body, usually empty."},
    "MicroPing": _object(_identity("PING"), "nats.micro's PING reply."),
    "MicroInfo": _object(
        {
            **_identity("INFO"),
            "description": {"type": ["string", "null"]},
            "endpoints": {"type": "array", "items": {"$ref": "#/components/schemas/MicroEndpoint"}},
        },
        "nats.micro's INFO reply: the instance and its endpoints.",
    ),
    "MicroEndpoint": _object(
        {
            "name": _string(),
            "subject": _string(),
            "queue_group": _string(),
            "metadata": {"anyOf": [_METADATA, {"type": "null"}]},
        },
        "One endpoint of a nats.micro service.",
    ),
    "MicroStats": _object(
        {
            **_identity("STATS"),
            "started": _string("When the instance started (UTC).", format="date-time"),
            "endpoints": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/MicroEndpointStats"},
            },
        },
        "nats.micro's STATS reply: request counters per endpoint.",
    ),
    "MicroEndpointStats": _object(
        {
            "name": _string(),
            "subject": _string(),
            "queue_group": _string(),
            "num_requests": {"type": "integer", "minimum": 0},
            "num_errors": {"type": "integer", "minimum": 0},
            "last_error": _string("The last error, or empty."),
            "processing_time": {"type": "integer", "description": "Total, in nanoseconds."},
            "average_processing_time": {"type": "integer", "description": "In nanoseconds."},
            "data": {
                "anyOf": [{"$ref": "#/components/schemas/ServiceFigures"}, {"type": "null"}],
                "description": "The service's own figures (on its status endpoint).",
            },
        },
        "Counters of one endpoint.",
    ),
}


def _count(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "description": description}


SCHEMAS["ServiceFigures"] = _object(
    {
        "events": _count("Events this process handled."),
        "rejected": _count("Events rejected (invalid, conflicting): an error event each."),
        "stale": _count("Events ignored as older than what was already folded."),
        "dead_letters": _count("Events dead-lettered after too many failed deliveries."),
        "redelivered": _count("Events this process got more than once."),
        "reconciles": _count("Reconcile runs."),
        "unknown_projects": _count(
            "Peer statuses of projects this process has no record, members or backend objects"
            " of (their own event not taken yet): answered without a reconcile."
        ),
        "reconcile_errors": _count("Runs that ended in an Error status."),
        "reconcile_seconds": {"type": "number", "minimum": 0, "description": "Time in runs."},
        "last_error": _string("`<project>: <reason>: <message>` of the last failed run."),
        "started": _string("When the process started (UTC).", format="date-time"),
        "queue_depth": _count("Projects waiting to be reconciled."),
        "in_flight": _count("Events being handled."),
        "reconcile_ms": _object(
            {
                "count": _count("Runs in the window (the last 1,024)."),
                "p50": {"type": "number", "minimum": 0},
                "p99": {"type": "number", "minimum": 0},
                "max": {"type": "number", "minimum": 0},
            },
            "Reconcile duration over the last runs, in milliseconds.",
        ),
        "consumer": {
            "anyOf": [
                _object(
                    {
                        "pending": _count("In the stream, not yet delivered to any replica."),
                        "ack_pending": _count("Delivered, not yet acknowledged."),
                        "redelivered": _count("Delivered more than once, not yet acknowledged."),
                        "at": _string("When the server reported it.", format="date-time"),
                    },
                    "The durable events consumer (shared by the service's replicas).",
                ),
                {"type": "null"},
            ],
            "description": "Read from the server every 5 s; null until the first read.",
        },
    },
    "One service process's figures, as `$SRV.STATS` reports them.",
)


def add_endpoints(cat: channels.Catalogue) -> None:
    """The status and doctor endpoints, the DNS zone endpoint and nats.micro's control
    subjects, with their replies."""
    _status_endpoint(cat)
    _doctor_endpoint(cat)
    _zone_endpoint(cat)
    _micro(cat)


def _doctor_endpoint(cat: channels.Catalogue) -> None:
    cid = "doctorEndpoint"
    cat.channel(
        cid,
        doctor.DOCTOR_ENDPOINT,
        "Doctor endpoint",
        "Ask a service what is wrong with its backend state (`vpcbus doctor`): VPC, NAT and "
        "DNS run their own reconcile in a dry run against OVN NB (rows it would insert, change "
        "or delete), IPAM audits its address book; nothing is written. With `fix`, every "
        "project with a finding is reconciled (the normal path, statuses included) and "
        "audited again. An empty body audits every project the service knows.",
    )
    cat.message(
        cid, "doctorRequest", "Doctor request", "Which project (or all), and whether to fix.",
        "DoctorRequest",
    )  # fmt: skip
    cat.message(
        channels.REPLIES,
        "doctorReply",
        "Doctor reply",
        "The findings (after the repair, with `fix`) and what the repair fixed; error 400 "
        "for a bad request, 503 when OVN NB cannot be reached.",
        "DoctorReply",
        "ServiceErrorHeaders",
    )
    cat.operation(channels.CLIENT, "send", cid, "Ask for an audit.", reply="doctorReply")
    for service in subjects.SERVICES:
        cat.operation(
            service, "receive", cid, f"{service} audits (`service` = `{service}`).",
            reply="doctorReply", queue=MICRO_QUEUE_GROUP,
        )  # fmt: skip


def _zone_endpoint(cat: channels.Catalogue) -> None:
    cid = "zoneEndpoint"
    cat.channel(
        cid,
        zones.ZONE_ENDPOINT,
        "DNS zone endpoint",
        "Ask the DNS service what a project's switch answers (the OVN `DNS` row), each name "
        "with its owner, and how the project's workloads resolve (`vpcbus dns list|resolve`).",
    )
    cat.message(cid, "zoneRequest", "Zone request", "Which project.", "StatusRequest")
    cat.message(
        channels.REPLIES,
        "zoneReply",
        "Zone reply",
        "The served records and the resolver; error 503 when OVN NB cannot be read.",
        "ZoneReply",
        "ServiceErrorHeaders",
    )
    cat.operation(channels.CLIENT, "send", cid, "Ask for a project's zone.", reply="zoneReply")
    cat.operation(
        "dns", "receive", cid, "dns answers from OVN NB.", reply="zoneReply",
        queue=MICRO_QUEUE_GROUP,
    )  # fmt: skip


def _status_endpoint(cat: channels.Catalogue) -> None:
    cid = "statusEndpoint"
    cat.channel(
        channels.REPLIES,
        None,
        "Reply inbox",
        "The requester's reply subject (an `_INBOX.` subject its NATS client chooses).",
    )
    cat.channel(
        cid,
        STATUS_ENDPOINT,
        "Status endpoint",
        "Ask a service for its view of a project (a nats.micro endpoint; one instance "
        "of the service answers).",
    )
    cat.message(cid, "statusRequest", "Status request", "Which project.", "StatusRequest")
    cat.message(
        channels.REPLIES,
        "statusReply",
        "Status reply",
        "The service's record of the project, its members, whether it is queued and its "
        "last published status.",
        "StatusReply",
        "ServiceErrorHeaders",
    )
    cat.operation(channels.CLIENT, "send", cid, "Ask for a service's view.", reply="statusReply")
    for service in subjects.SERVICES:
        cat.operation(
            service,
            "receive",
            cid,
            f"{service} answers with its view (`service` = `{service}`).",
            reply="statusReply",
            queue=MICRO_QUEUE_GROUP,
        )


def _micro(cat: channels.Catalogue) -> None:
    prefix = MICRO_PREFIX
    for verb in MICRO_VERBS:
        cid = f"micro{verb.capitalize()}"
        cat.channel(
            cid,
            f"{prefix}.{verb}.{MICRO_NAME}",
            f"{prefix}.{verb}",
            f"nats.micro `{verb}` of a service. Every instance answers, so gather replies "
            f"until a timeout. Also answered on `{prefix}.{verb}` (every service on the "
            f"server) and `{prefix}.{verb}.<name>.<id>` (one instance).",
        )
        cat.message(cid, f"{cid}Request", f"{verb} request", "Any body.", "MicroRequest")
        cat.message(
            channels.REPLIES,
            f"{cid}Reply",
            f"{verb} reply",
            f"`type` `{micro_type(verb)}`.",
            f"Micro{verb.capitalize()}",
        )
        cat.operation(channels.CLIENT, "send", cid, f"Send `{verb}`.", reply=f"{cid}Reply")
        for service in subjects.SERVICES:
            cat.operation(service, "receive", cid, f"{service} answers.", reply=f"{cid}Reply")
