"""The subjects of :mod:`.subjects` as AsyncAPI channels, messages and operations.

Used by :mod:`.asyncapi`, which also lets :mod:`.endpoints` add the request/reply subjects
to the same :class:`Catalogue`. Addresses come from :mod:`.subjects` (its constants, and its
subject functions called with ``{parameter}`` tokens), the stream that stores a channel from
the streams' subject filters, payloads from :data:`.schemas.MODELS`. Who sends and receives
is declared in :data:`CONSUMES`, :data:`WATCHES` and :data:`POOL_USAGE_PUBLISHER`: facts the
services own (their reconcilers' ``consumes`` and ``watches``) and proto may not import;
``tests/contract/test_asyncapi.py`` compares them with the services.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel

from vpcbus_proto import errors, events, schemas, status, subjects
from vpcbus_proto.subjects import EventFamily, ServiceName

#: The message model of each lifecycle subject.
EVENT_MODELS: Final[dict[str, type[BaseModel]]] = dict(events.EVENT_MODELS)
#: The event families each service consumes (its reconciler's ``consumes``).
CONSUMES: Final[dict[ServiceName, tuple[EventFamily, ...]]] = {
    "ipam": ("project", "workload", "eip", "fip", "service"),
    "vpc": ("project",),
    "nat": ("project",),
    "dns": ("project",),
}
#: The peers whose status changes re-run a service's project (its reconciler's ``watches``).
WATCHES: Final[dict[ServiceName, tuple[ServiceName, ...]]] = {
    "ipam": ("vpc",),
    "vpc": ("ipam", "nat", "dns"),
    "nat": ("ipam", "vpc"),
    "dns": ("ipam", "vpc"),
}
#: The service that accounts the external pools.
POOL_USAGE_PUBLISHER: Final[ServiceName] = "ipam"
#: Each JetStream stream: the subject filters it captures and what it keeps.
STREAMS: Final[dict[str, tuple[Sequence[str], str]]] = {
    subjects.EVENTS_STREAM: (subjects.EVENT_SUBJECTS, "the lifecycle events users publish"),
    subjects.STATUS_STREAM: (subjects.STATUS_SUBJECTS, "the last message per subject"),
    subjects.ERRORS_STREAM: (subjects.ERROR_SUBJECTS, "rejected events and dead letters"),
}
#: The actor that is not a service: any NATS client (the CLI, a portal, a dashboard).
CLIENT: Final = "client"
#: JetStream drops a second publish with the same value within its duplicate window.
MSG_ID_HEADER: Final = "Nats-Msg-Id"
#: The reply channel of every request (its address is the requester's inbox).
REPLIES: Final = "replyInbox"

PARAMETER = re.compile(r"\{(\w+)\}")
_ROLE = re.compile(r":[a-z]+:`[~.]?([^`]+)`")


@dataclass
class Catalogue:
    """Channels, messages and operations by id, as the AsyncAPI document holds them."""

    channels: dict[str, Any] = field(default_factory=dict)
    messages: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)

    def channel(self, cid: str, address: str | None, title: str, text: str) -> None:
        """A channel; each ``{name}`` in its address refers to a parameter component."""
        stream = stream_of(address) if address is not None else None
        where = f"JetStream stream `{stream}`" if stream else "no stream (core NATS)"
        found: dict[str, Any] = {
            "address": address,
            "title": title,
            "description": f"{text}\n\nStored in: {where}.",
            "messages": {},
        }
        names = PARAMETER.findall(address or "")
        if names:
            found["parameters"] = {name: ref("parameters", name) for name in names}
        _put(self.channels, cid, found)

    def message(
        self, cid: str, mid: str, title: str, text: str, payload: str, headers: str = ""
    ) -> None:
        """A message component, carried on channel ``cid``."""
        found = {
            "name": mid,
            "title": title,
            "summary": text.split("\n\n")[0],
            "description": text,
            "contentType": "application/json",
            "payload": ref("schemas", payload),
            **({"headers": ref("schemas", headers)} if headers else {}),
        }
        _put(self.messages, mid, found)
        self.channels[cid]["messages"][mid] = ref("messages", mid)

    def operation(
        self,
        actor: str,
        action: str,
        cid: str,
        summary: str,
        *,
        reply: str = "",
        queue: str = "",
    ) -> None:
        """``actor`` sends or receives every message of channel ``cid``."""
        found: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [
                {"$ref": f"#/channels/{cid}/messages/{mid}"}
                for mid in self.channels[cid]["messages"]
            ],
            "summary": summary,
            "tags": [ref("tags", actor)],
        }
        if reply:
            found["reply"] = {
                "channel": {"$ref": f"#/channels/{REPLIES}"},
                "messages": [{"$ref": f"#/channels/{REPLIES}/messages/{reply}"}],
            }
        if queue:
            found["bindings"] = {"nats": {"queue": queue, "bindingVersion": "0.1.0"}}
        _put(self.operations, f"{actor}{action.capitalize()}{cid[0].upper()}{cid[1:]}", found)


def _put(table: dict[str, Any], key: str, value: dict[str, Any]) -> None:
    if key in table:
        raise ValueError(f"{key} is defined twice")
    table[key] = value


def add_subjects(cat: Catalogue) -> None:
    """The subjects of :mod:`.subjects`: lifecycle events, statuses, errors."""
    for part in (_lifecycle, _status, _errors):
        part(cat)


def _lifecycle(cat: Catalogue) -> None:
    for subject, model in EVENT_MODELS.items():
        cid = camel(subject)
        cat.channel(cid, subject, subject, doc(model))
        cat.message(
            cid,
            cid,
            subject,
            f"{doc(model)}\n\nA CloudEvent whose `type` is `{subjects.event_type(subject)}`; "
            f"send its `id` also as the `{MSG_ID_HEADER}` header. Bodies over "
            f"{events.MAX_EVENT_BYTES // 1024} KiB are rejected.",
            schema_name(model),
            "EventHeaders",
        )
        cat.operation(CLIENT, "send", cid, f"Publish `{subject}` (with JetStream).")
        for service, families in CONSUMES.items():
            if subject.split(".")[0] in families:
                cat.operation(
                    service,
                    "receive",
                    cid,
                    f"{service} folds the event into its record and reconciles the project; "
                    "an invalid or conflicting event is rejected on its error subject.",
                )


def _status(cat: Catalogue) -> None:
    address = subjects.status_subject("{service}", "{organization}", "{project}")
    cat.channel("serviceStatus", address, "Service status", doc(status))
    cat.message(
        "serviceStatus",
        "serviceStatus",
        "Service status",
        doc(status.ServiceStatus),
        schema_name(status.ServiceStatus),
    )
    cat.operation(CLIENT, "receive", "serviceStatus", "Read or watch statuses.")
    for service in subjects.SERVICES:
        cat.operation(
            service,
            "send",
            "serviceStatus",
            f"{service} publishes its status of a project (`service` = `{service}`).",
        )
        if WATCHES[service]:
            filters = ", ".join(f"`{subjects.status_filter(p)}`" for p in WATCHES[service])
            cat.operation(
                service,
                "receive",
                "serviceStatus",
                f"{service} re-runs a project when a peer's status changes: {filters}.",
            )
    usage = doc(status.PoolUsage)
    cat.channel("poolUsage", subjects.pool_usage_subject("{pool}"), "Pool usage", usage)
    cat.message("poolUsage", "poolUsage", "Pool usage", usage, schema_name(status.PoolUsage))
    cat.operation(POOL_USAGE_PUBLISHER, "send", "poolUsage", "Publish a pool's accounting.")
    cat.operation(CLIENT, "receive", "poolUsage", "Read a pool's accounting.")


def _errors(cat: Catalogue) -> None:
    kinds = [
        ("rejectedEvents", "rejectedEvent", subjects.error_subject, "Rejected events",
         "An event was invalid or conflicting; nothing was built from it (`kind` `rejected`)."),
        ("deadLetters", "deadLetter", subjects.dlq_subject, "Dead letters",
         "An event kept failing and was given up (`kind` `dead-letter`)."),
    ]  # fmt: skip
    for cid, mid, make, title, text in kinds:
        text = f"{text} {doc(errors.ErrorEvent)}"
        cat.channel(cid, make("{service}", "{organization}", "{project}"), title, text)
        cat.message(cid, mid, title, text, schema_name(errors.ErrorEvent))
        cat.operation(CLIENT, "receive", cid, f"Read {title.lower()}.")
        for service in subjects.SERVICES:
            cat.operation(service, "send", cid, f"{service} publishes its {title.lower()}.")


def schema_name(model: type[BaseModel]) -> str:
    """The model's name in :data:`.schemas.MODELS` (and in ``components/schemas``)."""
    return next(name for name, m in schemas.MODELS.items() if m is model)


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def stream_of(address: str) -> str | None:
    """The stream that captures ``address`` (its parameters filled in), if any."""
    subject = PARAMETER.sub("x", address)
    for name, (filters, _) in STREAMS.items():
        if any(matches(f, subject) for f in filters):
            return name
    return None


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


def doc(obj: object) -> str:
    """A docstring as CommonMark: RST roles and double backticks become code spans."""
    text = inspect.cleandoc(obj.__doc__ or "")
    return _ROLE.sub(r"`\1`", text).replace("``", "`").replace("::\n", ":\n")


def camel(subject: str) -> str:
    first, *rest = subject.split(".")
    return first + "".join(word.capitalize() for word in rest)
