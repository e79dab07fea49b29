"""The bridge's loops: watch Kubernetes, publish lifecycle events, write statuses back.

One watcher per kind keeps the snapshot (:mod:`.state`) current: it lists once, then
watches from the last resourceVersion, resuming there after a restart and listing again
after a 410. The services' statuses come from the status stream (last per subject, then
live). Any change marks the bridge dirty; one sync task then maps the whole snapshot
(:mod:`.mapping`), publishes what changed (``Nats-Msg-Id`` = the event id) and applies the
statuses that differ. Level-triggered: a sync after a missed or repeated change converges.

A sync also keeps the bridge's finalizer (:mod:`.mapping.teardown`: added before the events
are published, removed once the services have torn down what a deleted object described)
and the EIp objects of IPAM's own EIPs (:mod:`.mapping.autoeips`). Both remove or delete
only after the status stream has been read to its end, so a restarted bridge never takes
"no status yet" for "torn down".
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

from vpcbus_bridge.mapping import autoeips, events, members, objects, statuses, teardown
from vpcbus_bridge.mapping.objects import EIP, Watched
from vpcbus_bridge.mapping.teardown import FinalizerChange
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
        #: Set once the status stream has been read to its end (last per subject).
        self.statuses_loaded = asyncio.Event()
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
            if msg.metadata.num_pending == 0:
                self._loaded()

        sub = await self.js.subscribe(
            subjects.status_filter(),
            cb=seen,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        if (await sub.consumer_info()).num_pending == 0:
            self._loaded()  # nothing to replay, or all of it was handed over already

    def _loaded(self) -> None:
        if not self.statuses_loaded.is_set():
            self.statuses_loaded.set()
            self.dirty.set()

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
        loaded = self.statuses_loaded.is_set()
        published = self.state.published
        await self._finalize(teardown.plan(snapshot, self.statuses, published, removals=False))
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
        await self._write_auto_eips(autoeips.plan(snapshot, self.statuses, deletions=loaded))
        if loaded:
            done = teardown.plan(snapshot, self.statuses, published, removals=True)
            await self._finalize([c for c in done if not c.keep])

    async def _finalize(self, changes: list[FinalizerChange]) -> None:
        """Add or remove the bridge's finalizer (server-side apply: it owns what it applies)."""
        for change in changes:
            try:
                stored = await self.kube.apply(change.manifest(), field_manager=self.field_manager)
            except PermanentError as exc:  # e.g. deleted or re-created meanwhile
                log.warning(
                    "finalizer not written", kind=change.watched.kind, name=change.name,
                    namespace=change.namespace, reason=exc.reason, error=exc.message,
                )  # fmt: skip
                continue
            log.info(
                "finalizer added" if change.keep else "finalizer removed",
                kind=change.watched.kind, name=change.name, namespace=change.namespace,
            )  # fmt: skip
            self.state.refresh(change.watched, objects.slim(change.watched, stored))

    async def _write_auto_eips(self, plan: autoeips.Plan) -> None:
        """Write the EIps of IPAM's own EIPs, delete those IPAM no longer reports."""
        for manifest in plan.apply:
            meta = manifest["metadata"]
            try:
                stored = await self.kube.apply(manifest, field_manager=self.field_manager)
            except PermanentError as exc:
                log.warning("eip not written", name=meta["name"], namespace=meta["namespace"],
                            reason=exc.reason, error=exc.message)  # fmt: skip
                continue
            log.info("eip written", name=meta["name"], namespace=meta["namespace"])
            self.state.refresh(EIP, objects.slim(EIP, stored))
        for ns, name in plan.delete:
            await self.kube.delete(EIP.api_version, EIP.kind, name, ns)  # gone already is fine
            log.info("eip deleted", name=name, namespace=ns)

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
