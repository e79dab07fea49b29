"""A service's doctor endpoint, ``vpcbus.svc.<service>.doctor`` (:mod:`vpcbus_proto.doctor`).

Registered by :mod:`.service` next to the status endpoint. For every project the service
knows (or the one asked for) the audit builds the context a reconcile would get, then asks
the reconciler's :class:`~vpcbus_runtime.reconciling.Auditor` (IPAM) or runs the reconcile
itself inside :func:`vpcbus_runtime.ovn.dry_run`: each NB transaction is recorded and
aborted, and what it would write is what is wrong (insert: ``missing``, update: ``drifted``,
delete: ``extra``, or ``orphan`` when the project has no live record).

The dry run runs beside the work queue, not in it: it publishes no status and writes
nothing, so the service keeps serving events meanwhile. A project that a real reconcile is
changing at that moment may show what is being repaired; audit a quiet system.

``fix``: every project with a finding goes through the work queue (the normal reconcile,
status and all, never two runs of one project at once), then is audited again; what went
away is ``fixed``. A repair that needs another service's first (NAT's rule needs VPC's
router) shows up again until that one is done: ``vpcbus doctor --fix`` asks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog
from nats.micro.request import Request
from pydantic import ValidationError

from vpcbus_proto import names
from vpcbus_proto.doctor import MAX_FINDINGS, DoctorReply, DoctorRequest, Finding
from vpcbus_runtime import ovn
from vpcbus_runtime.controller import Controller
from vpcbus_runtime.errors import PermanentError, ReconcileError, TemporaryError
from vpcbus_runtime.reconciling import Context

#: Projects audited at once (each dry run holds the IDL thread for one transaction).
AUDITS_AT_ONCE = 8
#: How long a repair waits for the runs it queued before auditing again.
REPAIR_SECONDS = 30.0
#: A dry run that finds OVN NB unreachable fails the request (503), instead of a finding.
UNREACHABLE = "BackendUnavailable"

log = structlog.get_logger()


def endpoint(controller: Controller) -> Callable[[Request], Awaitable[None]]:
    """The handler of ``vpcbus.svc.<service>.doctor``: a :class:`DoctorRequest` in (an empty
    body audits everything), a :class:`DoctorReply` out; 400 for a bad request, 503 when the
    backend cannot be read."""

    async def serve(req: Request) -> None:
        try:
            ask = DoctorRequest.model_validate_json(req.data or b"{}")
        except ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors())
            await req.respond_error("400", f"send {{organization, project, fix}}: {problems}")
            return
        try:
            reply = await doctor(controller, ask)
        except ReconcileError as exc:
            await req.respond_error("503", f"{exc.reason}: {exc.message}")
            return
        await req.respond(reply.model_dump_json(by_alias=True).encode())

    return serve


async def doctor(controller: Controller, ask: DoctorRequest) -> DoctorReply:
    """Audit (and with ``ask.fix`` repair, then audit again) and say what was found."""
    keys = {ask.key} if ask.key is not None else await controller.known_keys()
    found = await audit(controller, keys)
    fixed: list[Finding] = []
    if ask.fix and found:
        broken = sorted({f.project for f in found})
        await repair(controller, broken)
        before, found = found, await audit(controller, broken)
        fixed = [f for f in before if f not in set(found)]
    log.info(
        "doctor", projects=len(keys), findings=len(found), fixed=len(fixed), fix=ask.fix,
        project=ask.key,
    )  # fmt: skip
    return DoctorReply(
        service=controller.service, projects=len(keys), findings=found[:MAX_FINDINGS],
        fixed=fixed[:MAX_FINDINGS], truncated=max(len(found), len(fixed)) > MAX_FINDINGS,
    )  # fmt: skip


async def audit(controller: Controller, keys: Iterable[str]) -> list[Finding]:
    """Every project's findings, in key order. A shared row (``ext-cloud``), which every
    project's run converges, is named once: under the first project, whose repair fixes it."""
    slots = asyncio.Semaphore(AUDITS_AT_ONCE)

    async def one(key: str) -> list[Finding]:
        async with slots:
            return await audit_project(controller, key)

    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for findings in await asyncio.gather(*(one(k) for k in sorted(keys))):
        for f in findings:
            if f.object == "-" or (f.kind, f.object) not in seen:  # (rows are named apart)
                seen.add((f.kind, f.object))
                out.append(f)
    return out


