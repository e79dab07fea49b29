"""A service's recorded desired state per project, kept in its own KV bucket.

An incoming lifecycle event is folded into the record with compare-and-set. The record's
``generation`` is the event's generation, or its stream sequence when the publisher sent
none; an event that does not raise it is stale and changes nothing. A deletion leaves a
tombstone (``spec is None``) so late or redelivered events for the project are recognised;
the controller purges it once teardown is complete and ``tombstone_seconds`` have passed.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from vpcbus_proto.projects import ProjectSpec
from vpcbus_runtime.kvcas import delete_if

KEY_PREFIX = "project."


class ProjectRecord(BaseModel):
    """What the service was last asked to make of a project."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    organization: str
    name: str
    generation: int
    event_id: str
    spec: ProjectSpec | None
    deleted_at: datetime | None = None
    #: The spec before the latest accepted change (for immutability checks).
    previous_spec: ProjectSpec | None = None

    @property
    def deleted(self) -> bool:
        return self.spec is None


class Fold(enum.Enum):
    """What folding one event into the record did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"


def kv_key(project_key: str) -> str:
    return KEY_PREFIX + project_key


#: Records kept parsed by :class:`RecordStore`, the least recently read dropped first.
PARSED_RECORDS = 4096


class RecordStore:
    """Typed access to ``project.<org>.<project>`` keys of one service's bucket.

    Each read still asks the bucket (another replica may have written the key), but a record
    whose revision was parsed or written here before is not parsed again: a revision names
    one value for good. A burst parsed each record three to four times per service (its
    fold, then a reconcile per own event and peer status). A read never goes back behind
    a revision this process already wrote or read.
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._parsed: dict[str, tuple[int, ProjectRecord]] = {}

    def _remember(self, project_key: str, revision: int, record: ProjectRecord) -> None:
        self._parsed.pop(project_key, None)
        self._parsed[project_key] = (revision, record)  # the most recent last
        if len(self._parsed) > PARSED_RECORDS:
            del self._parsed[next(iter(self._parsed))]

    async def get(self, project_key: str) -> tuple[ProjectRecord | None, int]:
        """The record and its KV revision (0 when absent)."""
        try:
            entry = await self.kv.get(kv_key(project_key))
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, 0
        revision = entry.revision or 0
        known = self._parsed.get(project_key)
        if known is not None and revision and known[0] >= revision:
            # The same revision; or an older one, from a stream replica that lags behind
            # (direct gets of a clustered bucket): what this process wrote or read is newer.
            revision, record = known
        else:
            record = ProjectRecord.model_validate_json(entry.value)
        self._remember(project_key, revision, record)
        return record, revision

    async def keys(self) -> list[str]:
        try:
            raw = await self.kv.keys()
        except NoKeysError:
            return []
        return [k.removeprefix(KEY_PREFIX) for k in raw if k.startswith(KEY_PREFIX)]

    async def fold(
        self,
        project_key: str,
        *,
        organization: str,
        name: str,
        generation: int,
        event_id: str,
        spec: ProjectSpec | None,
        likely_new: bool = False,
    ) -> tuple[Fold, ProjectRecord | None]:
        """Fold one event in; retries compare-and-set races until the outcome is decided.

        ``likely_new`` (a ``created`` event): create the key before reading it, one request
        fewer for a new project. When the key exists, that costs two requests more (nats-py
        reads it back) and the fold goes on as without it."""
        if likely_new:
            record = _record(organization, name, generation, event_id, spec, None)
            try:
                written = await self.kv.create(
                    kv_key(project_key), record.model_dump_json().encode()
                )
            except KeyWrongLastSequenceError:
                pass
            else:
                self._remember(project_key, written, record)
                return Fold.APPLIED, record
        while True:
            current, revision = await self.get(project_key)
            if current is not None:
                if generation < current.generation:
                    return Fold.STALE, current
                if generation == current.generation:
                    same = current.event_id == event_id
                    return (Fold.DUPLICATE if same else Fold.STALE), current
            record = _record(organization, name, generation, event_id, spec, current)
            payload = record.model_dump_json().encode()
            try:
                if revision:
                    written = await self.kv.update(kv_key(project_key), payload, last=revision)
                else:
                    written = await self.kv.create(kv_key(project_key), payload)
            except KeyWrongLastSequenceError:
                continue
            self._remember(project_key, written, record)
            return Fold.APPLIED, record

    async def purge(self, project_key: str, revision: int) -> bool:
        """Remove a tombstone if nobody rewrote it meanwhile; True when it is gone."""
        current, rev = await self.get(project_key)
        if current is None:
            return True
        if rev != revision or not current.deleted:
            return False
        if not await delete_if(self.kv, kv_key(project_key), rev):
            return False
        self._parsed.pop(project_key, None)
        await self.kv.purge(kv_key(project_key))
        return True


def _record(
    organization: str,
    name: str,
    generation: int,
    event_id: str,
    spec: ProjectSpec | None,
    current: ProjectRecord | None,
) -> ProjectRecord:
    """The record an applied event leaves, over the ``current`` one (None: none yet)."""
    return ProjectRecord(
        organization=organization,
        name=name,
        generation=generation,
        event_id=event_id,
        spec=spec,
        deleted_at=datetime.now(UTC) if spec is None else None,
        previous_spec=current.spec if current is not None else None,
    )
