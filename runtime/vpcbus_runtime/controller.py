"""The edge: consumes events and peer status, runs reconciles, acks, reports.

Called by :mod:`.service`. Two durable pull consumers per service:

* ``<service>-events`` on ``VPCBUS_EVENTS``: an event is decoded (:mod:`.intake`), folded
  into the service's record (:mod:`.records`), then the project is reconciled and the
  message is acked on success or ``Pending``, nak'ed with backoff on a temporary failure,
  and dead-lettered + terminated after ``max_deliver`` attempts. Invalid events are
  rejected with an error record (and a status when the project can be named).
* ``<service>-peers`` on ``VPCBUS_STATUS``: a peer's status change re-runs the project,
  unless the reconciler's optional ``wants_peer`` says that status cannot change its result,
  or the project's last result is ``Pending`` waiting for another peer, or for this one and
  the status is ``Pending`` too (:attr:`~.reconciling.Result.waiting_for`), and no run of it
  is pending.

A new project's first run waits until the peer its build needs has reported on it
(:class:`~.reconciling.FirstBuild`), while that peer keeps reporting, instead of reporting
``Pending`` at once and running again for the peer's status.

A periodic resync re-runs every known project (records and backend-owned objects), which
repairs drift, finishes waits and garbage-collects orphans.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from vpcbus_proto import names, subjects
from vpcbus_proto.errors import MAX_PAYLOAD_ECHO, ErrorEvent
from vpcbus_proto.status import MemberStatus, ServiceStatus, parse_status
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime import intake
from vpcbus_runtime.errors import PermanentError, TemporaryError
from vpcbus_runtime.members import MemberIndex, MemberRecord
from vpcbus_runtime.pulling import Puller
from vpcbus_runtime.reconciling import Context, Reconciler, Result
from vpcbus_runtime.records import Fold, RecordStore
from vpcbus_runtime.settings import Settings
from vpcbus_runtime.statuses import StatusPublisher, StreamPeers
from vpcbus_runtime.workqueue import WorkQueue

log = structlog.get_logger()

FETCH_BATCH = 128
MAX_IN_FLIGHT = 1024
MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class Outcome:
    result: Result
    retry: bool
    #: ``result.members`` by member key: every member event of the run looks itself up.
    members: dict[str, MemberStatus] = field(default_factory=dict)


@dataclass
class Counters:
    events: int = 0
    rejected: int = 0
    stale: int = 0
    dead_letters: int = 0
    reconciles: int = 0
    #: Runs for a peer's status of a project with no record, members or backend objects
    #: here (its event not taken yet): no reconcile.
    unknown_projects: int = 0
    reconcile_errors: int = 0
    reconcile_seconds: float = 0.0
    redelivered: int = 0  # events this process got more than once (a crash, a nak, an ack timeout)
    last_error: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


#: Reconcile durations kept for the latency figures of ``$SRV.STATS``.
LATENCY_WINDOW = 1024
#: How often the consumer's lag (pending, ack pending, redelivered) is read from the server.
LAG_EVERY = 5.0
#: The first full resync after start waits this long (at most half the resync period): the
#: events waiting in the consumers, and new ones, are served before every service checks
#: thousands of projects at once, and VPC loads its first NB replica without four resyncs
#: competing for the 2 cores. A restart with 1,000 projects in place served a new one after
#: 6.3 s with the resync at once, 3.9 s with it 5 s later; with 5,000 in place, 18.9 s with
#: it 5 s later, 13.8 s with it 15 s later (bench/).
STARTUP_RESYNC_DELAY = 15.0
#: The longest a new project's first run waits for the peer it builds on, however busy that
#: peer is (:meth:`Controller._first_wait`).
FIRST_WAIT_CAP = 10.0
#: A first wait this old reads the peer's status from the stream, once: with replicas of
#: this service, the status that ends it may have been delivered to another replica.
FIRST_WAIT_LOOKUP = 1.0


@dataclass(frozen=True)
class Lag:
    """The events consumer as the server saw it at ``at`` (shared by every replica)."""

    pending: int  # in the stream, not yet delivered to any replica
    ack_pending: int  # delivered, not yet acknowledged
    redelivered: int  # delivered more than once and not yet acknowledged
    at: datetime


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def figures(
    counters: Counters,
    *,
    queue_depth: int,
    in_flight: int,
    latencies: Sequence[float],
    lag: Lag | None,
) -> dict[str, object]:
    """A service process's figures, as ``$SRV.STATS`` reports them in its endpoint's ``data``
    (documented in docs/asyncapi.json as ``ServiceFigures``)."""
    data: dict[str, object] = asdict(counters)
    data["started"] = counters.started.isoformat()
    data["queue_depth"] = queue_depth
    data["in_flight"] = in_flight
    data["reconcile_ms"] = {
        "count": len(latencies),
        "p50": round(percentile(latencies, 0.5) * 1000, 1),
        "p99": round(percentile(latencies, 0.99) * 1000, 1),
        "max": round(max(latencies, default=0.0) * 1000, 1),
    }
    data["consumer"] = None if lag is None else {
        "pending": lag.pending,
        "ack_pending": lag.ack_pending,
        "redelivered": lag.redelivered,
        "at": lag.at.isoformat(),
    }  # fmt: skip
    return data


@dataclass
class _Hold:
    since: float  # the loop's clock
    future: asyncio.Future[None]
    looked_up: bool = False  # the peer's status read from the stream once


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def backoff(attempt: int) -> float:
    return float(min(0.5 * 2 ** max(attempt - 1, 0), MAX_BACKOFF))


class Controller:
    def __init__(
        self,
        service: ServiceName,
        reconciler: Reconciler,
        nc: Client,
        js: JetStreamContext,
        records: RecordStore,
        settings: Settings,
        members: MemberIndex | None = None,
    ) -> None:
        self.service = service
        self.reconciler = reconciler
        self.nc = nc
        self.js = js
        self.records = records
        self.settings = settings
        #: Event families consumed (:class:`~vpcbus_runtime.reconciling.MemberConsumer`).
        self.families: tuple[str, ...] = tuple(getattr(reconciler, "consumes", ("project",)))
        if set(self.families) - {"project"} and members is None:
            raise ValueError(f"{service} consumes {self.families}: it needs a MemberIndex")
        self.members = members
        self.peers = StreamPeers(js)
        self.statuses = StatusPublisher(js, service, self.peers)
        #: Optional :meth:`~vpcbus_runtime.reconciling.PeerFilter.wants_peer` of the reconciler.
        self._wants_peer: Callable[[ServiceStatus], bool] | None = getattr(
            reconciler, "wants_peer", None
        )
        #: Optional ``builds_on`` of the reconciler: see :class:`~.reconciling.FirstBuild`.
        self._builds_on: ServiceName | None = getattr(reconciler, "builds_on", None)
        #: New projects whose first run waits for ``builds_on``'s status: ends the wait.
        self._holds: dict[str, _Hold] = {}
        self._builds_on_heard_at = 0.0  # the loop's clock
        self._releaser: asyncio.Task[None] | None = None
        #: Projects with no published status here whose ``builds_on`` peer has reported:
        #: their first run need not wait.
        self._heard: set[str] = set()
        #: Optional ``pace`` of the reconciler: see :class:`~vpcbus_runtime.workqueue.WorkQueue`.
        pace = float(getattr(reconciler, "pace", 0.0))
        self.queue: WorkQueue[Outcome] = WorkQueue(
            self._reconcile, workers=settings.workers, pace=pace
        )
        self.counters = Counters()
        self._failures: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        #: Events handled at once (and the consumers' max_ack_pending): optional ``in_flight``
        #: of the reconciler. Each waits for a run of its project, so a reconciler that takes
        #: a burst in batches (``pace``) needs many in flight to fill them; keep it below what
        #: the service handles within the 30 s ack wait.
        self.in_flight = int(getattr(reconciler, "in_flight", MAX_IN_FLIGHT))
        self._slots = asyncio.Semaphore(self.in_flight)
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)  # seconds per reconcile
        self.lag: Lag | None = None
        self._pullers: list[Puller] = []
        #: When each project last converged (Ready or Deleted), by the loop's clock: a
        #: resync skips what converged in the last half period.
        self._converged_at: dict[str, float] = {}
        #: Projects the backend held something of at the last resync (``owned_keys``): the
        #: only ones without a record whose reconcile has anything to tear down.
        self._owned: set[str] = set()
        #: Projects whose last result was ``Pending`` waiting for one peer: which.
        self._waiting: dict[str, str] = {}
        #: Tombstones whose teardown finished in this process: the record's revision then,
        #: and the result. Until the record changes, a run of the project reports that result
        #: again instead of sweeping the backend (see :meth:`_reconcile`).
        self._torn_down: dict[str, tuple[int, Result]] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        events = f"{self.service}-events"
        await self._consumer(subjects.EVENTS_STREAM, events, [f"{f}.*" for f in self.families])
        self.queue.start()
        await self._pull(subjects.EVENTS_STREAM, events, self._on_event, self._slots)
        self._loops.append(asyncio.create_task(self._lag_forever(events)))
        if self.reconciler.watches:
            peers = f"{self.service}-peers"
            filters = [subjects.status_filter(p) for p in self.reconciler.watches]
            await self._consumer(subjects.STATUS_STREAM, peers, filters)
            await self._pull(subjects.STATUS_STREAM, peers, self._on_peer, None)
        self._loops.append(asyncio.create_task(self._resync_forever()))

    async def stop(self) -> None:
        for puller in self._pullers:
            await puller.stop()
        loops = [*self._loops, *([self._releaser] if self._releaser is not None else [])]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.queue.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _consumer(self, stream: str, durable: str, filters: list[str]) -> None:
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=30.0,
            max_deliver=-1,  # dead-lettering is ours: see _on_event
            max_ack_pending=self.in_flight,
            filter_subjects=filters,
        )
        await self.js.add_consumer(stream, config)

    async def _pull(
        self,
        stream: str,
        durable: str,
        handle: Callable[[Msg], Awaitable[None]],
        slots: asyncio.Semaphore | None,
    ) -> None:
        """Run ``handle`` for each message of the consumer. With ``slots``, each in a task, at
        most that many at once: delivery waits for a free slot. Without, one at a time and in
        order, for a handler that never waits for a run (peer statuses). Peer statuses once
        took slots of the events: in a burst, events waiting for their runs held all of them,
        and the statuses that would have let those runs go waited behind them (bench/)."""

        if slots is None:

            async def deliver(msg: Msg) -> None:
                await self._guarded(handle, msg, None)

        else:

            async def deliver(msg: Msg) -> None:
                await slots.acquire()
                task = asyncio.create_task(self._guarded(handle, msg, slots))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        puller = Puller(self.nc, stream, durable, deliver, batch=FETCH_BATCH)
        self._pullers.append(puller)
        await puller.start()

    async def _lag_forever(self, durable: str) -> None:
        while True:
            try:
                info = await self.js.consumer_info(subjects.EVENTS_STREAM, durable)
                self.lag = Lag(
                    pending=info.num_pending or 0,
                    ack_pending=info.num_ack_pending or 0,
                    redelivered=info.num_redelivered or 0,
                    at=datetime.now(UTC),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a reconnect in progress: the last figures stay
                log.debug("consumer info failed", error=repr(exc))
            await asyncio.sleep(LAG_EVERY)

    def stats(self) -> dict[str, object]:
        """The figures ``$SRV.STATS`` reports (see :func:`figures`)."""
        return figures(
            self.counters, queue_depth=len(self.queue), in_flight=len(self._tasks),
            latencies=list(self.latencies), lag=self.lag,
        )  # fmt: skip

    async def _guarded(
        self,
        handle: Callable[[Msg], Awaitable[None]],
        msg: Msg,
        slots: asyncio.Semaphore | None,
    ) -> None:
        try:
            await handle(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one message kill the consumer
            log.exception("message handling failed", subject=msg.subject, error=repr(exc))
            try:
                await msg.nak(delay=1.0)
            except Exception as nak_exc:
                log.warning("nak failed", error=repr(nak_exc))
        finally:
            if slots is not None:
                slots.release()

    async def _resync_forever(self) -> None:
        """Resync, wait until that work is done, rest one period, again. The period counts
        from the end of the previous resync, not its start: at 5,000 projects one resync
        of a service takes longer than the default period on 2 cores, and back to back they
        kept every service busy for good (bench/)."""
        await asyncio.sleep(min(STARTUP_RESYNC_DELAY, self.settings.resync_seconds / 2))
        while True:
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("resync failed", error=repr(exc))
            await self.queue.drained()
            await asyncio.sleep(self.settings.resync_seconds)

    async def known_keys(self) -> set[str]:
        """Every project this service knows of: records, backend-owned, named by members."""
        self._owned = set(await self.reconciler.owned_keys())
        keys = set(await self.records.keys()) | self._owned
        if self.members is not None:
            keys |= set(self.members.projects())
        return keys

    async def resync(self) -> int:
        """Queue every project this service knows of but those that converged (Ready or
        Deleted) in the last half period: a burst or a restart's new events are not run a
        second time right after (bench/: the first resync re-ran every project of a 1,000
        burst), and a project still runs at least once every 1.5 periods, which bounds how
        long drift goes unnoticed. Returns how many were queued."""
        fresh = asyncio.get_running_loop().time() - self.settings.resync_seconds / 2
        keys = await self.known_keys()
        queued = 0
        for key in keys:
            if self._converged_at.get(key, fresh - 1.0) >= fresh or key in self._holds:
                continue  # a held event runs the project next (:meth:`_first_wait`)
            self.queue.add(key, background=True)  # events and peers go first
            queued += 1
        self._converged_at = {k: t for k, t in self._converged_at.items() if k in keys}
        log.debug("resync queued", projects=queued, known=len(keys))
        return queued

    # -- messages ------------------------------------------------------------------------

    async def _on_peer(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) == 5:
            key, peer = names.project_key(parts[3], parts[4]), parts[2]
            if peer == self._builds_on:
                self._builds_on_heard_at = asyncio.get_running_loop().time()
            hold = self._holds.get(key)
            if hold is not None:  # the held event runs the project: no other run
                if peer == self._builds_on:
                    _settle(hold.future)
            else:
                if peer == self._builds_on and not self.statuses.published(key):
                    self._heard.add(key)
                if self._peer_matters(key, peer, msg):
                    self.queue.add(key)
        await msg.ack()

    async def _first_wait(self, key: str) -> None:
        """A new project's first run waits for the peer it builds on to report on it (see
        :class:`~.reconciling.FirstBuild`): until then its result could only be ``Pending``
        waiting for that peer. The wait ends when that status is delivered here, or found in
        the stream after :data:`FIRST_WAIT_LOOKUP` (another replica of this service took it);
        early when the peer has said nothing about any project for ``first_wait_seconds``
        (it is down or stuck: report Pending now); and after :data:`FIRST_WAIT_CAP` in any
        case."""
        if key in self._heard or key in self._holds:
            self._heard.discard(key)
            return
        loop = asyncio.get_running_loop()
        hold = self._holds[key] = _Hold(loop.time(), loop.create_future())
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._release_holds())
        try:
            await hold.future
        finally:
            del self._holds[key]

    async def _release_holds(self) -> None:
        """Ends the first waits that have waited long enough, while any is held."""
        quiet = self.settings.first_wait_seconds
        tick = min(quiet, FIRST_WAIT_LOOKUP, FIRST_WAIT_CAP) / 4
        while self._holds:
            await asyncio.sleep(tick)
            now = asyncio.get_running_loop().time()
            lookups = []
            for key, hold in self._holds.items():
                since = max(hold.since, self._builds_on_heard_at)
                if now - since >= quiet or now - hold.since >= FIRST_WAIT_CAP:
                    _settle(hold.future)
                elif not hold.looked_up and now - hold.since >= FIRST_WAIT_LOOKUP:
                    hold.looked_up = True
                    lookups.append(self._look_up(key, hold))
            await asyncio.gather(*lookups)

    async def _look_up(self, key: str, hold: _Hold) -> None:
        assert self._builds_on is not None
        org, project = names.split_key(key)
        try:
            found = await self.peers.status(self._builds_on, org, project)
        except Exception as exc:  # a reconnect in progress: the other rules still apply
            log.debug("first wait lookup failed", project=key, error=repr(exc))
            return
        if found is not None:
            _settle(hold.future)

    def _peer_matters(self, key: str, peer: str, msg: Msg) -> bool:
        """False when the status cannot change the project's result: the project's last
        result waits for another peer, or for this one and the status is ``Pending``
        (:attr:`~.reconciling.Result.waiting_for`), and no run of it is queued or running (a
        running one may have read ``peer``'s older status); or the reconciler says so
        (``wants_peer``)."""
        waiting = self._waiting.get(key)
        if waiting is not None and self.queue.pending(key):
            waiting = None
        if waiting is not None and waiting != peer:
            return False
        if (self._wants_peer is None and waiting is None) or not msg.data:
            return True
        status = parse_status(msg.subject, msg.data)
        if status is None:
            return True  # a bad one: the reconcile reads it and says so
        if waiting is not None and status.state == "Pending":
            return False
        return self._wants_peer is None or self._wants_peer(status)

    async def _on_event(self, msg: Msg) -> None:
        meta = msg.metadata
        deliveries = meta.num_delivered or 1
        seq = meta.sequence.stream if meta.sequence else 0
        self.counters.events += 1
        if deliveries > 1:
            self.counters.redelivered += 1
        structlog.contextvars.bind_contextvars(subject=msg.subject, stream_seq=seq)
        decoded = intake.decode(msg.subject, msg.data)
        if isinstance(decoded, intake.Rejected):
            await self._reject(msg, decoded, seq, deliveries)
            return
        key = names.project_key(decoded.organization, decoded.name)
        structlog.contextvars.bind_contextvars(project=key, event_id=decoded.event_id)
        if isinstance(decoded, intake.AcceptedMember):
            await self._on_member_event(msg, decoded, key, seq, deliveries)
            return
        if deliveries > self.settings.max_deliver:
            await self._dead_letter(msg, decoded, seq, deliveries, "earlier attempts crashed")
            return
        fold, record = await self.records.fold(
            key,
            organization=decoded.organization,
            name=decoded.name,
            generation=decoded.generation or seq,
            event_id=decoded.event_id,
            spec=decoded.spec,
            likely_new=msg.subject == subjects.PROJECT_CREATED,
        )
        new = record is not None and not record.deleted and record.previous_spec is None
        if fold is Fold.APPLIED and new:  # no record before, or a tombstone
            self.statuses.created(key)
            if self._builds_on is not None and self.settings.first_wait_seconds > 0:
                await self._first_wait(key)
        if fold is Fold.STALE:
            self.counters.stale += 1
            log.info("stale event ignored")
            await msg.ack()
            return
        outcome = await self.queue.run_now(key)
        result = outcome.result
        if outcome.retry:
            if deliveries >= self.settings.max_deliver:
                await self._dead_letter(msg, decoded, seq, deliveries, result.message)
            else:
                await msg.nak(delay=backoff(deliveries))
            return
        if result.state == "Error":
            await self._publish_error(
                "rejected", result.reason, result.message, msg, seq, deliveries,
                decoded.event_id, decoded.organization, decoded.name,
            )  # fmt: skip
        await msg.ack()

    async def _on_member_event(
        self, msg: Msg, ev: intake.AcceptedMember, key: str, seq: int, deliveries: int
    ) -> None:
        """A NIC or EIP event: fold it into the member record, reconcile its project, and
        answer with an error event when the member ends in Error (e.g. an address conflict)."""
        assert self.members is not None  # the consumer filter admits member events only then
        structlog.contextvars.bind_contextvars(member=ev.member)
        if deliveries > self.settings.max_deliver:
            await self._dead_letter(msg, ev, seq, deliveries, "earlier attempts crashed")
            return
        fold, record = await self.members.fold(
            key,
            ev.member,
            generation=ev.generation or seq,
            event_id=ev.event_id,
            workload=ev.workload,
            eip=ev.eip,
            fip=ev.fip,
            service=ev.service,
        )
        if fold is Fold.STALE:
            self.counters.stale += 1
            log.info("stale member event ignored")
            await msg.ack()
            return
        outcome = await self.queue.run_now(key)
        if outcome.retry:
            if deliveries >= self.settings.max_deliver:
                await self._dead_letter(msg, ev, seq, deliveries, outcome.result.message)
            else:
                await msg.nak(delay=backoff(deliveries))
            return
        state = outcome.members.get(ev.member)
        current = record is not None and state is not None and state.generation == record.generation
        if state is not None and state.state == "Error" and current:
            await self._publish_error(
                    "rejected", state.reason, state.message, msg, seq, deliveries,
                    ev.event_id, ev.organization, ev.name,
                )  # fmt: skip
        await msg.ack()

    async def _reject(self, msg: Msg, rej: intake.Rejected, seq: int, deliveries: int) -> None:
        self.counters.rejected += 1
        log.warning("event rejected", reason=rej.reason, error=rej.message)
        await self._publish_error(
            "rejected", rej.reason, rej.message, msg, seq, deliveries,
            rej.event_id, rej.organization, rej.name,
        )  # fmt: skip
        if rej.organization and rej.name:
            record, _ = await self.records.get(names.project_key(rej.organization, rej.name))
            if record is None:
                # A project that does not exist says why; an existing one keeps its state.
                await self.statuses.publish(
                    rej.organization, rej.name, seq, Result("Error", rej.reason, rej.message)
                )
        await msg.term()

    async def _dead_letter(
        self,
        msg: Msg,
        ev: intake.Accepted | intake.AcceptedMember,
        seq: int,
        deliveries: int,
        why: str,
    ) -> None:
        self.counters.dead_letters += 1
        log.error("event dead-lettered", deliveries=deliveries, error=why)
        await self._publish_error(
            "dead-letter", "MaxDeliveriesExceeded",
            f"gave up after {deliveries} deliveries: {why}", msg, seq, deliveries,
            ev.event_id, ev.organization, ev.name,
        )  # fmt: skip
        await msg.term()

    async def _publish_error(
        self,
        kind: str,
        reason: str,
        message: str,
        msg: Msg,
        seq: int,
        deliveries: int,
        event_id: str | None,
        org: str | None,
        project: str | None,
    ) -> None:
        record = ErrorEvent(
            service=self.service,
            kind="dead-letter" if kind == "dead-letter" else "rejected",
            reason=reason,
            message=message,
            subject=msg.subject,
            event_id=event_id,
            stream_sequence=seq or None,
            deliveries=deliveries,
            organization=org,
            project=project,
            payload=msg.data[:MAX_PAYLOAD_ECHO].decode("utf-8", errors="replace"),
            time=datetime.now(UTC),
        )
        make = subjects.dlq_subject if kind == "dead-letter" else subjects.error_subject
        await self.js.publish(
            make(self.service, org, project),
            record.model_dump_json(by_alias=True).encode(),
            stream=subjects.ERRORS_STREAM,
        )

    # -- reconcile -----------------------------------------------------------------------

    async def _reconcile(self, key: str) -> Outcome:
        org, project = names.split_key(key)
        rid = uuid.uuid4().hex[:12]
        # For the reconciler's own lines too (this runs in a work-queue worker task).
        structlog.contextvars.bind_contextvars(project=key, reconcile_id=rid)
        logger = log.bind(project=key, reconcile_id=rid)
        loop = asyncio.get_running_loop()
        started = loop.time()
        record, revision = await self.records.get(key)
        members = self.members.of(key) if self.members is not None else {}
        ctx = Context(key, org, project, record, self.peers, members)
        retry = False
        unknown = record is None and not members and key not in self._owned
        torn_down = self._torn_down.get(key)
        done = (
            record is not None and record.deleted and not members and torn_down is not None
            and torn_down[0] == revision
        )  # fmt: skip
        try:
            if unknown:
                # Never folded here, no members, nothing in the backend at the last look: a
                # peer's status that came before our own event (a burst). A teardown would
                # scan the backend for nothing (bench/: 28 % of VPC's CPU in a burst).
                result = Result("Deleted", "TornDown")
            elif done:
                # The tombstone this process tore down: its expiry, a peer's status or the
                # resync run it to forget it, not to sweep the backend again. VPC's teardown
                # scans its tables: a bench burst after 200 deletions took twice as long,
                # and every resync swept every tombstone until it expired. What another
                # replica might still have written for it is an orphan once the tombstone is
                # forgotten, and the resync tears orphans down (``owned_keys``).
                assert torn_down is not None
                result = torn_down[1]
            else:
                result = await self.reconciler.reconcile(ctx)
            self._failures.pop(key, None)
        except PermanentError as exc:
            result = Result("Error", exc.reason, exc.message)
        except TemporaryError as exc:
            result = Result("Error", exc.reason, exc.message, requeue_after=exc.delay)
            retry = True
        except Exception as exc:
            attempt = self._failures[key] = self._failures.get(key, 0) + 1
            logger.exception("reconcile failed", attempt=attempt)
            result = Result("Error", "InternalError", repr(exc), requeue_after=backoff(attempt))
            retry = True
        if result.state == "Pending" and result.waiting_for is not None:
            self._waiting[key] = result.waiting_for
        else:
            self._waiting.pop(key, None)
        swept = record is not None and record.deleted and result.state == "Deleted"
        if swept and not done and not retry and result.requeue_after is None:
            self._torn_down[key] = (revision, result)
        elif not swept:
            self._torn_down.pop(key, None)
        if unknown:
            # Not a reconcile, and not "Deleted" in the log of a project being created: in a
            # bench burst of 5,000, IPAM's statuses came ahead of NAT's and DNS's own events
            # for ~0.65 of the projects.
            self.counters.unknown_projects += 1
            logger.debug("nothing here to reconcile")
        else:
            self.counters.reconciles += 1
            self.counters.reconcile_seconds += loop.time() - started
            self.latencies.append(loop.time() - started)
            logger.info(
                "reconciled", state=result.state, reason=result.reason, generation=record and
                record.generation, ms=round((loop.time() - started) * 1000, 1),
            )  # fmt: skip
        if result.state == "Error":
            self.counters.reconcile_errors += 1
            self.counters.last_error = f"{key}: {result.reason}: {result.message}"
        if record is not None or result.state != "Deleted":
            await self.statuses.publish(org, project, record.generation if record else 0, result)
        elif self.statuses.published(key) or await self.peers.status(self.service, org, project):
            # A project that never existed but had members (a NIC attached to it, say): once
            # they are gone, so is the status that said they were waiting for it, even when
            # an earlier process published it (this one was restarted since).
            await self.statuses.purge(org, project)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)
        states = {m.member: m for m in result.members}
        if result.state in ("Ready", "Deleted") and result.requeue_after is None and not unknown:
            self._converged_at[key] = loop.time()
        if not retry:
            await self._forget_members(key, members, states)
        if record is not None and record.deleted and result.state == "Deleted":
            await self._maybe_forget(
                key, org, project, revision, record.deleted_at, record.generation
            )
        return Outcome(result, retry, states)

    def will_repair(self, key: str) -> None:
        """The doctor queues ``key`` to repair it: its next run does all its work."""
        self._torn_down.pop(key, None)

    async def _maybe_forget(
        self,
        key: str,
        org: str,
        project: str,
        revision: int,
        deleted_at: datetime | None,
        generation: int,
    ) -> None:
        """Purge a finished tombstone and its status once dependents are done too."""
        age = (datetime.now(UTC) - deleted_at).total_seconds() if deleted_at else 0.0
        wait = self.settings.tombstone_seconds - age
        if wait > 0:
            self.queue.add_after(key, wait)
            return
        for peer in self.reconciler.purge_after:
            # The peer must be done with THIS deletion: a Deleted status of an older generation
            # means it has not seen the latest event yet and may still wait for our status.
            status = await self.peers.status(peer, org, project)
            if status is not None and (status.state != "Deleted" or status.generation < generation):
                self.queue.add_after(key, 2.0)
                return
        if await self.records.purge(key, revision):
            self._torn_down.pop(key, None)
            if self.members is not None:
                await self.members.forget_project(key)
            await self.statuses.purge(org, project)
            self._heard.discard(key)
            log.info("project forgotten", project=key)

    async def _forget_members(
        self, key: str, members: dict[str, MemberRecord], states: dict[str, MemberStatus]
    ) -> None:
        """Purge removed members that the reconcile finished with, after the tombstone age."""
        if self.members is None:
            return
        now = datetime.now(UTC)
        for member, rec in members.items():
            if not rec.deleted:
                continue
            state = states.get(member)
            if state is not None and state.state != "Deleted":
                continue
            age = (now - rec.deleted_at).total_seconds() if rec.deleted_at else 0.0
            wait = self.settings.tombstone_seconds - age
            if wait > 0:
                self.queue.add_after(key, wait)
            elif await self.members.purge(key, member, rec):
                log.info("member forgotten", project=key, member=member)
