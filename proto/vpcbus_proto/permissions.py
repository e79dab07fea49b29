"""Who may publish and subscribe to what: the least-privilege NATS permissions of each principal.

Derived from the subject catalogue (:mod:`.subjects`), who consumes and watches what
(:mod:`.channels`) and the request/reply endpoints (:mod:`.endpoints`), so a new subject or
peer changes the permissions with it. Rendered into nats-server's ``authorization`` block by
the CLI (``vpcbus nats-config``, ``vpcbus up``); ``tests/integration/test_nats_auth.py`` runs
the whole stack under them. The principals:

* ``ipam``, ``vpc``, ``nat``, ``dns``: each service reads its events through its own durable
  consumers, reads and writes only its own KV buckets, publishes only its own status, error,
  dead-letter (and, for IPAM, pool usage) subjects, reads the statuses of itself and of the
  peers it watches, and serves its own nats.micro endpoints.
* ``cli``: publishes lifecycle events, reads everything the streams hold, asks the services'
  read endpoints and nats.micro (``PING|INFO|STATS``).
* ``reader`` (dashboards): the same reads and requests, and publishes nothing.
* ``admin``: no limits (:data:`ADMIN`); ``vpcbus up`` declares the streams with it, and it
  is the operator's key.

Stream declarations: every principal but ``reader`` may create the three streams when they
are missing (``STREAM.CREATE``: a no-op when they exist), but only ``admin`` may change them
(``STREAM.UPDATE``): a service cannot shorten the events' retention or rewire the subjects.
Each service creates and updates its own durable consumers and KV buckets.

Replies go to a per-principal inbox prefix (:func:`inbox_prefix`, ``_INBOX.<principal>``),
so nobody can subscribe to another principal's replies (KV reads, endpoint answers);
answering a request someone sent is ``allow_responses``.

What subject permissions cannot say, and so stays open (checked against nats-server 2.15):

* Purging: a service removes a finished project's status with ``STREAM.PURGE`` of
  ``VPCBUS_STATUS`` and a subject filter in the request body, which permissions cannot
  see, so a service may purge any status.
* Consumers: replaying a stream (``vpcbus project list``, ``watch --since-start``, the
  dashboard, ``doctor``'s look at the records) creates an ordered consumer with
  ``CONSUMER.CREATE.<stream>``, whose body may name any consumer of that stream (the server
  then updates it: a reader could re-filter ``ipam-events``) and may set a push delivery
  subject, where the server publishes copies of stored messages whatever the creator's
  publish permissions (at worst an unparsable message on a status or error subject, which
  readers skip). Closing this needs readers without consumers (direct gets only) or an
  account of their own with sourced streams.
* Org scope: the lifecycle subjects (``project.created``) do not carry the organization (it
  is in the payload), so no NATS permission can limit a publisher to one org; a tenant-scoped
  publisher needs the org in the subject first (a contract change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from vpcbus_proto import channels, endpoints, subjects, zones
from vpcbus_proto.subjects import ServiceName

Principal = Literal["ipam", "vpc", "nat", "dns", "cli", "reader", "bridge", "admin"]
PRINCIPALS: Final[tuple[Principal, ...]] = (*subjects.SERVICES, "cli", "reader", "bridge", "admin")
#: The Kubernetes bridge's KV bucket (``vpcbus_bridge.state.BUCKET``).
BRIDGE_BUCKET: Final = "vpcbus-bridge"
#: The principal with no limits.
ADMIN: Final = "admin"

JS_API: Final = "$JS.API"
SHARED_STREAMS: Final = (subjects.EVENTS_STREAM, subjects.STATUS_STREAM, subjects.ERRORS_STREAM)


@dataclass(frozen=True)
class Permissions:
    """Subjects a principal may publish to and subscribe to (NATS wildcards allowed);
    ``allow_responses``: it may also answer the requests it receives."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True


def events_consumer(service: str) -> str:
    """The service's durable consumer of ``VPCBUS_EVENTS`` (as the runtime names it)."""
    return f"{service}-events"


def peers_consumer(service: str) -> str:
    """The service's durable consumer of its peers' statuses on ``VPCBUS_STATUS``."""
    return f"{service}-peers"


def inbox_prefix(principal: str) -> str:
    """The reply-subject prefix a principal's client uses (nats-py ``inbox_prefix``)."""
    return f"_INBOX.{principal}"


def buckets(service: ServiceName) -> tuple[str, ...]:
    """The KV buckets a service owns."""
    own = (subjects.kv_bucket(service),)
    return (*own, subjects.IPAM_ADDRESSES_BUCKET) if service == "ipam" else own


def kv_stream(bucket: str) -> str:
    """The stream behind a KV bucket (nats-py's and every client's convention)."""
    return f"KV_{bucket}"


def micro_name(service: str) -> str:
    return endpoints.MICRO_NAME.format(service=service)


def _unique(found: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(found))


def _api(*tokens: str) -> str:
    return ".".join((JS_API, *tokens))


def _declare_streams() -> list[str]:
    """Look up the three streams and create them when missing (not change them)."""
    return [_api(verb, s) for s in SHARED_STREAMS for verb in ("STREAM.INFO", "STREAM.CREATE")]


def _own_bucket(bucket: str) -> list[str]:
    stream = kv_stream(bucket)
    return [
        _api("STREAM.INFO", stream),
        _api("STREAM.CREATE", stream),
        _api("STREAM.MSG.GET", stream),
        _api("DIRECT.GET", stream),
        _api("DIRECT.GET", stream, ">"),
        *_ordered(stream),  # watch, keys
        f"$KV.{bucket}.>",
    ]


