"""Connecting to NATS and declaring the streams, consumers and buckets vpcbus uses.

Declarations are idempotent (create-or-update), so every service and the CLI may run them
at start-up in any order. Called by :mod:`.service` and by the CLI's embedded stack.
A stream is only updated when its configuration differs from the declared one: on a
server with authorization (``vpcbus_proto.permissions``) only ``admin`` may update one, and
the others run with the configuration they find (with a warning).
"""

from __future__ import annotations

import dataclasses

import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from vpcbus_proto import permissions, subjects
from vpcbus_runtime import natsauth, replies

#: Events are kept a week: enough for any consumer to catch up after an outage.
EVENTS_MAX_AGE = 7 * 24 * 3600.0
ERRORS_MAX_AGE = 30 * 24 * 3600.0
DUPLICATE_WINDOW = 120.0


async def connect(
    url: str, *, name: str, user: str | None = None, password: str | None = None
) -> Client:
    """Connect and keep reconnecting forever: a reconciler must outlive server restarts.

    Connection errors are logged as one structured line each (nats-py's default callback
    logs a traceback per failed attempt). ``user`` / ``password`` win over the environment's
    login (:mod:`.natsauth`), which also gives the reply inbox and TLS.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    log = structlog.get_logger("vpcbus.bus")

    async def on_error(exc: Exception) -> None:
        log.warning("nats connection error", error=str(exc) or type(exc).__name__)

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    auth = natsauth.from_env().with_login(user, password)
    nc = await nats.connect(
        servers=servers,
        name=name,
        **auth.options(),
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
    )
    await replies.install(nc)  # request/reply without a timer per request
    return nc


def stream_configs() -> list[api.StreamConfig]:
    return [
        api.StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=list(subjects.EVENT_SUBJECTS),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=EVENTS_MAX_AGE,
            duplicate_window=DUPLICATE_WINDOW,
            max_msg_size=256 * 1024,
        ),
        api.StreamConfig(
            name=subjects.STATUS_STREAM,
            subjects=list(subjects.STATUS_SUBJECTS),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_msgs_per_subject=1,
            allow_direct=True,
            # nats-server's default max_payload: IPAM's status lists every NIC of a project
            # (about 200 bytes each), so one project holds up to ~5,000 NICs.
            max_msg_size=1024 * 1024,
        ),
        api.StreamConfig(
            name=subjects.ERRORS_STREAM,
            subjects=list(subjects.ERROR_SUBJECTS),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=ERRORS_MAX_AGE,
            max_msgs=100_000,
            discard=api.DiscardPolicy.OLD,
        ),
    ]


def differences(declared: api.StreamConfig, found: api.StreamConfig) -> list[str]:
    """The fields ``declared`` sets (those not at their default) that ``found`` has otherwise."""
    want, have = declared.as_dict(), found.as_dict()
    return [
        f.name
        for f in dataclasses.fields(api.StreamConfig)
        if f.name in want
        and getattr(declared, f.name) != f.default
        and want[f.name] != have.get(f.name)
    ]


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the three streams, or update them to the declared configuration."""
    for config in stream_configs():
        try:
            info = await js.stream_info(config.name or "")
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError:
                # Another process created it in between; compare with what it made.
                info = await js.stream_info(config.name or "")
            else:
                continue
        changed = differences(config, info.config)
        if not changed:
            continue
        try:
            await js.update_stream(config)
        except nats.errors.TimeoutError:
            # No answer: the server refused the request (only admin may update a stream).
            log = structlog.get_logger("vpcbus.bus")
            log.warning("stream differs; not allowed to update", stream=config.name,
                        fields=changed)  # fmt: skip


async def ensure_bucket(js: JetStreamContext, bucket: str, *, history: int = 1) -> KeyValue:
    """Open a KV bucket, creating it when it does not exist yet: file storage and direct gets
    (``allow_direct``, as the Go client's buckets have). With direct gets a read is one
    request answered with the value and its headers; without, it is a stream API call whose
    JSON reply carries the value in base64 and a header block that nats-py parses with the
    stdlib's e-mail parser (bench/: record reads were a fifth of NAT's, DNS's and IPAM's CPU
    in a burst). A bucket made before keeps its slower reads until an admin runs
    :func:`allow_direct_gets` (``vpcbus up`` does): only admin may update a stream."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        config = api.KeyValueConfig(
            bucket=bucket, history=history, storage=api.StorageType.FILE, direct=True
        )
        try:
            return await js.create_key_value(config)
        except BadRequestError:
            kv = await js.key_value(bucket)
    info = await js.stream_info(permissions.kv_stream(bucket))
    if not info.config.allow_direct:
        log = structlog.get_logger("vpcbus.bus")
        log.warning("bucket without direct gets; admin's `vpcbus up` turns them on",
                    bucket=bucket)  # fmt: skip
    return kv


async def allow_direct_gets(js: JetStreamContext, buckets: list[str]) -> list[str]:
    """Turn on direct gets of the existing ``buckets`` made without them (by vpcbus before
    2026-12-05); returns the buckets changed. Needs a login that may update streams."""
    changed = []
    for bucket in buckets:
        try:
            info = await js.stream_info(permissions.kv_stream(bucket))
        except NotFoundError:
            continue
        if info.config.allow_direct:
            continue
        await js.update_stream(dataclasses.replace(info.config, allow_direct=True))
        changed.append(bucket)
    return changed
