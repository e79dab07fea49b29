"""Process wiring for a service: settings, logging, NATS, streams, controller, discovery.

Each service's ``__main__`` calls :func:`main` with its name and a factory that builds its
reconciler. The process registers with ``nats.micro`` (``$SRV.PING|INFO|STATS``) with the
endpoints ``status`` (below) and ``doctor`` (:mod:`.doctoring`), and exits cleanly on
SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import nats.micro
import structlog
from nats.js import JetStreamContext
from nats.micro.request import Request
from nats.micro.service import Service

from vpcbus_proto import names, subjects
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime import bus, doctoring, logs, natsauth
from vpcbus_runtime.controller import Controller
from vpcbus_runtime.errors import ReconcileError
from vpcbus_runtime.members import MemberIndex, MemberRecord
from vpcbus_runtime.reconciling import Context, ProjectEndpoint, Reconciler
from vpcbus_runtime.records import ProjectRecord, RecordStore
from vpcbus_runtime.settings import Settings

VERSION = "0.1.0"

Factory = Callable[[Settings, JetStreamContext], Awaitable[Reconciler]]

log = structlog.get_logger()


def micro_name(service: str) -> str:
    """The nats.micro name a service registers as (``endpoints.MICRO_NAME`` in proto)."""
    return f"vpcbus-{service}"


def endpoint_subject(service: str, endpoint: str) -> str:
    """The subject of one of a service's endpoints (``status``, and a reconciler's own)."""
    return f"vpcbus.svc.{service}.{endpoint}"


def project_view(
    service: ServiceName,
    key: str,
    record: ProjectRecord | None,
    revision: int,
    members: Mapping[str, MemberRecord],
    *,
    queued: bool,
    status: ServiceStatus | None,
) -> dict[str, object]:
    """The reply of ``vpcbus.svc.<service>.status`` (``StatusReply`` in docs/asyncapi.json):
    the wire form of every model, as on the bus (camelCase spec fields)."""
    return {
        "service": service,
        "project": key,
        "record": record.model_dump(mode="json", by_alias=True) if record else None,
        "revision": revision,
        "members": {
            m: r.model_dump(mode="json", by_alias=True) for m, r in sorted(members.items())
        },
        "queued": queued,
        "status": status.model_dump(mode="json", by_alias=True) if status else None,
    }


async def _asked(controller: Controller, req: Request) -> tuple[Context, int] | None:
    """The context (and record revision) of the project a ``{organization, project}`` request
    names; None after answering a malformed request with error 400."""
    try:
        body = json.loads(req.data or b"{}")
        org, project = str(body["organization"]), str(body["project"])
        key = names.project_key(org, project)
        names.split_key(key)  # both must be labels
    except (ValueError, KeyError, TypeError):
        await req.respond_error(
            "400", 'send {"organization": ORG, "project": PROJECT} (DNS labels)'
        )
        return None
    record, revision = await controller.records.get(key)
    members = controller.members.of(key) if controller.members is not None else {}
    return Context(key, org, project, record, controller.peers, members), revision


def _project_endpoint(
    controller: Controller, handler: ProjectEndpoint
) -> Callable[[Request], Awaitable[None]]:
    """A reconciler's own read endpoint: the project's context in, the model's JSON out."""

    async def serve(req: Request) -> None:
        asked = await _asked(controller, req)
        if asked is None:
            return
        try:
            reply = await handler(asked[0])
        except ReconcileError as exc:
            await req.respond_error("503", f"{exc.reason}: {exc.message}")
            return
        await req.respond(reply.model_dump_json(by_alias=True).encode())

    return serve


async def _register(controller: Controller) -> Service:
    svc = await nats.micro.add_service(
        controller.nc,
        name=micro_name(controller.service),
        version=VERSION,
        description=f"vpcbus {controller.service} reconciler",
        stats_handler=lambda _endpoint: controller.stats(),
    )

    async def status(req: Request) -> None:
        """This service's view of one project: its record (the desired state it folded),
        its members, whether it is queued, and the status it last published."""
        asked = await _asked(controller, req)
        if asked is None:
            return
        ctx, revision = asked
        published = await controller.peers.status(controller.service, ctx.organization, ctx.project)
        view = project_view(
            controller.service, ctx.key, ctx.record, revision, ctx.members,
            queued=controller.queue.pending(ctx.key), status=published,
        )  # fmt: skip
        await req.respond(json.dumps(view).encode())

    await svc.add_endpoint(
        name="status", handler=status, subject=endpoint_subject(controller.service, "status")
    )
    await svc.add_endpoint(
        name="doctor",
        handler=doctoring.endpoint(controller),
        subject=endpoint_subject(controller.service, "doctor"),
    )
    extra: Mapping[str, ProjectEndpoint] = getattr(controller.reconciler, "endpoints", {})
    for name, handler in extra.items():
        await svc.add_endpoint(
            name=name,
            handler=_project_endpoint(controller, handler),
            subject=endpoint_subject(controller.service, name),
        )
    await controller.nc.flush()
    return svc


async def serve(service: ServiceName, factory: Factory, settings: Settings) -> None:
    logs.configure(service, fmt=settings.log_format, level=settings.log_level)
    nc = await bus.connect(
        settings.nats_url,
        name=f"vpcbus-{service}-{settings.instance}",
        user=settings.nats_user,
        password=settings.nats_password,
    )
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.ensure_bucket(js, subjects.kv_bucket(service))
    reconciler = await factory(settings, js)
    members = None
    if set(getattr(reconciler, "consumes", ("project",))) - {"project"}:
        members = MemberIndex(kv)
        await members.start()  # no member event is folded before the index is complete
    controller = Controller(service, reconciler, nc, js, RecordStore(kv), settings, members)
    await controller.start()
    micro = await _register(controller)
    log.info("service started", nats=natsauth.redacted(settings.nats_url),
             user=nc.options["user"], instance=settings.instance)  # fmt: skip

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("service stopping")
    await micro.stop()
    await controller.stop()
    if members is not None:
        await members.stop()
    close = getattr(reconciler, "close", None)
    if close is not None:
        close()
    # flush + close, not drain: nats-py's drain can wait its full 30 s timeout on a pull
    # subscription whose fetch was cancelled. Nothing is in flight any more; acks are flushed.
    with contextlib.suppress(Exception):
        await nc.flush(timeout=2)
    await nc.close()


def parse_args(service: ServiceName, argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment (README, "Configuration"), with the log options also
    on the command line: ``python -m vpcbus_<service> --log-format console``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m vpcbus_{service}",
        description=f"vpcbus {service} reconciler; configured by environment variables",
    )
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, help="default: VPCBUS_LOG_FORMAT or json"
    )
    parser.add_argument(
        "--log-level", choices=logs.LEVELS, help="default: VPCBUS_LOG_LEVEL or info"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    if args.log_format is not None:
        settings = replace(settings, log_format=args.log_format)
    if args.log_level is not None:
        settings = replace(settings, log_level=args.log_level)
    return settings


def main(service: ServiceName, factory: Factory, argv: Sequence[str] | None = None) -> None:
    settings = parse_args(service, argv)
    try:
        asyncio.run(serve(service, factory, settings))
    except KeyboardInterrupt:
        sys.exit(130)
