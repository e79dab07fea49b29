"""What to publish: the desired events against the ones already published (:func:`plan`).

Pure. A key is published again only when its event changed (a fingerprint of its data), so
a relist or a restart publishes nothing new; a key that is no longer desired gets its
removal event. Generations: an event's generation is the newest ``resourceVersion`` it was
built from (the cluster's one revision counter, so it also grows across delete and
re-create), but always above the last one published for the key; a removal takes the
snapshot's revision. Event ids are derived from uid, key and generation, so a republish of
the same change is dropped by ``Nats-Msg-Id`` or folded by the services as a duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from vpcbus_bridge.mapping.members import Desired, Problem
from vpcbus_proto import subjects
from vpcbus_proto.members import EipRef, FipRef, LbServiceRef, WorkloadRef
from vpcbus_proto.projects import ProjectRef

#: family -> (subject when new, subject when changed)
_UPSERT = {
    "project": (subjects.PROJECT_CREATED, subjects.PROJECT_UPDATED),
    "service": (subjects.SERVICE_CREATED, subjects.SERVICE_UPDATED),
    "workload": (subjects.WORKLOAD_ATTACHED, subjects.WORKLOAD_ATTACHED),
    "eip": (subjects.EIP_CREATED, subjects.EIP_CREATED),
    "fip": (subjects.FIP_CREATED, subjects.FIP_CREATED),
}
_REMOVE = {
    "project": subjects.PROJECT_DELETED,
    "workload": subjects.WORKLOAD_DETACHED,
    "eip": subjects.EIP_DELETED,
    "fip": subjects.FIP_DELETED,
    "service": subjects.SERVICE_DELETED,
}
_REFS: dict[str, type[BaseModel]] = {
    "project": ProjectRef,
    "workload": WorkloadRef,
    "eip": EipRef,
    "fip": FipRef,
    "service": LbServiceRef,
}


class Published(BaseModel):
    """What the bridge last published for a key (kept in its KV bucket)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    family: subjects.EventFamily
    generation: int
    fingerprint: str
    uid: str
    ref: dict[str, str]
    deleted: bool = False


@dataclass(frozen=True)
class Publish:
    """One event to publish, and the record to keep once it is published."""

    subject: str
    data: BaseModel
    generation: int
    event_id: str
    record: Published


def fingerprint(d: Desired) -> str:
    """What the event says (not when or from which revision): equal means nothing changed."""
    body = json.dumps([d.family, d.data.model_dump(mode="json", by_alias=True)], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def event_id(uid: str, key: str, generation: int) -> str:
    """Deterministic, so a republish is dropped by ``Nats-Msg-Id`` or folded as a duplicate."""
    return f"kube-{uid}-{hashlib.sha256(key.encode()).hexdigest()[:12]}-{generation}"


def plan(
    wanted: Mapping[str, Desired],
    published: Mapping[str, Published],
    problems: list[Problem],
    snapshot_revision: int,
) -> list[Publish]:
    """What to publish so the bus describes ``wanted``: projects before their members on the
    way up, members before their projects on the way down."""
    held = {p.key for p in problems}
    ups, downs = [], []
    for key, d in wanted.items():
        last = published.get(key)
        fp = fingerprint(d)
        if last is not None and not last.deleted and last.fingerprint == fp:
            continue
        gen = max(d.revision, last.generation + 1 if last else 1)
        ref = _ref(d.family, d.data)
        record = Published(
            key=key,
            family=d.family,
            generation=gen,
            fingerprint=fp,
            uid=d.uid,
            ref=ref.model_dump(mode="json", by_alias=True),
        )
        fresh, changed = _UPSERT[d.family]
        subject = fresh if last is None or last.deleted else changed
        ups.append(Publish(subject, d.data, gen, event_id(d.uid, key, gen), record))
    for key, last in published.items():
        if last.deleted or key in wanted or key in held:
            continue
        gen = max(snapshot_revision, last.generation + 1)
        ref = _REFS[last.family].model_validate(last.ref)
        record = last.model_copy(update={"generation": gen, "deleted": True})
        downs.append(Publish(_REMOVE[last.family], ref, gen, event_id(last.uid, key, gen), record))
    ups.sort(key=lambda p: (p.record.family != "project", p.record.key))
    downs.sort(key=lambda p: (p.record.family == "project", p.record.key))
    return ups + downs


def _ref(family: str, data: BaseModel) -> BaseModel:
    """The identity part of a spec (what its removal event carries)."""
    model = _REFS[family]
    return model.model_validate(data.model_dump(include=set(model.model_fields)))