async def audit_project(controller: Controller, key: str) -> list[Finding]:
    """One project's findings; writes nothing."""
    service = controller.service
    try:
        org, project = names.split_key(key)
    except ValueError:
        return [Finding(service=service, project=key, kind="orphan", object=key,
                        detail="backend state under a key that names no project")]  # fmt: skip
    record, _revision = await controller.records.get(key)
    members = controller.members.of(key) if controller.members is not None else {}
    ctx = Context(key, org, project, record, controller.peers, members)
    auditor = getattr(controller.reconciler, "audit", None)
    if auditor is None:
        return await dry_run(controller, ctx)
    try:
        return list(await auditor(ctx))
    except Exception as exc:  # a bug: say so, and audit the other projects
        log.exception("doctor audit failed", project=key)
        return [_blocked(service, key, f"InternalError: {exc!r}")]


async def dry_run(controller: Controller, ctx: Context) -> list[Finding]:
    """The reconcile's own verdict: what its NB transactions would write."""
    service = controller.service
    live = ctx.record is not None and ctx.record.spec is not None
    blocked = ""
    with structlog.contextvars.bound_contextvars(dry_run=True), ovn.dry_run() as plan:
        try:
            await controller.reconciler.reconcile(ctx)
        except PermanentError:
            pass  # the project is refused (its status says why): nothing to build, or check
        except TemporaryError as exc:
            if exc.reason == UNREACHABLE:
                raise
            blocked = f"{exc.reason}: {exc.message}"
        except Exception as exc:  # a bug: say so, and audit the other projects
            log.exception("doctor dry run failed", project=ctx.key)
            blocked = f"InternalError: {exc!r}"
    out = [_finding(service, ctx.key, change, live=live) for change in plan.changes]
    return [*out, _blocked(service, ctx.key, blocked)] if blocked else out


def _blocked(service: str, key: str, why: str) -> Finding:
    return Finding(service=service, project=key, kind="blocked", object="-", detail=why)


def _finding(service: str, key: str, change: ovn.Change, *, live: bool) -> Finding:
    if change.op == "insert":
        kind, why = "missing", "would create"
    elif change.op == "update":
        kind, why = "drifted", ""
    elif live:
        kind, why = "extra", "not desired"
    else:
        kind, why = "orphan", "the project has no live record"
    detail = ": ".join(part for part in (why, change.detail) if part)
    return Finding.model_validate(
        {"service": service, "project": key, "kind": kind,
         "object": change.object, "detail": detail}
    )  # fmt: skip


async def repair(controller: Controller, keys: Iterable[str]) -> None:
    """Run each project through the work queue once (waiting at most ``REPAIR_SECONDS``)."""
    will_repair = getattr(controller.reconciler, "will_repair", None)
    runs = []
    for key in keys:
        try:
            names.split_key(key)
        except ValueError:
            continue  # no reconcile can name it; the finding stays
        controller.will_repair(key)
        if will_repair is not None:
            will_repair(key)
        runs.append(asyncio.ensure_future(controller.queue.run_now(key)))
    if not runs:
        return
    done, pending = await asyncio.wait(runs, timeout=REPAIR_SECONDS)
    for task in pending:
        task.cancel()  # the run goes on; only the wait for it ends
    for task in done:
        if task.exception() is not None:  # the reconcile failed: the audit says what is left
            log.warning("doctor repair failed", error=repr(task.exception()))
