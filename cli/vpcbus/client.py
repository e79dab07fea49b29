"""A small client of the vpcbus bus: publish lifecycle events, read and await status.

Used by the CLI, the test suite and the benchmark; anything it does, any NATS client can do
(``nats pub project.created '<cloudevent>'``, ``nats sub 'vpcbus.status.>'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from vpcbus_proto import endpoints, events, names, subjects
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.members import (
    EipRef,
    EipSpec,
    FipRef,
    FipSpec,
    LbServiceRef,
    LbServiceSpec,
    WorkloadRef,
    WorkloadSpec,
)
from vpcbus_proto.projects import ProjectRef, ProjectSpec
from vpcbus_proto.status import PoolUsage, ServiceStatus, parse_status
from vpcbus_proto.subjects import ServiceName
from vpcbus_proto.zones import ZONE_ENDPOINT, ZoneReply
from vpcbus_runtime import bus, natsauth
from vpcbus_runtime.statuses import StreamPeers

Statuses = dict[str, ServiceStatus]


class RejectedError(Exception):
    """A service rejected the event (an error record names why)."""

    def __init__(self, errors: list[ErrorEvent]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.service}: {e.reason}: {e.message}" for e in errors))


class EndpointError(Exception):
    """A service endpoint did not answer, or answered with an error."""


class NotAllowedError(Exception):
    """The server refused to let this user publish on a subject (its permissions)."""


#: How nats-py reports a refused publish to the error callback (in lower case).
_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class WaitTimeoutError(Exception):
    def __init__(self, statuses: Statuses) -> None:
        self.statuses = statuses
        detail = ", ".join(
            f"{s}={st.state}({st.reason}{': ' + st.message if st.message else ''})"
            for s, st in sorted(statuses.items())
        )
        super().__init__(detail or "no service reported")


@dataclass(frozen=True)
class Seen:
    """One message as :meth:`Client.tap` hands it on."""

    subject: str
    data: bytes
    time: datetime  # when the stream stored it (a replay), else when it arrived


@dataclass(frozen=True)
class Published:
    event_id: str
    sequence: int
    generation: int
    duplicate: bool


class Client:
    def __init__(self, nc: Nats) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        #: Subjects the server refused us to publish to (lower case, as nats-py reports them).
        self.refused: set[str] = set()
        self._refusal = asyncio.Event()
        #: When the connection dropped (loop time); None while connected.
        self._down_since: float | None = None

    def lost(self, grace: float) -> bool:
        """The connection is closed, or has been down for more than ``grace`` seconds."""
        if self.nc.is_closed:
            return True
        down = self._down_since
        return down is not None and asyncio.get_running_loop().time() - down > grace

    def _on_error(self, exc: Exception) -> None:
        if found := _REFUSED.search(str(exc)):
            self.refused.add(found[1].lower())
            self._refusal.set()

    async def _until_refused(self, subject: str) -> None:
        while subject.lower() not in self.refused:
            self._refusal.clear()
            await self._refusal.wait()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "vpcbus-cli",
        auth: natsauth.NatsAuth | None = None,
        forever: bool = False,
    ) -> Client:
        """Connect as ``auth``; by default as the ``NATS_*`` environment says (:mod:`natsauth`).

        A command gives up after a few reconnect attempts (it reports the lost server);
        ``forever``: a long-running one (``watch``, ``dashboard``) keeps reconnecting, so it
        outlives a server restart as the services do, and asks :meth:`lost` how long the
        server has been gone."""

        client: Client | None = None

        async def quiet(exc: Exception) -> None:
            """The CLI reports the final failure itself; no traceback per attempt. A refused
            publish is noted, so :meth:`publish_body` fails at once (no reply comes)."""
            if client is not None:
                client._on_error(exc)

        async def down() -> None:
            if client is not None and client._down_since is None:
                client._down_since = asyncio.get_running_loop().time()

        async def back() -> None:
            if client is not None:
                client._down_since = None

        nc = await nats.connect(
            servers=[u.strip() for u in url.split(",")],
            name=name,
            **(auth or natsauth.from_env()).options(),
            error_cb=quiet,
            disconnected_cb=down,
            reconnected_cb=back,
            connect_timeout=2,
            max_reconnect_attempts=3,  # -1 here would also retry the first connect forever
            reconnect_time_wait=0.5,
        )
        if forever:  # read by nats-py on each reconnect, not only at connect
            nc.options["max_reconnect_attempts"] = -1
        client = cls(nc)
        return client

    async def ensure_streams(self) -> None:
        """Declare the streams (idempotent), so publishing works before any service ran."""
        await bus.ensure_streams(self.js)

    async def close(self) -> None:
        """Drain; a connection that is down (reconnecting) cannot drain: just close it."""
        if self.nc.is_closed:
            return
        if self.nc.is_reconnecting:
            # End the reconnect loop by its own rule too: a cancel that races with a connect
            # time-out can be swallowed (asyncio.wait_for, Python 3.11), and with no limit
            # the loop would then keep the process alive.
            self.nc.options["max_reconnect_attempts"] = 1
            await self.nc.close()
            return
        await self.nc.drain()

    # -- publishing ----------------------------------------------------------------------

    async def publish_body(self, subject: str, body: dict[str, object]) -> Published:
        """Publish a CloudEvent body on a lifecycle subject, with ``Nats-Msg-Id`` = id."""
        event_id = str(body["id"])
        publish = asyncio.ensure_future(
            self.js.publish(
                subject,
                json.dumps(body).encode(),
                headers={"Nats-Msg-Id": event_id},
                stream=subjects.EVENTS_STREAM,
            )
        )
        refused = asyncio.ensure_future(self._until_refused(subject))
        await asyncio.wait({publish, refused}, return_when=asyncio.FIRST_COMPLETED)
        refused.cancel()
        if not publish.done():
            publish.cancel()
            user = self.nc.options.get("user") or "anonymous"
            raise NotAllowedError(f"NATS refused user {user} to publish {subject}")
        ack = publish.result()
        gen = body.get("generation")
        generation = int(gen) if isinstance(gen, int) else ack.seq
        return Published(event_id, ack.seq, generation, bool(ack.duplicate))

    async def upsert(
        self, spec: ProjectSpec, *, update: bool = False, generation: int | None = None
    ) -> Published:
        subject = subjects.PROJECT_UPDATED if update else subjects.PROJECT_CREATED
        return await self.publish_body(
            subject, events.new_event(subject, spec, generation=generation)
        )

    async def delete(self, ref: ProjectRef, *, generation: int | None = None) -> Published:
        subject = subjects.PROJECT_DELETED
        return await self.publish_body(
            subject, events.new_event(subject, ref, generation=generation)
        )

    async def attach(self, nic: WorkloadSpec, *, generation: int | None = None) -> Published:
        """Publish ``workload.attached`` for a VM or pod NIC."""
        subject = subjects.WORKLOAD_ATTACHED
        return await self.publish_body(
            subject, events.new_event(subject, nic, generation=generation)
        )

    async def detach(self, nic: WorkloadRef, *, generation: int | None = None) -> Published:
        """Publish ``workload.detached`` (only the NIC's identity is sent)."""
        ref = WorkloadRef(
            organization=nic.organization, project=nic.project, kind=nic.kind, name=nic.name,
            interface=nic.interface,
        )  # fmt: skip
        subject = subjects.WORKLOAD_DETACHED
        return await self.publish_body(
            subject, events.new_event(subject, ref, generation=generation)
        )

    async def create_eip(self, eip: EipSpec, *, generation: int | None = None) -> Published:
        subject = subjects.EIP_CREATED
        return await self.publish_body(
            subject, events.new_event(subject, eip, generation=generation)
        )

    async def delete_eip(self, eip: EipRef, *, generation: int | None = None) -> Published:
        ref = EipRef(organization=eip.organization, project=eip.project, name=eip.name)
        subject = subjects.EIP_DELETED
        return await self.publish_body(
            subject, events.new_event(subject, ref, generation=generation)
        )

    async def create_fip(self, fip: FipSpec, *, generation: int | None = None) -> Published:
        subject = subjects.FIP_CREATED
        return await self.publish_body(
            subject, events.new_event(subject, fip, generation=generation)
        )

    async def delete_fip(self, fip: FipRef, *, generation: int | None = None) -> Published:
        ref = FipRef(organization=fip.organization, project=fip.project, name=fip.name)
        subject = subjects.FIP_DELETED
        return await self.publish_body(
            subject, events.new_event(subject, ref, generation=generation)
        )

    async def upsert_service(
        self, svc: LbServiceSpec, *, update: bool = False, generation: int | None = None
    ) -> Published:
        subject = subjects.SERVICE_UPDATED if update else subjects.SERVICE_CREATED
        return await self.publish_body(
            subject, events.new_event(subject, svc, generation=generation)
        )

    async def delete_service(
        self, svc: LbServiceRef, *, generation: int | None = None
    ) -> Published:
        ref = LbServiceRef(organization=svc.organization, project=svc.project, name=svc.name)
        subject = subjects.SERVICE_DELETED
        return await self.publish_body(
            subject, events.new_event(subject, ref, generation=generation)
        )

    # -- reading -------------------------------------------------------------------------

    async def status(self, service: ServiceName, org: str, project: str) -> ServiceStatus | None:
        """The last status ``service`` published for the project (the services' own reader)."""
        return await StreamPeers(self.js).status(service, org, project)

    async def zone(self, org: str, project: str, *, timeout: float = 5.0) -> ZoneReply:
        """What the project's switch answers, from the DNS service (``vpcbus.svc.dns.zone``).

        Raises :class:`EndpointError` when no DNS service answers or it reports a failure."""
        body = json.dumps({"organization": org, "project": project}).encode()
        try:
            msg = await self.nc.request(ZONE_ENDPOINT, body, timeout=timeout)
        except (NoRespondersError, nats.errors.TimeoutError) as exc:
            raise EndpointError(f"no DNS service answered {ZONE_ENDPOINT}") from exc
        error = (msg.headers or {}).get(endpoints.ERROR_HEADER)
        if error:
            code = (msg.headers or {}).get(endpoints.ERROR_CODE_HEADER, "")
            raise EndpointError(f"the DNS service answered {code}: {error}")
        return ZoneReply.model_validate_json(msg.data)

    async def statuses(self, org: str, project: str) -> Statuses:
        found = await asyncio.gather(*(self.status(s, org, project) for s in subjects.SERVICES))
        return {s: st for s, st in zip(subjects.SERVICES, found, strict=True) if st is not None}

    async def all_statuses(self) -> dict[str, Statuses]:
        """Every project's statuses, read with one ordered replay of the last values."""
        info = await self.js.stream_info(subjects.STATUS_STREAM)
        out: dict[str, Statuses] = {}
        if not info.state.messages:
            return out
        sub = await self.js.subscribe(
            "vpcbus.status.>",
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=2.0)
                except nats.errors.TimeoutError:
                    break
                st = parse_status(msg.subject, msg.data) if msg.data else None
                if st is not None:  # (a malformed one is skipped)
                    key = names.project_key(st.organization, st.project)
                    out.setdefault(key, {})[st.service] = st
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return out

    async def pool_usages(self) -> list[PoolUsage]:
        """Every external pool's accounting, the last ``vpcbus.usage.pool.<pool>`` of each."""
        info = await self.js.stream_info(
            subjects.STATUS_STREAM, subjects_filter=subjects.pool_usage_subject(">")
        )
        out = []
        for subject in sorted(info.state.subjects or {}):
            msg = await self.js.get_last_msg(subjects.STATUS_STREAM, subject, direct=True)
            if msg.data:
                with contextlib.suppress(ValidationError):  # a malformed one is skipped
                    out.append(PoolUsage.model_validate_json(msg.data))
        return out

    async def errors(self, limit: int = 50) -> list[ErrorEvent]:
        info = await self.js.stream_info(subjects.ERRORS_STREAM)
        out: list[ErrorEvent] = []
        if not info.state.messages:
            return out  # an empty stream's first sequence is 0, which get_msg refuses
        first = max(info.state.first_seq, info.state.last_seq - limit + 1)
        for seq in range(first, info.state.last_seq + 1):
            try:
                msg = await self.js.get_msg(subjects.ERRORS_STREAM, seq)
            except NotFoundError:
                continue
            if msg.data:
                with contextlib.suppress(ValidationError):  # a malformed one is skipped
                    out.append(ErrorEvent.model_validate_json(msg.data))
        return out

    async def tap(
        self, filters: list[str], cb: Callable[[Seen], Awaitable[None]], *, replay: bool = False
    ) -> None:
        """Hand every message on ``filters`` to ``cb`` until :meth:`close`.

        Core subscriptions: what is published from now on. ``replay``: an ordered consumer
        per filter instead, which delivers what its stream still holds, then carries on live.
        """

        async def seen(msg: Msg) -> None:
            when = msg.metadata.timestamp if replay else datetime.now(UTC)
            await cb(Seen(msg.subject, msg.data, when))

        for subject in filters:
            if replay:
                await self.js.subscribe(
                    subject,
                    cb=seen,
                    ordered_consumer=True,
                    deliver_policy=api.DeliverPolicy.ALL,
                )
            else:
                await self.nc.subscribe(subject, cb=seen)
        await self.nc.flush()

    # -- waiting -------------------------------------------------------------------------

    async def watch(self, org: str, project: str) -> Watch:
        """Subscribe to a project's status and errors; use before publishing."""
        w = Watch(self, org, project)
        await w.start()
        return w


class Watch:
    """Live status and errors of one project, plus a way to wait for a condition."""

    def __init__(self, client: Client, org: str, project: str) -> None:
        self.client = client
        self.org = org
        self.project = project
        self.statuses: Statuses = {}
        self.errors: list[ErrorEvent] = []
        self._changed = asyncio.Event()
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        nc = self.client.nc
        self._subs.append(
            await nc.subscribe(subjects.status_filter("*", self.org, self.project), cb=self._st)
        )
        self._subs.append(
            await nc.subscribe(f"vpcbus.error.*.{self.org}.{self.project}", cb=self._err)
        )
        self._subs.append(
            await nc.subscribe(f"vpcbus.dlq.*.{self.org}.{self.project}", cb=self._err)
        )
        await nc.flush()
        for service, st in (await self.client.statuses(self.org, self.project)).items():
            self.statuses.setdefault(service, st)

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _st(self, msg: Msg) -> None:
        st = parse_status(msg.subject, msg.data)
        if st is None:
            return  # malformed or misplaced: not a status of this project
        self.statuses[st.service] = st
        self._changed.set()

    async def _err(self, msg: Msg) -> None:
        try:
            self.errors.append(ErrorEvent.model_validate_json(msg.data))
        except ValidationError:
            return
        self._changed.set()

    async def until(
        self,
        done: Callable[[Statuses], bool],
        *,
        timeout: float,
        event_id: str | None = None,
        progress: Callable[[Statuses], None] | None = None,
    ) -> Statuses:
        """Wait until ``done(statuses)``; :class:`RejectedError` if ``event_id`` is rejected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            mine = [e for e in self.errors if event_id is not None and e.event_id == event_id]
            if mine:
                await asyncio.sleep(0.2)  # let the other services' verdicts arrive too
                raise RejectedError([e for e in self.errors if e.event_id == event_id])
            if done(self.statuses):
                return dict(self.statuses)
            if progress is not None:
                progress(self.statuses)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise WaitTimeoutError(self.statuses)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                # Poll too: a status published before we subscribed is only in the stream.
                for service, st in (await self.client.statuses(self.org, self.project)).items():
                    current = self.statuses.get(service)
                    if current is None or current.observed_at < st.observed_at:
                        self.statuses[service] = st


def ready_at(generation: int) -> Callable[[Statuses], bool]:
    """All four services Ready at ``generation`` or later, and agreeing."""

    def check(statuses: Statuses) -> bool:
        if set(statuses) != set(subjects.SERVICES):
            return False
        gens = {s.generation for s in statuses.values()}
        return (
            len(gens) == 1
            and min(gens) >= generation
            and all(s.state == "Ready" for s in statuses.values())
        )

    return check


def member_at(
    member: str, generation: int, *, services: tuple[ServiceName, ...] = ("ipam",)
) -> Callable[[Statuses], bool]:
    """The member (``workload.vm.a.default``, ``eip.x``) is settled at ``generation`` or
    later in every one of ``services``: Ready, or Error (the caller reads which), or, for a
    removal, Deleted or no longer listed."""

    def check(statuses: Statuses) -> bool:
        for service in services:
            st = statuses.get(service)
            state = st.member(member) if st is not None else None
            if state is None or state.generation < generation:
                return False
        return True

    return check


def member_gone(
    member: str, *, services: tuple[ServiceName, ...] = ("ipam",)
) -> Callable[[Statuses], bool]:
    """No service of ``services`` lists the member any more, or each says it is Deleted."""

    def check(statuses: Statuses) -> bool:
        for service in services:
            st = statuses.get(service)
            state = st.member(member) if st is not None else None
            if state is not None and state.state != "Deleted":
                return False
        return True

    return check


def deleted_at(generation: int) -> Callable[[Statuses], bool]:
    """Every service reports Deleted at ``generation`` or later (or has forgotten it)."""

    def check(statuses: Statuses) -> bool:
        return all(s.state == "Deleted" and s.generation >= generation for s in statuses.values())

    return check
