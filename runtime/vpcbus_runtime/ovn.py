"""The one OVSDB session helper the OVN-backed services share.

ovsdbapp is synchronous and runs its IDL in a thread; this module keeps that out of the
services' async code. A service hands :meth:`NbSession.transact` a function that runs in
the IDL thread inside ONE transaction (read current rows, write what differs), so every
project converges atomically. ovsdbapp's bare ``RuntimeError``s and time-outs become
:class:`~vpcbus_runtime.errors.TemporaryError`; ``check_error`` is always on.

Ownership: every row a service creates carries ``external_ids`` ``vpcbus-owner=<service>``
and ``vpcbus-project=<org>.<project>``; services only ever touch rows they own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ovsdbapp.backend.ovs_idl import command, connection
from ovsdbapp.schema.ovn_northbound import impl_idl

from vpcbus_runtime.errors import TemporaryError

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


class _Run(command.BaseCommand):  # type: ignore[misc]
    def __init__(self, api: Any, fn: Callable[[Any, Txn], Any]) -> None:
        super().__init__(api)
        self.fn = fn

    def run_idl(self, txn: Txn) -> None:
        self.result = self.fn(self.api, txn)


class NbSession:
    """A lazily connected, auto-reconnecting OVN Northbound session."""

    def __init__(self, nb_db: str, *, tables: tuple[str, ...] = (), timeout: float = 30.0) -> None:
        """``tables``: the only NB tables to replicate (default all). A service that names the
        tables it reads and writes parses a fraction of NB's updates: with 1,000 projects
        the first connect of VPC took 20 s in bench/ while replicating every table."""
        self.nb_db = nb_db
        self.tables = tables
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        with self._lock:
            if self._api is None:
                try:
                    idl = connection.OvsdbIdl.from_server(
                        self.nb_db, "OVN_Northbound", helper_tables=self.tables or None
                    )
                    conn = connection.Connection(idl=idl, timeout=self.timeout)
                    self._api = impl_idl.OvnNbApiIdlImpl(conn)
                except Exception as exc:
                    raise TemporaryError(
                        "BackendUnavailable", f"OVN NB {self.nb_db}: {exc}", delay=2.0
                    ) from exc
            return self._api

    def _run(self, fn: Callable[[Any, Txn], T]) -> T:
        api = self._connect()
        try:
            result: T = _Run(api, fn).execute(check_error=True, log_errors=False)
        except TemporaryError:
            raise
        except Exception as exc:
            raise TemporaryError(
                "BackendError", f"OVN NB transaction failed: {type(exc).__name__}: {exc}"
            ) from exc
        return result

    async def transact(self, fn: Callable[[Any, Txn], T]) -> T:
        """Run ``fn(api, txn)`` in the IDL thread, in one OVSDB transaction."""
        return await asyncio.to_thread(self._run, fn)

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


# -- helpers for code running inside transact() -------------------------------------------


def rows(api: Any, table: str) -> Iterator[Row]:
    return iter(list(api.tables[table].rows.values()))


def owned(api: Any, table: str, service: str, project_key: str | None = None) -> list[Row]:
    """Rows of ``table`` owned by ``service`` (and by one project, when given)."""
    out = []
    for row in rows(api, table):
        ids = row.external_ids
        if ids.get(OWNER) != service:
            continue
        if project_key is not None and ids.get(PROJECT) != project_key:
            continue
        out.append(row)
    return out


def find(api: Any, table: str, name: str) -> Row | None:
    """A row by its ``name`` column (indexed lookup), or None."""
    try:
        return api._lookup(table, name)
    except Exception:
        return None


def insert(api: Any, txn: Txn, table: str, **columns: Any) -> Row:
    """A new row; optional set and map columns start empty so they can be read at once."""
    schema = api.tables[table]
    row = txn.insert(schema)
    for name, column in schema.columns.items():
        kind = column.type
        if name not in columns and kind.n_min == 0 and (kind.is_map() or kind.n_max > 1):
            setattr(row, name, {} if kind.is_map() else [])
    for column, value in columns.items():
        setattr(row, column, value)
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
    if any(m.uuid == member.uuid for m in getattr(row, column, [])):
        return False
    row.addvalue(column, member)
    return True


def owned_projects(api: Any, tables: tuple[str, ...], service: str) -> set[str]:
    keys: set[str] = set()
    for table in tables:
        for row in owned(api, table, service):
            key = row.external_ids.get(PROJECT)
            if key:
                keys.add(key)
    return keys
