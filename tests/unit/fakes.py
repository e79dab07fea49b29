"""In-memory stand-ins for the two backends, so unit tests need no server and no process.

* :class:`FakeKV` - a JetStream KV bucket with the semantics the services rely on:
  ``create`` fails on a live key, ``update``/``delete`` compare the last revision, every
  write gets a new bucket-wide revision, and ``watch(keys)`` (``watchall``: every key)
  replays the current values of the matching keys, sends the ``None`` "initial values
  done" marker, then streams their live changes.
* :class:`FakeNb` - an OVN Northbound replica as ``vpcbus_runtime.ovn`` sees it: tables
  with typed columns, rows with ``addvalue``/``delvalue``/``delete``, ``_lookup`` by name and
  a transaction whose ``insert`` creates a row.
* :class:`FakeJetStream` - records ``publish`` and ``purge_stream`` calls.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
)
from nats.js.kv import KeyValue

# -- JetStream KV ---------------------------------------------------------------------------


class FakeWatcher:
    """What ``KeyValue.watch(keys)`` returns: an async iterator of entries (None = caught up).

    ``keys`` is a NATS subject filter over keys: ``*`` matches one token, a final ``>`` the
    rest (one or more tokens).
    """

    def __init__(self, keys: str = ">") -> None:
        self.keys = keys.split(".")
        self.queue: asyncio.Queue[KeyValue.Entry | None] = asyncio.Queue()

    def matches(self, key: str) -> bool:
        tokens = key.split(".")
        for i, want in enumerate(self.keys):
            if want == ">":
                return len(tokens) > i
            if i >= len(tokens) or want not in ("*", tokens[i]):
                return False
        return len(tokens) == len(self.keys)

    def __aiter__(self) -> FakeWatcher:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        return await self.queue.get()


class FakeKV:
    def __init__(self, bucket: str = "test") -> None:
        self.bucket = bucket
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.watchers: list[FakeWatcher] = []
        #: Called (and awaited) before every write; tests use it to inject a racing writer.
        self.before_write: Callable[[str], Awaitable[None]] | None = None

    def _entry(self, key: str, value: bytes | None, revision: int, op: str | None) -> Any:
        return KeyValue.Entry(
            bucket=self.bucket,
            key=key,
            value=value,
            revision=revision,
            delta=None,
            created=None,
            operation=op,
        )

    def _notify(self, key: str, value: bytes | None, revision: int, op: str | None) -> None:
        for watcher in self.watchers:
            if watcher.matches(key):
                watcher.queue.put_nowait(self._entry(key, value, revision, op))

    async def _hook(self, key: str) -> None:
        await asyncio.sleep(0)  # a round trip: other tasks run before the write lands
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None  # fire once
            await hook(key)

    def _write(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.data[key] = (value, self.revision)
        self._notify(key, value, self.revision, None)
        return self.revision

    async def get(self, key: str) -> Any:
        if key not in self.data:
            raise KeyNotFoundError()
        value, revision = self.data[key]
        return self._entry(key, value, revision, None)

    async def put(self, key: str, value: bytes) -> int:
        await self._hook(key)
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        await self._hook(key)
        if key in self.data:
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        await self._hook(key)
        current = self.data.get(key, (b"", 0))[1]
        if current != (last or 0):
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._write(key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        await self._hook(key)
        if last and self.data.get(key, (b"", 0))[1] != last:
            # nats-py 2.16 does not translate this one into KeyWrongLastSequenceError
            raise BadRequestError(code=400, err_code=10071, description="wrong last sequence")
        self.data.pop(key, None)
        self.revision += 1
        self._notify(key, None, self.revision, "DEL")
        return True

    async def purge(self, key: str) -> bool:
        self.data.pop(key, None)
        self.revision += 1
        self._notify(key, None, self.revision, "PURGE")
        return True

    async def keys(self) -> list[str]:
        if not self.data:
            raise NoKeysError()
        return sorted(self.data)

    async def watchall(self) -> FakeWatcher:
        return await self.watch(">")

    async def watch(self, keys: str) -> FakeWatcher:
        watcher = FakeWatcher(keys)
        for key, (value, revision) in sorted(self.data.items(), key=lambda kv: kv[1][1]):
            if watcher.matches(key):
                watcher.queue.put_nowait(self._entry(key, value, revision, None))
        watcher.queue.put_nowait(None)
        self.watchers.append(watcher)
        return watcher

    async def settle(self) -> None:
        """Let every watcher's consumer process what was sent to it."""
        for _ in range(1000):
            if all(w.queue.empty() for w in self.watchers):
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0)


# -- JetStream publish ------------------------------------------------------------------------


@dataclass
class FakeAck:
    stream: str
    seq: int


@dataclass
class FakeStoredMsg:
    subject: str
    data: bytes


