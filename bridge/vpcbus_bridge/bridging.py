"""The bridge's loops: watch Kubernetes, publish lifecycle events, write statuses back.

One watcher per kind keeps the snapshot (:mod:`.state`) current: it lists once, then
watches from the last resourceVersion, resuming there after a restart and listing again
after a 410. The services' statuses come from the status stream (last per subject, then
live). Any change marks the bridge dirty; one sync task then maps the whole snapshot
(:mod:`.mapping`), publishes what changed (``Nats-Msg-Id`` = the event id) and applies the
statuses that differ. Level-triggered: a sync after a missed or repeated change converges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from vpcbus_bridge.mapping import events, members, objects, statuses
from vpcbus_bridge.mapping.objects import Watched
from vpcbus_bridge.state import BridgeState
from vpcbus_proto import events as proto_events
from vpcbus_proto import names, subjects
from vpcbus_proto.status import ServiceStatus, parse_status
from vpcbus_runtime.errors import PermanentError, ReconcileError, TemporaryError
from vpcbus_runtime.kube import KubeClient, ResourceExpiredError

FIELD_MANAGER = "vpcbus-bridge"
SOURCE = "/vpcbus/kube-bridge"
#: How long a kind whose resource does not exist (no KubeVirt, no Kube-DC CRDs) waits
#: before it is tried again.
MISSING_KIND_RETRY = 30.0
MAX_BACKOFF = 30.0

log = structlog.get_logger()


class Bridge:
    def __init__(
        self,
        kube: KubeClient,
        js: JetStreamContext,
        state: BridgeState,
        *,
        field_manager: str = FIELD_MANAGER,
    ) -> None:
        self.kube = kube
        self.js = js
        self.state = state
        self.field_manager = field_manager
        self.statuses: dict[str, dict[str, ServiceStatus]] = {}
        self.dirty = asyncio.Event()
        #: Set once a kind has been listed (or found missing): the first sync waits for all.
        self._seen = {w.short: asyncio.Event() for w in objects.WATCHED}
        self._told: set[str] = set()

    async def run(self) -> None:
        """Run until cancelled."""
        await self.state.load()
        async with asyncio.TaskGroup() as tasks:
            for watched in objects.WATCHED:
                tasks.create_task(self._watch(watched), name=f"watch-{watched.short}")
            tasks.create_task(self._follow_statuses(), name="statuses")
            tasks.create_task(self._sync_loop(), name="sync")

    # -- Kubernetes in -------------------------------------------------------------------

    async def _watch(self, watched: Watched) -> None:
        """Keep one kind of the snapshot current, forever."""
        backoff = 0.5
        while True:
            try:
                version = self.state.versions.get(watched.short) or await self._relist(watched)
                self._seen[watched.short].set()
                await self._follow(watched, version)
                backoff = 0.5
            except ResourceExpiredError:
                log.info("watch expired, listing again", kind=watched.kind)
                await self.state.forget_version(watched)
            except PermanentError as exc:
                self._seen[watched.short].set()  # e.g. the CRD is not installed
                log.warning("cannot watch", kind=watched.kind, reason=exc.reason, error=exc.message)
                await asyncio.sleep(MISSING_KIND_RETRY)
            except TemporaryError as exc:
                log.warning("watch failed", kind=watched.kind, reason=exc.reason, error=exc.message)
                await asyncio.sleep(max(exc.delay, backoff))
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:  # a bug or the bus: log it, back off, carry on
                log.exception("watch failed", kind=watched.kind)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _relist(self, watched: Watched) -> str:
        items, version = await self.kube.list(watched.api_version, watched.kind)
        await self.state.replace(watched, [objects.slim(watched, i) for i in items], version)
        log.info("listed", kind=watched.kind, objects=len(items), resource_version=version)
        self.dirty.set()
        return version

    async def _follow(self, watched: Watched, version: str) -> None:
        """Apply watch events to the snapshot until the server ends the watch."""
        stream = self.kube.watch(watched.api_version, watched.kind, resource_version=version)
        async with contextlib.aclosing(stream) as changes:
            async for kind, obj in changes:
                meta = objects.meta(obj)
                changed = False
                if kind == "DELETED":
                    changed = await self.state.drop(
                        watched, meta.get("namespace", ""), meta["name"]
                    )
                elif kind != "BOOKMARK":
                    changed = await self.state.put(watched, objects.slim(watched, obj))
                await self.state.set_version(watched, str(meta.get("resourceVersion", "")))
                if changed:
                    self.dirty.set()

    # -- the bus in ----------------------------------------------------------------------

    async def _follow_statuses(self) -> None:
        """Every service's last status per project, then each new one (retried until the
        subscription stands; nats-py keeps an ordered consumer going after that)."""
        while True:
            try:
                await self._subscribe_statuses()
                break
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("status subscription failed", error=repr(exc))
                await asyncio.sleep(1.0)
        await asyncio.Event().wait()  # the subscription lives as long as the connection

    async def _subscribe_statuses(self) -> None:
        async def seen(msg: Msg) -> None:
            status = parse_status(msg.subject, msg.data) if msg.data else None
            if status is not None:
                key = names.project_key(status.organization, status.project)
                self.statuses.setdefault(key, {})[status.service] = status
                self.dirty.set()

        await self.js.subscribe(
            subjects.status_filter(),
            cb=seen,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )

    # -- events out, statuses back -------------------------------------------------------

    async def _sync_loop(self) -> None:
        for seen in self._seen.values():
            await seen.wait()
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                await self.sync()
            except ReconcileError as exc:
                log.warning("sync failed", reason=exc.reason, error=exc.message)
                await self._later(getattr(exc, "delay", 1.0))
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("sync failed", reason="NatsUnavailable", error=repr(exc))
                await self._later(1.0)
            except Exception:  # a bug: log it and try again later, as the services do
                log.exception("sync failed")
                await self._later(5.0)

    async def _later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.dirty.set()

    async def sync(self) -> None:
        """Publish what changed, then write the statuses that differ."""
        snapshot = self.state.objects
        wanted, problems = members.desired(snapshot)
        for p in problems:
            if (text := f"{p.short}/{p.namespace}/{p.name}: {p.message}") not in self._told:
                self._told.add(text)
                log.warning(
                    "cannot map", kind=p.short, namespace=p.namespace, name=p.name, error=p.message
                )
        for action in events.plan(wanted, self.state.published, problems, self.state.revision()):
            await self._publish(action)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        published = self.state.published
        for patch in statuses.status_patches(snapshot, self.statuses, published, problems, now):
            try:
                stored = await self.kube.apply_status(
                    patch.manifest(), field_manager=self.field_manager
                )
            except PermanentError as exc:  # e.g. deleted meanwhile: the watch will say so
                log.warning(
                    "status not written",
                    kind=patch.watched.kind,
                    name=patch.name,
                    namespace=patch.namespace,
                    reason=exc.reason,
                    error=exc.message,
                )
                continue
            self.state.refresh(patch.watched, objects.slim(patch.watched, stored))

    async def _publish(self, action: events.Publish) -> None:
        body = proto_events.new_event(
            action.subject,
            action.data,
            source=SOURCE,
            generation=action.generation,
            event_id=action.event_id,
        )
        ack = await self.js.publish(
            action.subject,
            json.dumps(body).encode(),
            headers={"Nats-Msg-Id": action.event_id},
            stream=subjects.EVENTS_STREAM,
        )
        await self.state.record(action.record)
        log.info(
            "published",
            subject=action.subject,
            key=action.record.key,
            generation=action.generation,
            duplicate=bool(ack.duplicate),
        )
