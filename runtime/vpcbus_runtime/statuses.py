"""Publishing this service's status and reading its peers', over the status stream.

The status stream keeps the last message per subject, so a peer's current status is one
direct get (``Peers.status``). Publishing is de-duplicated: an unchanged outcome is not
republished on every resync, nor after a restart (the first outcome of a project in this
process is compared with the status already in the stream). Every published status wakes
every service that watches it, so a restart that republished a thousand unchanged statuses
had each downstream service reconcile a thousand projects ahead of a new one (bench/).
"""

from __future__ import annotations

from datetime import UTC, datetime

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from vpcbus_proto import names, subjects
from vpcbus_proto.status import ServiceStatus, parse_status
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.reconciling import Result

log = structlog.get_logger()


class StatusPublisher:
    def __init__(
        self, js: JetStreamContext, service: ServiceName, peers: StreamPeers | None = None
    ) -> None:
        self.js = js
        self.service = service
        #: Reads the stored status before a project's first publish in this process.
        self.peers = peers or StreamPeers(js)
        self._last: dict[str, tuple[object, ...]] = {}
        #: Projects whose record this process created and that have no status from it yet.
        self._new: set[str] = set()

    def created(self, key: str) -> None:
        """The project key's record was just created here (a ``created`` event of a project
        that had no record): its first publish skips the read of a stored status, which can
        only be an older project's (one request fewer per new project; at worst an
        unchanged status is published once more)."""
        if key not in self._last:
            self._new.add(key)

    async def publish(
        self, org: str, project: str, generation: int, result: Result, *, force: bool = False
    ) -> ServiceStatus | None:
        """Publish ``result`` unless the same outcome was the last one published."""
        fingerprint = (
            generation,
            result.state,
            result.reason,
            result.message,
            result.addresses,
            tuple(result.objects),
            tuple(result.members),
            result.resolver,
        )
        key = names.project_key(org, project)
        if not force and self._last.get(key) == fingerprint:
            return None
        if not force and key not in self._last and key not in self._new:
            stored = await self.peers.status(self.service, org, project)
            if stored is not None and _fingerprint(stored) == fingerprint:
                self._last[key] = fingerprint
                return None
        status = ServiceStatus(
            service=self.service,
            organization=org,
            project=project,
            namespace=names.namespace(org, project),
            generation=generation,
            state=result.state,
            reason=result.reason,
            message=result.message,
            observed_at=datetime.now(UTC),
            addresses=result.addresses,
            objects=list(result.objects),
            members=list(result.members),
            resolver=result.resolver,
        )
        await self.js.publish(
            subjects.status_subject(self.service, org, project),
            status.model_dump_json(by_alias=True).encode(),
            stream=subjects.STATUS_STREAM,
        )
        self._last[key] = fingerprint
        self._new.discard(key)
        return status

    def published(self, key: str) -> bool:
        """This process has published a status for the project key and not purged it."""
        return key in self._last

    async def purge(self, org: str, project: str) -> None:
        """Forget the project's status subject (after teardown and tombstone expiry).

        The dedupe memory goes too: if the project comes back (even a redelivered deletion),
        its first status must be published again, not skipped as "unchanged".
        """
        self._last.pop(names.project_key(org, project), None)
        self._new.discard(names.project_key(org, project))
        await self.js.purge_stream(
            subjects.STATUS_STREAM, subject=subjects.status_subject(self.service, org, project)
        )
        self._last.pop(names.project_key(org, project), None)


def _fingerprint(status: ServiceStatus) -> tuple[object, ...]:
    """What :meth:`StatusPublisher.publish` compares, from a published status."""
    return (
        status.generation,
        status.state,
        status.reason,
        status.message,
        status.addresses,
        tuple(status.objects),
        tuple(status.members),
        status.resolver,
    )


class StreamPeers:
    """:class:`~vpcbus_runtime.reconciling.Peers` backed by direct gets on the status stream."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def status(self, service: ServiceName, org: str, project: str) -> ServiceStatus | None:
        try:
            msg = await self.js.get_last_msg(
                subjects.STATUS_STREAM,
                subjects.status_subject(service, org, project),
                direct=True,
            )
        except (NotFoundError, nats.errors.NoRespondersError):
            return None  # no such status, or no status stream yet
        if not msg.data:
            return None
        status = parse_status(msg.subject or "", msg.data)
        if status is None:
            log.warning("malformed status ignored", subject=msg.subject)
        return status