@dataclass
class FakeJetStream:
    """Publish, subject purge and the direct get of the last message per subject (what
    the status stream keeps)."""

    published: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    purged: list[tuple[str, str | None]] = field(default_factory=list)
    last: dict[tuple[str, str], bytes] = field(default_factory=dict)
    reads: int = 0  # get_last_msg calls

    async def publish(self, subject: str, payload: bytes = b"", stream: str | None = None) -> Any:
        self.published.append((subject, payload, stream))
        self.last[stream or "", subject] = payload
        return FakeAck(stream or "", len(self.published))

    async def purge_stream(self, name: str, subject: str | None = None) -> bool:
        self.purged.append((name, subject))
        for key in [k for k in self.last if k[0] == name and subject in (None, k[1])]:
            del self.last[key]
        return True

    async def get_last_msg(self, stream_name: str, subject: str, direct: bool = False) -> Any:
        self.reads += 1
        if (stream_name, subject) not in self.last:
            raise NotFoundError
        return FakeStoredMsg(subject, self.last[stream_name, subject])


# -- OVN Northbound -------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnType:
    n_min: int
    n_max: int | float
    map: bool = False

    def is_map(self) -> bool:
        return self.map


@dataclass(frozen=True)
class Column:
    type: ColumnType


SCALAR = Column(ColumnType(1, 1))
OPTIONAL = Column(ColumnType(0, 1))
SET = Column(ColumnType(0, float("inf")))
NONEMPTY_SET = Column(ColumnType(1, float("inf")))
MAP = Column(ColumnType(0, float("inf"), map=True))

#: The columns of the NB tables the services touch (a subset of the real schema).
SCHEMA: dict[str, dict[str, Column]] = {
    "Logical_Router": {
        "name": SCALAR,
        "ports": SET,
        "static_routes": SET,
        "nat": SET,
        "load_balancer": SET,
        "options": MAP,
        "external_ids": MAP,
    },
    "Logical_Switch": {
        "name": SCALAR,
        "ports": SET,
        "dns_records": SET,
        "acls": SET,
        "other_config": MAP,
        "external_ids": MAP,
    },
    "Logical_Router_Port": {
        "name": SCALAR,
        "mac": SCALAR,
        "networks": NONEMPTY_SET,
        "options": MAP,
        "external_ids": MAP,
    },
    "Logical_Switch_Port": {
        "name": SCALAR,
        "type": SCALAR,
        "addresses": SET,
        "port_security": SET,
        "options": MAP,
        "external_ids": MAP,
    },
    "Logical_Router_Static_Route": {
        "ip_prefix": SCALAR,
        "nexthop": SCALAR,
        "external_ids": MAP,
    },
    "NAT": {
        "type": SCALAR,
        "external_ip": SCALAR,
        "logical_ip": SCALAR,
        "external_ids": MAP,
    },
    "DNS": {"records": MAP, "external_ids": MAP},
    "ACL": {
        "direction": SCALAR,
        "priority": SCALAR,
        "match": SCALAR,
        "action": SCALAR,
        "external_ids": MAP,
    },
    "Load_Balancer": {"name": SCALAR, "protocol": SCALAR, "vips": MAP, "external_ids": MAP},
}

_uuids = itertools.count(1)


class FakeRow:
    def __init__(self, table: FakeTable) -> None:
        self._table = table
        self.uuid = f"uuid-{next(_uuids)}"

    def addvalue(self, column: str, member: FakeRow) -> None:
        getattr(self, column).append(member)

    def delvalue(self, column: str, member: FakeRow) -> None:
        setattr(self, column, [m for m in getattr(self, column) if m.uuid != member.uuid])

    def delete(self) -> None:
        self._table.rows.pop(self.uuid, None)

    def __repr__(self) -> str:
        return f"<{self._table.name} {getattr(self, 'name', self.uuid)}>"


class FakeTable:
    def __init__(self, name: str, columns: dict[str, Column]) -> None:
        self.name = name
        self.columns = columns
        self.rows: dict[str, FakeRow] = {}


class FakeTxn:
    def __init__(self, nb: FakeNb) -> None:
        self.nb = nb
        self.inserted: list[FakeRow] = []

    def insert(self, table: FakeTable) -> FakeRow:
        row = FakeRow(table)
        table.rows[row.uuid] = row
        self.inserted.append(row)
        return row


class FakeNb:
    """The ``api`` argument of the appliers."""

    def __init__(self) -> None:
        self.tables = {name: FakeTable(name, cols) for name, cols in SCHEMA.items()}

    def _lookup(self, table: str, name: str) -> FakeRow:
        for row in self.tables[table].rows.values():
            if getattr(row, "name", None) == name:
                return row
        raise LookupError(f"{table} {name} not found")

    # Rows have the table's columns as dynamic attributes, hence ``Any`` for the tests.

    def rows(self, table: str) -> list[Any]:
        return list(self.tables[table].rows.values())

    def named(self, table: str, name: str) -> Any:
        return self._lookup(table, name)

    def names(self, table: str) -> set[str]:
        return {str(getattr(r, "name", "")) for r in self.rows(table)}

    def transact(self, fn: Callable[[FakeNb, FakeTxn], Any]) -> tuple[Any, FakeTxn]:
        txn = FakeTxn(self)
        return fn(self, txn), txn
