"""A service's recorded members (NICs, EIPs) per project, kept in its own KV bucket.

Members are folded like projects (:mod:`.records`): the event's generation, or its stream
sequence, orders the events of one member; a removal leaves a tombstone so a late or
redelivered event is recognised. Keys: ``member.<org>.<project>.<member key>``.

Unlike project records, members are also held in memory: a reconcile of a project reads
all of its members, so a watcher keeps an index of the bucket's ``member.>`` keys. The
index is ``ready`` once the initial values are loaded, and the controller fetches no event
before that. A fold updates the index at once, so the reconcile it triggers sees it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from vpcbus_proto import names
from vpcbus_proto.members import EipSpec, FipSpec, LbServiceSpec, WorkloadSpec
from vpcbus_runtime.kvcas import delete_if
from vpcbus_runtime.kvmirror import mirror
from vpcbus_runtime.records import Fold

KEY_PREFIX = "member."


class MemberRecord(BaseModel):
    """What the service was last asked to make of one member of a project."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    organization: str
    project: str
    member: str
    generation: int
    event_id: str
    workload: WorkloadSpec | None = None
    eip: EipSpec | None = None
    fip: FipSpec | None = None
    service: LbServiceSpec | None = None
    deleted_at: datetime | None = None

    @property
    def deleted(self) -> bool:
        return (
            self.workload is None
            and self.eip is None
            and self.fip is None
            and (self.service is None)
        )


def member_kv_key(project_key: str, member: str) -> str:
    return f"{KEY_PREFIX}{project_key}.{member}"


def _split(kv_key: str) -> tuple[str, str] | None:
    """``member.o.p.workload.vm.a.default`` -> ("o.p", "workload.vm.a.default")."""
    parts = kv_key.removeprefix(KEY_PREFIX).split(".", 2)
    if len(parts) != 3 or not kv_key.startswith(KEY_PREFIX):
        return None
    return names.project_key(parts[0], parts[1]), parts[2]


class MemberIndex:
    """The member records of every project, mirrored from KV."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.ready = asyncio.Event()
        self._by_project: dict[str, dict[str, tuple[MemberRecord, int]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(
            mirror(self.kv, self._apply, self.ready, keys=KEY_PREFIX + ">")
        )
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _apply(self, key: str, value: bytes | None, revision: int, op: str | None) -> None:
        where = _split(key)
        if where is None:
            return
        project_key, member = where
        members = self._by_project.setdefault(project_key, {})
        current = members.get(member)
        if current is not None and current[1] >= revision and revision:
            return  # the watcher lags behind (or echoes) a fold this process applied
        if op in ("DEL", "PURGE") or not value:
            members.pop(member, None)
            if not members:
                del self._by_project[project_key]
            return
        members[member] = (MemberRecord.model_validate_json(value), revision)

    # -- queries -------------------------------------------------------------------------

    def of(self, project_key: str) -> dict[str, MemberRecord]:
        return {m: rec for m, (rec, _) in self._by_project.get(project_key, {}).items()}

    def projects(self) -> list[str]:
        return sorted(self._by_project)

    # -- writes --------------------------------------------------------------------------

    async def fold(
        self,
        project_key: str,
        member: str,
        *,
        generation: int,
        event_id: str,
        workload: WorkloadSpec | None = None,
        eip: EipSpec | None = None,
        fip: FipSpec | None = None,
        service: LbServiceSpec | None = None,
    ) -> tuple[Fold, MemberRecord | None]:
        """Fold one member event in (compare-and-set on the cached revision)."""
        await self.ready.wait()
        org, project = names.split_key(project_key)
        key = member_kv_key(project_key, member)
        while True:
            cached = self._by_project.get(project_key, {}).get(member)
            if cached is not None:
                current, revision = cached
                if generation < current.generation:
                    return Fold.STALE, current
                if generation == current.generation:
                    same = current.event_id == event_id
                    return (Fold.DUPLICATE if same else Fold.STALE), current
            else:
                revision = 0
            record = MemberRecord(
                organization=org,
                project=project,
                member=member,
                generation=generation,
                event_id=event_id,
                workload=workload,
                eip=eip,
                fip=fip,
                service=service,
                deleted_at=None if workload or eip or fip or service else datetime.now(UTC),
            )
            payload = record.model_dump_json().encode()
            try:
                if revision:
                    new_revision = await self.kv.update(key, payload, last=revision)
                else:
                    new_revision = await self.kv.create(key, payload)
            except KeyWrongLastSequenceError:
                await self._refresh(key)
                continue
            self._apply(key, payload, new_revision, "PUT")
            return Fold.APPLIED, record

    async def _refresh(self, key: str) -> None:
        """Another replica wrote ``key``: read it instead of waiting for the watcher."""
        try:
            entry = await self.kv.get(key)
        except Exception:  # deleted meanwhile: KeyNotFoundError / KeyDeletedError
            self._apply(key, None, 0, "DEL")
            return
        self._apply(key, entry.value, entry.revision or 0, "PUT")

    async def purge(self, project_key: str, member: str, record: MemberRecord) -> bool:
        """Remove a finished tombstone unless it was rewritten; True when it is gone."""
        cached = self._by_project.get(project_key, {}).get(member)
        if cached is None:
            return True
        current, revision = cached
        if current != record or not current.deleted:
            return False
        key = member_kv_key(project_key, member)
        if not await delete_if(self.kv, key, revision):
            return False
        await self.kv.purge(key)
        self._apply(key, None, 0, "PURGE")
        return True

    async def forget_project(self, project_key: str) -> int:
        """Remove every member record of a forgotten project; returns how many."""
        gone = 0
        for member in list(self._by_project.get(project_key, {})):
            key = member_kv_key(project_key, member)
            await self.kv.purge(key)
            self._apply(key, None, 0, "PURGE")
            gone += 1
        return gone