def _ordered(stream: str) -> list[str]:
    """What an ordered consumer of ``stream`` needs: create it (no name: the server names
    it) and read its info (the server's name)."""
    return [_api("CONSUMER.CREATE", stream), _api("CONSUMER.INFO", stream, "*")]


def _own_consumer(stream: str, durable: str) -> list[str]:
    return [
        _api("CONSUMER.DURABLE.CREATE", stream, durable),
        _api("CONSUMER.INFO", stream, durable),
        _api("CONSUMER.MSG.NEXT", stream, durable),
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _served(service: str) -> str:
    """The service's own endpoints: ``vpcbus.svc.<service>.<endpoint>``."""
    return endpoints.STATUS_ENDPOINT.format(service=service).rsplit(".", 1)[0] + ".*"


def _micro_served(service: str) -> list[str]:
    """What nats.micro subscribes to for one service: ``$SRV.<verb>[.<name>[.<id>]]``."""
    name = micro_name(service)
    return [f"{endpoints.MICRO_PREFIX}.*", f"{endpoints.MICRO_PREFIX}.*.{name}",
            f"{endpoints.MICRO_PREFIX}.*.{name}.*"]  # fmt: skip


def service_permissions(service: ServiceName) -> Permissions:
    """A service: its consumers, buckets, subjects, peers' statuses and endpoints."""
    events, status = subjects.EVENTS_STREAM, subjects.STATUS_STREAM
    publish = [
        subjects.status_subject(service, "*", "*"),
        subjects.error_subject(service, "*", "*"),
        subjects.dlq_subject(service, "*", "*"),
    ]
    if service == channels.POOL_USAGE_PUBLISHER:
        publish.append(subjects.pool_usage_subject("*"))
    publish += _declare_streams()
    publish += _own_consumer(events, events_consumer(service))
    publish += _own_consumer(status, peers_consumer(service))
    for peer in (service, *channels.WATCHES[service]):  # its own status, its peers'
        publish.append(_api("DIRECT.GET", status, subjects.status_filter(peer, "*", "*")))
    publish.append(_api("STREAM.PURGE", status))  # its statuses of forgotten projects
    for bucket in buckets(service):
        publish += _own_bucket(bucket)
    # Its own healthcheck (compose) pings it with its own credentials.
    publish.append(f"{endpoints.MICRO_PREFIX}.PING.{micro_name(service)}")
    subscribe = [f"{inbox_prefix(service)}.>", _served(service), *_micro_served(service)]
    return Permissions(_unique(publish), _unique(subscribe))


def _reads(requests: list[str]) -> tuple[list[str], list[str]]:
    """What the CLI and dashboards read, and the endpoints they may ask: (publish,
    subscribe) subjects."""
    publish = [_api("STREAM.NAMES")]
    for stream in SHARED_STREAMS:
        publish += [_api("STREAM.INFO", stream), *_ordered(stream)]
    publish += [
        _api("DIRECT.GET", subjects.STATUS_STREAM, ">"),
        _api("STREAM.MSG.GET", subjects.ERRORS_STREAM),
        *requests,
    ]
    for verb in endpoints.MICRO_VERBS:
        publish += [f"{endpoints.MICRO_PREFIX}.{verb}", f"{endpoints.MICRO_PREFIX}.{verb}.>"]
    subscribe = [*subjects.EVENT_SUBJECTS, *subjects.STATUS_SUBJECTS, *subjects.ERROR_SUBJECTS]
    return publish, subscribe


#: The endpoints a dashboard may ask: they only read.
READ_ENDPOINTS: Final = (endpoints.STATUS_ENDPOINT.format(service="*"), zones.ZONE_ENDPOINT)


def cli_permissions() -> Permissions:
    """The CLI: lifecycle events out, every read in, every endpoint (``vpcbus doctor --fix``
    too); may create missing streams, and list the services' records (``vpcbus doctor``)."""
    publish, subscribe = _reads([_served("*")])
    publish = [*subjects.EVENT_SUBJECTS, *_declare_streams(), *publish]
    for service in subjects.SERVICES:
        stream = kv_stream(subjects.kv_bucket(service))
        publish += [_api("STREAM.INFO", stream), *_ordered(stream)]
    return Permissions(_unique(publish), _unique([f"{inbox_prefix('cli')}.>", *subscribe]))


def reader_permissions() -> Permissions:
    """A dashboard: reads only; publishes no event, status or stream change."""
    publish, subscribe = _reads(list(READ_ENDPOINTS))
    return Permissions(_unique(publish), _unique([f"{inbox_prefix('reader')}.>", *subscribe]))


def bridge_permissions() -> Permissions:
    """The Kubernetes bridge: lifecycle events out, statuses in, its own bucket; no endpoint
    (it asks no service anything) and no other bucket."""
    publish, subscribe = _reads([])
    publish = [*subjects.EVENT_SUBJECTS, *_declare_streams(), *publish, *_own_bucket(BRIDGE_BUCKET)]
    return Permissions(_unique(publish), _unique([f"{inbox_prefix('bridge')}.>", *subscribe]))


def permissions(principal: str) -> Permissions | None:
    """The permissions of ``principal``; None for :data:`ADMIN` (no limits)."""
    if principal in subjects.SERVICES:
        return service_permissions(principal)
    if principal == "cli":
        return cli_permissions()
    if principal == "reader":
        return reader_permissions()
    if principal == "bridge":
        return bridge_permissions()
    if principal == ADMIN:
        return None
    raise ValueError(f"unknown principal {principal!r}; expected one of {', '.join(PRINCIPALS)}")
