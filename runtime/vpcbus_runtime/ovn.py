"""The one OVSDB session helper the OVN-backed services share.

ovsdbapp is synchronous and runs its IDL in a thread; this module keeps that out of the
services' async code. A service hands :meth:`NbSession.transact` a function that runs in
the IDL thread inside ONE transaction (read current rows, write what differs), so every
project converges atomically. ovsdbapp's bare ``RuntimeError``s and time-outs become
:class:`~vpcbus_runtime.errors.TemporaryError`; ``check_error`` is always on.

Group commit: the IDL thread commits one transaction at a time anyway, so the functions that
reconciles hand :meth:`NbSession.transact` while a commit is in flight are committed
together, in one OVSDB transaction, when it returns. Each function still converges one
project and gets its own result; if the shared transaction fails, each function is retried
in a transaction of its own, so one project's failure is only that project's. Fewer, larger
commits save the services a round trip per project and ``ovn-northd`` a recompute per
commit (bench/: northd took 3.5x the raw baseline's CPU for the same rows).

Ownership: every row a service creates carries ``external_ids`` ``vpcbus-owner=<service>``
and ``vpcbus-project=<org>.<project>``; services only ever touch rows they own.

Dry runs (``vpcbus doctor``): inside ``with dry_run() as plan:`` every :meth:`NbSession.transact`
of the current task runs its function in a real transaction, records in ``plan`` what the
transaction would write (:class:`Change`: rows inserted, columns changed, rows deleted) and
aborts it, so a service's own reconcile says what it would repair and writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog
from ovs.db import data
from ovs.db import idl as ovs_idl
from ovs.db import types as ovs_types
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.schema.ovn_northbound import impl_idl

from vpcbus_runtime import ovsjson
from vpcbus_runtime.errors import PeerRowsMissingError, TemporaryError
from vpcbus_runtime.ovsidl import OWNERS, HashIndex, NbIdl, OwnerIndex, refs_index

log = structlog.get_logger()

OWNER = "vpcbus-owner"
PROJECT = "vpcbus-project"

T = TypeVar("T")
_UNSET = object()
Row = Any  # an ovs.db.idl.Row; python-ovs has no type hints
Txn = Any  # an ovs.db.idl.Transaction


def ownership(service: str, project_key: str | None, **extra: str) -> dict[str, str]:
    ids = {OWNER: service, **extra}
    if project_key is not None:
        ids[PROJECT] = project_key
    return ids


@dataclass(frozen=True)
class Change:
    """One row a dry-run transaction would have written."""

    op: Literal["insert", "update", "delete"]
    table: str
    name: str  # the row's name, or what identifies it (a NAT rule's addresses, ...)
    detail: str  # the columns it would set, or what would change (``col: before -> after``)
    project: str = ""  # the row's ``vpcbus-project`` (empty: a shared row)

    @property
    def object(self) -> str:
        return f"{self.table}/{self.name}"


@dataclass
class Plan:
    """What the transactions of one dry run would have written, in order."""

    changes: list[Change] = field(default_factory=list)
    transactions: int = 0


_PLAN: contextvars.ContextVar[Plan | None] = contextvars.ContextVar("vpcbus_nb_plan", default=None)


@contextlib.contextmanager
def dry_run() -> Iterator[Plan]:
    """Record instead of write, in this task and what it awaits (a context variable: other
    tasks, e.g. the reconciles the service keeps running meanwhile, write as usual)."""
    plan = Plan()
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def dry_running() -> bool:
    return _PLAN.get() is not None


class _DryRunDoneError(Exception):
    """Raised in the IDL thread after recording a dry run: ovsdbapp aborts the transaction."""

    def __init__(self, result: Any, changes: list[Change]) -> None:
        super().__init__("dry run")
        self.result = result
        self.changes = changes


class _Run(command.BaseCommand):  # type: ignore[misc]
    def __init__(self, api: Any, fn: Callable[[Any, Txn], Any], *, dry: bool = False) -> None:
        super().__init__(api)
        self.fn = fn
        self.dry = dry

    def run_idl(self, txn: Txn) -> None:
        self.result = self.fn(self.api, txn)
        if self.dry:
            raise _DryRunDoneError(self.result, planned(txn))


class NbSession:
    """A lazily connected, auto-reconnecting OVN Northbound session."""

    def __init__(
        self, nb_db: str, *, tables: Mapping[str, tuple[str, ...]] | None = None,
        refs: Mapping[str, tuple[str, ...]] | None = None, timeout: float = 30.0,
    ) -> None:  # fmt: skip
        """``tables``: the only NB tables and columns to replicate, table -> columns (default:
        every column of every table). A service that names what it reads and writes parses a
        fraction of NB's updates: with 1,000 projects the first connect of VPC took 20 s in
        bench/ while replicating every table, and the columns other services write (NAT's
        ``Logical_Router.nat``, DNS's ``Logical_Switch.dns_records``) are not sent to VPC at
        all. Reading or writing a column left out raises ``AttributeError``.

        ``refs``: table -> reference columns whose holders :func:`holders` finds by index
        (:class:`~vpcbus_runtime.ovsidl.RefIndex`) instead of a sweep of the table."""
        ovsjson.install()  # the ovs wheel lexes JSON in pure Python: 10x slower
        self.nb_db = nb_db
        self.tables = tables
        self.refs = refs
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()
        #: Functions waiting for the next group commit, with their callers' futures.
        self._pending: list[tuple[Callable[[Any, Txn], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Group commits, functions committed, batches that failed and went one by one.
        self.counters = {"commits": 0, "batched": 0, "batch_fallbacks": 0}

    def _connect(self) -> Any:
        with self._lock:
            if self._api is None:
                try:
                    helper = idlutils.get_schema_helper(self.nb_db, "OVN_Northbound")
                    if self.tables is None:
                        helper.register_all()
                    for table, columns in (self.tables or {}).items():
                        helper.register_columns(table, list(columns))
                    idl = NbIdl(self.nb_db, helper, owners=(OWNER, PROJECT), refs=self.refs)
                    conn = connection.Connection(idl=idl, timeout=self.timeout)
                    # ovsdbapp keeps the connection in a class attribute, set once: every
                    # later instance would reuse the first session's (another NB, or a
                    # stopped one). A class of its own per session keeps them apart.
                    api_class = type(
                        "NbApi", (impl_idl.OvnNbApiIdlImpl,), {"_ovsdb_connection": None}
                    )
                    started = time.monotonic()
                    self._api = api_class(conn)  # starts the IDL thread, waits for the replica
                    log.info(
                        "NB replica loaded",
                        nb=self.nb_db,
                        seconds=round(time.monotonic() - started, 3),
                        rows=sum(len(t.rows) for t in idl.tables.values()),
                    )
                except Exception as exc:
                    raise TemporaryError(
                        "BackendUnavailable", f"OVN NB {self.nb_db}: {exc}", delay=2.0
                    ) from exc
            return self._api

    def warm_up(self) -> None:
        """Start connecting in a background thread, so the first replica of NB (with 5,000
        projects, VPC's is ~35k rows parsed in pure Python: seconds) loads while the service
        starts and its peers load theirs, not at its first transaction. A failure is left
        for that transaction to report (it connects again)."""

        def connect() -> None:
            try:
                self._connect()
            except TemporaryError as exc:
                log.info("NB not reachable yet", nb=self.nb_db, error=exc.message)

        threading.Thread(target=connect, name="nb-warm-up", daemon=True).start()

    def _run(self, fn: Callable[[Any, Txn], T]) -> T:
        api = self._connect()
        plan = _PLAN.get()  # asyncio.to_thread runs this in a copy of the caller's context
        try:
            result: T = _Run(api, fn, dry=plan is not None).execute(
                check_error=True, log_errors=False
            )
        except _DryRunDoneError as aborted:
            assert plan is not None
            plan.transactions += 1
            plan.changes += aborted.changes
            return aborted.result  # type: ignore[no-any-return]
        except TemporaryError:
            raise
        except Exception as exc:
            raise TemporaryError(
                "BackendError", f"OVN NB transaction failed: {type(exc).__name__}: {exc}"
            ) from exc
        return result

    def _run_batch(self, fns: list[Callable[[Any, Txn], Any]]) -> list[tuple[bool, Any]]:
        """``fns`` in one transaction: (True, result) each; when that fails, each in one of
        its own: (True, result) or (False, its exception)."""
        if len(fns) > 1:
            try:
                api = self._connect()
                commands = [_Run(api, fn) for fn in fns]
                with api.transaction(check_error=True, log_errors=False) as txn:
                    for cmd in commands:
                        txn.add(cmd)
                return [(True, cmd.result) for cmd in commands]
            except Exception:  # one of them failed: find out which, alone
                self.counters["batch_fallbacks"] += 1
        out: list[tuple[bool, Any]] = []
        for fn in fns:
            try:
                out.append((True, self._run(fn)))
            except Exception as exc:  # handed to that caller
                out.append((False, exc))
        return out

    async def _flush(self) -> None:
        """Commit what is pending, batch after batch, until nothing is."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                self.counters["commits"] += 1
                self.counters["batched"] += len(batch)
                try:
                    outcomes = await asyncio.to_thread(self._run_batch, [fn for fn, _ in batch])
                except BaseException as exc:  # cancelled (shutdown): no caller waits forever
                    batch, self._pending = batch + self._pending, []
                    _fail(batch, exc)
                    raise
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():  # the caller was cancelled
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._flusher = None

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        """A commit task cancelled before it ran never reached its ``finally``: fail what
        waits for it, so that no caller waits forever and the next call starts a new one."""
        if self._flusher is task:
            self._flusher = None
            pending, self._pending = self._pending, []
            _fail(pending, asyncio.CancelledError())

    async def transact(self, fn: Callable[[Any, Txn], T]) -> T:
        """Run ``fn(api, txn)`` in the IDL thread, in one OVSDB transaction, shared with the
        other functions pending meanwhile (group commit; inside :func:`dry_run`: alone,
        recorded, then aborted; ``fn``'s result is returned all the same).

        When ``fn`` raises :class:`~vpcbus_runtime.errors.PeerRowsMissingError`, the replica is
        brought up to date (:meth:`sync`) and ``fn`` runs once more."""
        try:
            return await self._transact(fn)
        except PeerRowsMissingError:
            await self.sync()
            return await self._transact(fn)

    async def sync(self) -> None:
        """Bring the replica up to date with every NB commit that completed before the call.

        One round trip on this session: a transaction of a comment alone, which changes
        nothing. ovsdb-server sends a session the monitor updates it holds for it before it
        reads the session's next request, and the IDL applies what it receives in order, so
        the reply comes after them. A service that learns from a peer's status that rows
        exist (VPC ``Ready``: the project's router) may otherwise read a replica that lacks
        them: NAT and DNS reported ``Error`` for a second at 1 % of projects under steady
        load (bench/)."""
        await asyncio.to_thread(self._sync)

    def _sync(self) -> None:
        api = self._connect()
        try:
            _Run(api, _comment_only).execute(check_error=True, log_errors=False)
        except Exception as exc:
            raise TemporaryError(
                "BackendError", f"OVN NB sync failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def _transact(self, fn: Callable[[Any, Txn], T]) -> T:
        if _PLAN.get() is not None:
            return await asyncio.to_thread(self._run, fn)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
            self._flusher.add_done_callback(self._flusher_done)
        return await future

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run a read-only ``fn(api)`` against the IDL's current replica."""

        def _read() -> T:
            api = self._connect()
            with api.ovsdb_connection.lock:
                return fn(api)

        return await asyncio.to_thread(_read)

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.ovsdb_connection.stop()
                self._api = None


def _comment_only(api: Any, txn: Txn) -> None:
    """What :meth:`NbSession.sync` commits: an operation, so that python-ovs sends the
    transaction (it drops one without operations), that changes nothing."""
    txn.add_op({"op": "comment", "comment": "vpcbus: sync"})


def _fail(waiting: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in waiting:
        if not future.done():
            future.set_exception(TemporaryError("BackendError", f"OVN NB commit: {exc!r}"))


# -- helpers for code running inside transact() -------------------------------------------


def rows(api: Any, table: str) -> Iterator[Row]:
    return iter(list(api.tables[table].rows.values()))


def owned(api: Any, table: str, service: str, project_key: str | None = None) -> list[Row]:
    """Rows of ``table`` owned by ``service`` (and by one project, when given), as this
    transaction sees them.

    A table with an owner index (:class:`~vpcbus_runtime.ovsidl.OwnerIndex`; every replicated
    table with ``external_ids``) answers from it: the rows the server has for the owner, and
    those this transaction inserted or changed, each checked as the scan checks it. Order:
    the index's, then the transaction's rows."""
    return _owned(api, table, lambda ids: ids.get(OWNER) == service
                  and (project_key is None or ids.get(PROJECT) == project_key),
                  lambda index: _index_rows(index, service, project_key))  # fmt: skip


def shared(api: Any, table: str, service: str) -> list[Row]:
    """Rows of ``table`` owned by ``service`` and by no project (the external switches)."""
    return _owned(api, table, lambda ids: ids.get(OWNER) == service and PROJECT not in ids,
                  lambda index: index.owned_by(service, None))  # fmt: skip


def _index_rows(index: OwnerIndex, service: str, project_key: str | None) -> list[Row]:
    if project_key is not None:
        return index.owned_by(service, project_key)
    return [row for (owner, _), found in index.owners().items() if owner == service
            for row in found]  # fmt: skip


def _owned(
    api: Any, table: str, wanted: Callable[[dict[str, str]], bool],
    from_index: Callable[[OwnerIndex], list[Row]],
) -> list[Row]:  # fmt: skip
    schema = api.tables[table]
    index = getattr(schema.rows, "indexes", {}).get(OWNERS)
    if index is None:  # no owner index (a session of every column has one; a fake has not)
        return [row for row in rows(api, table) if wanted(row.external_ids)]
    return [row for row in _live(api, schema, from_index(index)) if wanted(row.external_ids)]


def _live(api: Any, schema: Any, indexed: list[Row]) -> list[Row]:
    """``indexed`` (an index's rows, as the server has them) and the rows of ``schema`` this
    transaction inserted, changed or deleted, as the transaction sees them; not those it
    deleted. The caller checks each one: an index only narrows the search."""
    candidates = list(indexed)
    txn = getattr(api.idl, "txn", None)
    if txn is not None:
        seen = {row.uuid for row in candidates}
        candidates += [row for row in txn._txn_rows.values()
                       if row._table is schema and row.uuid not in seen]  # fmt: skip
    return [live for row in candidates if (live := schema.rows.get(row.uuid)) is not None]


def holders(api: Any, table: str, column: str, member: uuid.UUID) -> list[Row]:
    """Rows of ``table`` whose reference column ``column`` holds ``member``, as this
    transaction sees them: from the column's :class:`~vpcbus_runtime.ovsidl.RefIndex` and
    this transaction's rows of ``table`` when the session keeps one, else by a sweep."""
    schema = api.tables[table]
    index = getattr(schema.rows, "indexes", {}).get(refs_index(column))
    if index is None:
        candidates = list(schema.rows.values())
    else:
        candidates = _live(api, schema, index.holding(member))
    return [row for row in candidates if has_member(row, column, member)]


def find(api: Any, table: str, name: str) -> Row | None:
    """A row by its ``name`` column (indexed lookup), or None.

    A table with a :class:`~vpcbus_runtime.ovsidl.HashIndex` of names is asked directly:
    ovsdbapp's lookup first tries the name as a UUID and then raises ``RowNotFound`` for a
    name it does not find, two exceptions per miss, and a new project's rows all miss."""
    index = getattr(api.tables[table].rows, "indexes", {}).get("name")
    if isinstance(index, HashIndex):
        return index.first((name,))
    try:
        return api._lookup(table, name)
    except Exception:
        return None


def upsert(api: Any, txn: Txn, table: str, name: str, **columns: Any) -> Row:
    """The row named ``name`` with ``columns``: a new one written in one go (:func:`insert`,
    not ``setattr`` per column), or the existing one converged."""
    row = find(api, table, name)
    if row is None:
        return insert(api, txn, table, name=name, **columns)
    converge(row, **columns)
    return row


@dataclass(frozen=True)
class _InsertPlan:
    """How :func:`insert` fills a new row of one table."""

    #: Optional set and map columns, with their empty datum.
    empties: tuple[tuple[str, data.Datum], ...]
    #: Read-only columns, written through ``Row.__setattr__`` (which skips them).
    careful: frozenset[str]
    #: Indexed columns: written directly too, then the row is added to the indexes of them.
    indexed: frozenset[str]


#: By the table's id: a weak reference to it (a closed session's replica is not kept alive;
#: an id reused by another table is told apart), its number of indexes, and the plan.
_PLANS: dict[int, tuple[weakref.ref[Any], int, _InsertPlan]] = {}


def _insert_plan(idl: Any, schema: Any) -> _InsertPlan:
    indexes = schema.rows.indexes
    known = _PLANS.get(id(schema))
    if known is not None and known[0]() is schema and known[1] == len(indexes):
        return known[2]
    empties = tuple(
        (name, data.Datum.default(column.type))
        for name, column in schema.columns.items()
        if _starts_empty(column.type)
    )
    careful = frozenset(idl.readonly.get(schema.name, ()))
    indexed = {c.column for index in indexes.values() for c in index.columns} - careful
    plan = _InsertPlan(empties, careful, frozenset(indexed))
    _PLANS[id(schema)] = (weakref.ref(schema), len(indexes), plan)
    return plan


def set_columns(row: Row, schema: Any, columns: Mapping[str, Any]) -> None:
    """Fill a new row through ``setattr`` alone: ``columns``, and the optional set and map
    columns not among them empty (the reference :func:`insert` is tested against)."""
    for name, column in schema.columns.items():
        if name not in columns and _starts_empty(column.type):
            setattr(row, name, {} if column.type.is_map() else [])
    for column, value in columns.items():
        setattr(row, column, value)


def _starts_empty(kind: Any) -> bool:
    """An optional set or map column: :func:`insert` gives a new row an empty one."""
    return bool(kind.n_min == 0 and (kind.is_map() or kind.n_max > 1))


def insert(api: Any, txn: Txn, table: str, **columns: Any) -> Row:
    """A new row; optional set and map columns start empty so they can be read at once.

    Columns other than read-only ones are written to the new row's changes directly, and the
    row is then added to the indexes of the indexed ones (a name): ``Row.__setattr__`` looks
    the column up in every index of the table twice and reads the old value first, which for
    a row that has none raises and catches an ``AttributeError``; that was a fifth of VPC's
    CPU in a burst (bench/). A value that python-ovs cannot convert raises here, where
    ``__setattr__`` would log and drop it."""
    schema = api.tables[table]
    row = txn.insert(schema)
    if not isinstance(row, ovs_idl.Row):  # not python-ovs' (the unit tests' NB fake)
        set_columns(row, schema, columns)
        return row
    plan = _insert_plan(row._idl, schema)
    changes = row._changes
    for name, empty in plan.empties:
        if name not in columns:
            changes[name] = empty.copy()
    for column, value in columns.items():
        if column in plan.careful:
            setattr(row, column, value)
        else:
            kind = schema.columns[column].type
            changes[column] = data.Datum.from_python(kind, value, ovs_idl._row_to_uuid)
    if plan.indexed and not plan.indexed.isdisjoint(columns):
        # What Row.__setattr__ does after a write, for a row no index holds yet (its columns
        # had no value when txn.insert added it to the table).
        for index in schema.rows.indexes.values():
            if any(c.column in columns for c in index.columns):
                index.add(row)
    return row


def converge(row: Row, **columns: Any) -> bool:
    """Set the columns that differ; True when anything changed."""
    changed = False
    for column, value in columns.items():
        if getattr(row, column, _UNSET) != value:  # a fresh row has no value yet
            setattr(row, column, value)
            changed = True
    return changed


def ensure_member(row: Row, column: str, member: Row) -> bool:
    """Add ``member`` to a set-of-references column; True when it was missing."""
    if has_member(row, column, member.uuid):
        return False
    row.addvalue(column, member)
    return True


def has_member(row: Row, column: str, member: uuid.UUID) -> bool:
    """Whether a set-of-references column holds ``member``.

    Reading the column (``row.ports``) builds a Row object for every reference: on a shared
    switch such as ``ext-cloud`` that is O(projects) per converge (bench/: half of VPC's CPU
    in a 1,000-project burst). When the column has no change pending in this transaction,
    the committed datum answers by a set lookup instead, corrected by the mutations pending in
    this transaction (other projects' ``addvalue``s on the same switch, in a group commit):
    python-ovs sends a row's removes before its inserts, so a member both removed and added
    in the transaction stays (as reading the column says)."""
    changes = getattr(row, "_changes", None)
    mutations: dict[str, Any] | None = getattr(row, "_mutations", None)
    committed: dict[str, Any] = getattr(row, "_data", None) or {}
    if changes is None or mutations is None or column in changes or column not in committed:
        return any(m.uuid == member for m in getattr(row, column, []))

    def holds(values: Any) -> bool:
        return any(getattr(v, "uuid", v) == member for v in values or ())

    if holds(mutations.get("_inserts", {}).get(column)):
        return True
    if holds(mutations.get("_removes", {}).get(column)):
        return False
    return data.Atom(ovs_types.UuidType, member) in committed[column].values


def owned_projects(api: Any, tables: tuple[str, ...], service: str) -> set[str]:
    keys: set[str] = set()
    for table in tables:
        for row in owned(api, table, service):
            key = row.external_ids.get(PROJECT)
            if key:
                keys.add(key)
    return keys


# -- what a transaction would write (dry runs) ---------------------------------------------

#: How rows without a ``name`` column are told apart in a plan.
_LABELS: dict[str, Callable[[Callable[[str], Any]], str]] = {
    "NAT": lambda v: f"{v('type')}:{v('logical_ip')}->{v('external_ip')}",
    "ACL": lambda v: f"{v('direction')}:{v('priority')}:{v('match')}",
    "Logical_Router_Static_Route": lambda v: f"{v('ip_prefix')}->{v('nexthop')}",
}
#: Longest ``detail`` of a :class:`Change`.
MAX_DETAIL = 240


def planned(txn: Txn) -> list[Change]:
    """The rows ``txn`` (a python-ovs ``Transaction``, not yet committed) would write.

    python-ovs keeps every touched row in ``txn._txn_rows``: an inserted row has no committed
    ``_data``, a deleted one has ``_changes`` None, an updated one has ``_changes`` (columns
    written) and ``_mutations`` (set elements added or removed). Columns written with the
    value they already have are left out, and so are references to rows the same
    transaction inserts or deletes (the new port is reported, not the switch's ``ports``).
    """
    touched = list(txn._txn_rows.values())
    labels: dict[uuid.UUID, str] = {r.uuid: label(r) for r in touched}
    implied = {r.uuid for r in touched if r._data is None or r._changes is None}
    out = []
    for row in touched:
        table = row._table.name
        if row._changes is None:
            if row._data is not None:
                detail = _summary(row, labels, txn)
                out.append(Change("delete", table, labels[row.uuid], detail, _project(row)))
        elif row._data is None:
            detail = _summary(row, labels, txn)
            out.append(Change("insert", table, labels[row.uuid], detail, _project(row)))
        else:
            diffs = _diffs(row, implied, labels, txn)
            if diffs:
                detail = _clip("; ".join(diffs))
                out.append(Change("update", table, labels[row.uuid], detail, _project(row)))
    return out


def _datum(row: Row, column: str) -> Any:
    """The column as the transaction leaves it (a deleted row: as committed); None: unset."""
    if row._changes is None:
        return row._data.get(column)
    try:
        value = getattr(row, column)
    except AttributeError:  # an inserted row that never set it
        return None
    return data.Datum.from_python(row._table.columns[column].type, value, ovs_idl._row_to_uuid)


def _plain(row: Row, column: str) -> Any:
    found = _datum(row, column)
    return found.to_python(lambda value, _base: value) if found is not None else None


def label(row: Row) -> str:
    """How a row is named in a plan and by ``vpcbus doctor``: its ``name``; a NAT rule, ACL or
    static route by what it matches (``snat:10.0.0.0/24->100.65.0.2``); else its project."""
    columns = row._table.columns
    if "name" in columns:
        name = _plain(row, "name")
        if name:
            return str(name)
    make = _LABELS.get(row._table.name)
    if make is not None:
        return make(lambda column: _plain(row, column))
    return _project(row) or str(row.uuid)[:8]


def _project(row: Row) -> str:
    ids = _plain(row, "external_ids") if "external_ids" in row._table.columns else None
    return str(ids.get(PROJECT, "")) if isinstance(ids, dict) else ""


def _atom(value: Any, base: Any, labels: dict[uuid.UUID, str], txn: Txn) -> str:
    """One value; a reference as the label of the row it names."""
    if not isinstance(value, uuid.UUID):
        return str(value)
    if value not in labels and base.ref_table_name:
        row = txn.idl.tables[base.ref_table_name].rows.get(value)
        labels[value] = label(row) if row is not None else str(value)[:8]
    return labels.get(value, str(value)[:8])


def _render(datum: Any, labels: dict[uuid.UUID, str], txn: Txn) -> str:
    if datum is None:
        return "-"
    kind = datum.type
    if kind.is_map():
        pairs = [
            f"{_atom(k.value, kind.key, labels, txn)}={_atom(v.value, kind.value, labels, txn)}"
            for k, v in sorted(datum.values.items())
        ]
        return "{" + ", ".join(pairs) + "}"
    items = [_atom(k.value, kind.key, labels, txn) for k in sorted(datum.values)]
    if kind.is_scalar():
        return items[0] if items else "-"
    return "[" + ", ".join(items) + "]"


def _summary(row: Row, labels: dict[uuid.UUID, str], txn: Txn) -> str:
    """The row's set columns (not ``external_ids``), for an inserted or deleted row."""
    parts = []
    for column in sorted(row._table.columns):
        datum = _datum(row, column)
        if column in ("name", "external_ids") or datum is None or datum.is_default():
            continue
        shown = _render(datum, labels, txn)
        if shown not in ("", "-", "[]", "{}"):
            parts.append(f"{column}={shown}")
    return _clip(", ".join(parts))


def _diffs(row: Row, implied: set[uuid.UUID], labels: dict[uuid.UUID, str], txn: Txn) -> list[str]:
    """``column: before -> after`` for each column an update really changes."""
    mutations = row._mutations or {}
    names = (
        set(row._changes) | set(mutations.get("_inserts", {})) | set(mutations.get("_removes", {}))
    )
    out = []
    for column in sorted(names):
        kind = row._table.columns[column].type
        before = row._data.get(column) or data.Datum.default(kind)
        after = _datum(row, column)
        if after is None or before == after:
            continue
        if kind.key.ref_table_name and not kind.is_map():
            old = {a.value for a in before.values}
            new = {a.value for a in after.values}
            added, removed = sorted(new - old - implied), sorted(old - new - implied)
            if not added and not removed:
                continue  # only rows this transaction inserts or deletes: reported themselves
            show = [f"+{_atom(u, kind.key, labels, txn)}" for u in added]
            show += [f"-{_atom(u, kind.key, labels, txn)}" for u in removed]
            out.append(f"{column}: {' '.join(show)}")
            continue
        out.append(f"{column}: {_render(before, labels, txn)} -> {_render(after, labels, txn)}")
    return out


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
