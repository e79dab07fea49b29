"""What the bridge knows, kept in its NATS KV bucket ``vpcbus-bridge`` so a restart resumes.

Three kinds of keys:

* ``rv.<kind>``: the resourceVersion the watch of that kind has reached; a restarted bridge
  watches on from there instead of listing again;
* ``obj.<kind>.<namespace>.<name>``: each watched object, slimmed to what the mapping reads
  (:func:`~vpcbus_bridge.mapping.objects.slim`), so the snapshot survives the restart;
* ``pub.<key>``: what was last published for each project and member key
  (:class:`~vpcbus_bridge.mapping.events.Published`), so nothing is published twice.

An object is stored before the resourceVersion that delivered it, and a published record
after its event is acknowledged: a crash in between repeats work (the same event id, which
JetStream or the services drop), never loses it. Used by :mod:`.bridging` only.
"""

from __future__ import annotations

import json

import structlog
from nats.js.kv import KeyValue

from vpcbus_bridge.mapping import objects
from vpcbus_bridge.mapping.events import Published
from vpcbus_bridge.mapping.objects import Obj, Watched

BUCKET = "vpcbus-bridge"

log = structlog.get_logger()


def _object_key(short: str, namespace: str, name: str) -> str:
    return f"obj.{short}.{namespace or '_'}.{name}"


def _unversioned(obj: Obj) -> Obj:
    meta = {k: v for k, v in objects.meta(obj).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


class BridgeState:
    """The snapshot, the watch positions and the published records, in memory and in KV."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {w.short: {} for w in objects.WATCHED}
        self.versions: dict[str, str] = {}
        self.published: dict[str, Published] = {}
        #: Objects refreshed in memory only, to be stored when the watch brings them.
        self._unsaved: set[tuple[str, str, str]] = set()

    async def load(self) -> None:
        """Read the whole bucket (its current values) into memory."""
        watcher = await self.kv.watch(">", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    self._load(entry.key, entry.value)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        log.info(
            "bridge state loaded",
            objects=sum(len(o) for o in self.objects.values()),
            published=len(self.published),
            versions=self.versions,
        )

    def _load(self, key: str, value: bytes) -> None:
        head, _, rest = key.partition(".")
        if head == "rv":
            self.versions[rest] = value.decode()
        elif head == "pub":
            record = Published.model_validate_json(value)
            self.published[record.key] = record
        elif head == "obj":
            obj = json.loads(value)
            meta = objects.meta(obj)
            short = rest.partition(".")[0]
            if short in self.objects:
                self.objects[short][(meta.get("namespace", ""), meta["name"])] = obj

    def revision(self) -> int:
        """The newest resourceVersion seen of any kind (removal events take it)."""
        seen = [int(v) for v in self.versions.values() if v.isdigit()]
        return max(seen, default=0)

    # -- the snapshot --------------------------------------------------------------------

    async def put(self, watched: Watched, obj: Obj) -> bool:
        """Keep (and store) one slimmed object; False when only its resourceVersion moved
        (a pod's unrelated status churn), which is neither stored nor a change."""
        meta = objects.meta(obj)
        ns, name = meta.get("namespace", ""), meta["name"]
        current = self.objects[watched.short].get((ns, name))
        same = current is not None and _unversioned(current) == _unversioned(obj)
        if same and (watched.short, ns, name) not in self._unsaved:
            return False
        self._unsaved.discard((watched.short, ns, name))
        self.objects[watched.short][(ns, name)] = obj
        await self.kv.put(_object_key(watched.short, ns, name), json.dumps(obj).encode())
        return not same

    async def drop(self, watched: Watched, namespace: str, name: str) -> bool:
        if self.objects[watched.short].pop((namespace, name), None) is None:
            return False
        await self.kv.purge(_object_key(watched.short, namespace, name))
        return True

    def refresh(self, watched: Watched, obj: Obj) -> None:
        """Take a newer copy the bridge itself got back (a status write) into memory only;
        the watch brings and stores the same version soon."""
        meta = objects.meta(obj)
        key = (meta.get("namespace", ""), meta["name"])
        current = self.objects[watched.short].get(key)
        if current is not None and objects.revision(obj) > objects.revision(current):
            self.objects[watched.short][key] = obj
            self._unsaved.add((watched.short, *key))

    async def replace(self, watched: Watched, items: list[Obj], version: str) -> None:
        """A fresh list of one kind: what is not in it any more is gone."""
        listed = {(objects.meta(o).get("namespace", ""), objects.meta(o)["name"]) for o in items}
        for ns, name in list(self.objects[watched.short]):
            if (ns, name) not in listed:
                await self.drop(watched, ns, name)
        for obj in items:
            await self.put(watched, obj)
        await self.set_version(watched, version)

    async def set_version(self, watched: Watched, version: str) -> None:
        if version and self.versions.get(watched.short) != version:
            self.versions[watched.short] = version
            await self.kv.put(f"rv.{watched.short}", version.encode())

    async def forget_version(self, watched: Watched) -> None:
        """The position is too old (410): the next watch starts with a list."""
        if self.versions.pop(watched.short, None) is not None:
            await self.kv.purge(f"rv.{watched.short}")

    # -- what was published --------------------------------------------------------------

    async def record(self, published: Published) -> None:
        self.published[published.key] = published
        await self.kv.put(f"pub.{published.key}", published.model_dump_json().encode())
