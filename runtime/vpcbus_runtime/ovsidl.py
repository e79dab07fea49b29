"""python-ovs' IDL, faster at what the services make it do most: load and apply NB's rows.

python-ovs is pure Python. With 5,000 projects VPC's replica is 35k rows (bench/), and
every service loads its replica at start and applies every update of a burst. Three costs
stood out in a profile of that load, each replaced here by an equivalent that does less:

- :class:`NbIdl` does not ``time.sleep(0)`` per row parsed. ovsdbapp yields there for
  eventlet's green threads; ours are native threads, which the interpreter switches every
  5 ms anyway, and each ``sleep(0)`` is a ``nanosleep`` the kernel's timer slack stretches
  to ~60 us: 2.8 of the 5.7 s VPC's load then took.
- The name indexes ovsdbapp creates (``autocreate_indices``) are :class:`HashIndex`\\ es,
  not sorted lists: each row added to one cost a ``Row.__getattr__`` and a bisection of
  Python comparisons, a quarter of the load. vpcbus and ovsdbapp only look rows up by an
  equal value (``idlutils.index_lookup_all``: ``irange(search, search)``); a dict answers.
- A row's columns are parsed by :func:`datum_parser`'s parsers, which build the same
  ``Datum`` as ``Datum.from_json`` with one prepared parser per column type and no per-atom
  type dispatch; each is compared with a default parsed once per column, not once per row,
  and the required columns the server left out are worked out once per table. A map of
  plain strings (``external_ids``, ``options``: most maps) is parsed in one loop with no call
  per atom, and its keys, the same few on every row, are made into atoms once.

The last two took VPC's load of 35k rows from 3.1-3.2 s to 2.0-2.1 s, alone on this machine;
the map parser took it on to 1.7-1.8 CPU-s (from 1.95-2.1, in the same sitting).

Two indexes python-ovs does not have answer what a teardown asks: :class:`OwnerIndex` (a
project's rows, by the owner in their ``external_ids``) and :class:`RefIndex` (the rows that
hold a given row in a reference column). Each was a sweep of a whole table per project.

Each keeps python-ovs' results (``tests/integration/test_ovsidl.py`` compares a replica
with stock ovsdbapp's, ``tests/unit/test_ovsidl_datum.py`` the parsers with python-ovs'); the
private methods overridden are those of the pinned ``ovs`` 4.0.0.
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ovs.ovsuuid
from ovs.db import custom_index, data, error, types
from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import connection

Row = Any  # an ovs.db.idl.Row
Entry = Any  # a table's IndexEntry namedtuple
#: The name of a table's :class:`OwnerIndex`.
OWNERS = "vpcbus-owners"


def refs_index(column: str) -> str:
    """The name of the :class:`RefIndex` of ``column``."""
    return f"vpcbus-refs-{column}"


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


#: What :func:`_value` returns for a column a new row has no value in yet.
_NO_VALUE = object()


def _value(row: Row, column: str) -> Any:
    """``getattr(row, column)``, hashable; a scalar is read straight from the server's data."""
    stored = row._data
    if stored is not None and not row._changes and not row._mutations:  # the server's value
        datum = dict.get(stored, column)  # dict.get: no default made for a column left out
        if datum is not None and len(datum.values) == 1 and datum.type.n_max == 1:
            return next(iter(datum.values)).value  # a scalar (a map's n_max is its size too)
    if stored is None:  # a row a transaction inserts: a value only if the transaction set it
        changes = row._changes
        if changes is None or (
            column not in changes and column not in row._mutations.get("_inserts", {})
        ):
            return _NO_VALUE  # python-ovs' Row.__getattr__ raises, building a message
    # A default, a set, a map or a transaction's value. AttributeError for a column not
    # replicated: python-ovs' index leaves those rows out, as those without a value yet.
    return _hashable(getattr(row, column))


class HashIndex(custom_index.MultiColumnIndex):  # type: ignore[misc]
    """An index of rows by the values of its columns, for equality lookups."""

    def __init__(self, name: str) -> None:
        self._buckets: dict[tuple[Any, ...], dict[Any, Row]] = {}
        super().__init__(name)

    def clear(self) -> None:
        self._buckets = {}
        self.values = _Entries(self)

    def _key(self, row: Row) -> tuple[Any, ...] | None:
        try:
            if len(self.columns) == 1:  # ovsdbapp's name indexes
                key = (_value(row, self.columns[0].column),)
            else:
                key = tuple([_value(row, c.column) for c in self.columns])
        except AttributeError:  # a column not replicated: python-ovs skips the row too
            return None
        return None if _NO_VALUE in key else key  # a column not set yet: skipped too

    def add(self, row: Row) -> None:
        key = self._key(row)
        if key is not None:
            self._buckets.setdefault(key, {})[row.uuid] = row

    def remove(self, row: Row) -> None:
        key = self._key(row)
        if key is None or (bucket := self._buckets.get(key)) is None:
            return
        bucket.pop(row.uuid, None)
        if not bucket:
            del self._buckets[key]

    def rows(self) -> Iterator[Row]:
        for bucket in self._buckets.values():
            yield from bucket.values()

    def first(self, key: tuple[Any, ...]) -> Row | None:
        """A row whose indexed columns are ``key`` (the table's current one), or None: what
        ``irange(entry, entry)`` yields first."""
        for row in self._buckets.get(key, {}).values():
            live = row._table.rows.get(row.uuid)
            if live is not None:
                return live
        return None

    def irange(self, start: Entry, end: Entry) -> Iterator[Row]:
        """The rows from ``start`` to ``end`` (index entries), as table rows; an equal pair,
        which every lookup asks, is one bucket."""
        low, high = self._search_key(start), self._search_key(end)
        if low == high:
            found = list(self._buckets.get(low, {}).values())
        else:
            order = functools.cmp_to_key(self._cmp)  # compares rows and entries alike
            lo, hi = order(start), order(end)
            found = [r for r in self._sorted() if lo <= order(r) <= hi]
        return iter([r._table.rows[r.uuid] for r in found])

    def __iter__(self) -> Iterator[Row]:
        return iter([r._table.rows[r.uuid] for r in self._sorted()])

    def _search_key(self, entry: Entry) -> tuple[Any, ...]:
        return tuple([_hashable(getattr(entry, c.column)) for c in self.columns])

    def _sorted(self) -> list[Row]:
        return sorted(self.rows(), key=functools.cmp_to_key(self._cmp))


class OwnerIndex(HashIndex):
    """Rows by who owns them: ``(owner, project)`` from their ``external_ids``, as the server
    has them (``project`` None for a row owned by no project).

    A teardown asked "every row of project P" by reading the ``external_ids`` of every row of
    the table: O(projects) per project, so deleting 1,000 projects took 47 s (bench/). Here it
    is a dict lookup. The key is read from the row's committed data only, never from a
    transaction's pending changes, and the index has no columns, so ``Row.__setattr__``
    leaves it alone: python-ovs adds and removes a row here exactly when the server's updates
    insert, modify or delete it, and a transaction's own rows are the caller's to add
    (:func:`vpcbus_runtime.ovn.owned` does)."""

    def __init__(self, name: str, owner: str, project: str) -> None:
        self._owner = data.Atom(types.StringType, owner)
        self._project = data.Atom(types.StringType, project)
        super().__init__(name)

    def _key(self, row: Row) -> tuple[Any, ...] | None:
        stored = row._data
        datum = dict.get(stored, "external_ids") if stored is not None else None
        if datum is None:
            return None
        owner = datum.values.get(self._owner)
        if owner is None:
            return None
        project = datum.values.get(self._project)
        return (owner.value, None if project is None else project.value)

    def owned_by(self, owner: str, project: str | None) -> list[Row]:
        """The rows ``owner`` owns for ``project`` (for no project: None)."""
        return list(self._buckets.get((owner, project), {}).values())

    def owners(self) -> dict[tuple[str, str | None], list[Row]]:
        """Every ``(owner, project)`` with its rows."""
        return {key: list(rows.values()) for key, rows in self._buckets.items()}


class RefIndex(HashIndex):
    """The rows whose reference column ``column`` holds a given row, as the server has them.

    OVSDB keeps no back references, so "which router holds this NAT rule" was a sweep of
    every router, reading each one's ``nat`` (a Row object per reference): O(projects) per
    teardown. A row's references are read from its committed data, as in :class:`OwnerIndex`,
    and python-ovs re-adds a row on every update, so each update of a holder costs O(its
    references): meant for columns of few references per row (a router's NAT rules), not for
    a shared switch's ports."""

    def __init__(self, name: str, column: str) -> None:
        self._column = column
        self._holders: dict[uuid.UUID, dict[uuid.UUID, Row]] = {}
        super().__init__(name)

    def clear(self) -> None:
        super().clear()
        self._holders = {}

    def _members(self, row: Row) -> list[uuid.UUID]:
        stored = row._data
        datum = dict.get(stored, self._column) if stored is not None else None
        return [atom.value for atom in datum.values] if datum is not None else []

    def add(self, row: Row) -> None:
        for member in self._members(row):
            self._holders.setdefault(member, {})[row.uuid] = row

    def remove(self, row: Row) -> None:
        for member in self._members(row):
            holders = self._holders.get(member)
            if holders is not None:
                holders.pop(row.uuid, None)
                if not holders:
                    del self._holders[member]

    def rows(self) -> Iterator[Row]:
        seen: dict[uuid.UUID, Row] = {}
        for holders in self._holders.values():
            seen.update(holders)
        yield from seen.values()

    def holding(self, member: uuid.UUID) -> list[Row]:
        return list(self._holders.get(member, {}).values())


class _Entries:
    """``HashIndex.values``: the index entries, as python-ovs' sorted list offers them."""

    def __init__(self, index: HashIndex) -> None:
        self.index = index

    def irange(self, start: Entry, end: Entry) -> Iterator[Entry]:
        return iter([self.index.index_entry_from_row(r) for r in self.index.irange(start, end)])

    def __iter__(self) -> Iterator[Entry]:
        return iter([self.index.index_entry_from_row(r) for r in self.index])

    def __len__(self) -> int:
        return sum(len(b) for b in self.index._buckets.values())


class HashIndexedRows(custom_index.IndexedRows):  # type: ignore[misc]
    """A table's rows whose indexes are :class:`HashIndex`\\ es."""

    def get(self, key: Any, default: Any = None) -> Any:
        # UserDict's get() goes through __getitem__ and a KeyError for every new row.
        rows = self.data.get(key)
        return rows[-1] if rows else default

    def index_create(self, name: str) -> HashIndex:
        if name in self.indexes:
            raise ValueError(f"An index named {name} already exists")
        index = self.indexes[name] = HashIndex(name)
        return index


# -- datums -------------------------------------------------------------------------------

AtomParser = Callable[[Any], "data.Atom"]
DatumParser = Callable[[Any], "data.Datum"]


def _plain_string(base: types.BaseType | None) -> bool:
    """A string with no constraint: any JSON string is one of its atoms as it is."""
    return bool(
        base is not None
        and base.type == types.StringType
        and base.enum is None
        and base.min is None
        and base.max is None
        and base.min_length == 0
        and base.max_length == sys.maxsize
    )


def _atom_parser(base: types.BaseType) -> AtomParser:
    """A parser of ``base``'s atoms, checked as ``Atom.from_json`` checks them; any value it
    does not expect goes to ``Atom.from_json`` (which raises python-ovs' own errors)."""
    kind = base.type
    stock = functools.partial(data.Atom.from_json, base)
    unconstrained = base.enum is None and base.min is None and base.max is None
    if _plain_string(base):

        def string(json: Any) -> data.Atom:
            if type(json) is str:
                return data.Atom(kind, json)
            return stock(json)

        return string
    if kind == types.UuidType:

        def uuid_(json: Any) -> data.Atom:
            if type(json) is list and len(json) == 2 and json[0] == "uuid":
                text = json[1]
                if type(text) is str and ovs.ovsuuid.uuidRE.match(text):
                    return data.Atom(kind, uuid.UUID(text))
            return stock(json)

        return uuid_
    if kind in (types.IntegerType, types.BooleanType) and unconstrained:
        python = int if kind == types.IntegerType else bool

        def number(json: Any) -> data.Atom:
            if type(json) is python:
                return data.Atom(kind, json)
            return stock(json)

        return number
    return stock


#: Map keys seen, as atoms: a table's maps repeat a handful of keys (``external_ids``' owner
#: and project, ``options``' names) on every row; an atom is never changed once made. Bounded:
#: keys that come after it is full are made anew each time.
_KEY_ATOMS: dict[str, data.Atom] = {}
KEY_ATOMS_MAX = 4096


def _string_map(type_: types.Type, stock: DatumParser) -> DatumParser:
    """:func:`datum_parser`'s parser of a map of plain strings to plain strings (most maps:
    ``external_ids``, ``options``), without a call per atom: a fifth of VPC's replica load
    was the map parser calling its atom parsers (bench/)."""
    kind = types.StringType
    atom = data.Atom
    keys = _KEY_ATOMS
    n_min, n_max = type_.n_min, type_.n_max

    def string_map(json: Any) -> data.Datum:
        if type(json) is list and len(json) == 2 and json[0] == "map" and type(json[1]) is list:
            pairs = json[1]
            values = {}
            for pair in pairs:
                if type(pair) is not list or len(pair) != 2:
                    return stock(json)
                k, v = pair
                if type(k) is not str or type(v) is not str:
                    return stock(json)
                key = keys.get(k)
                if key is None:
                    key = atom(kind, k)
                    if len(keys) < KEY_ATOMS_MAX:
                        keys[k] = key
                values[key] = atom(kind, v)
            if len(values) == len(pairs) and n_min <= len(values) <= n_max:
                return data.Datum(type_, values)
        return stock(json)  # python-ovs' own error for anything else

    return string_map


def datum_parser(type_: types.Type) -> DatumParser:
    """A parser of ``type_``'s datums: ``Datum.from_json(type_, json)`` for server data."""
    stock = functools.partial(data.Datum.from_json, type_)
    key = _atom_parser(type_.key)
    if type_.is_map() and _plain_string(type_.key) and _plain_string(type_.value):
        return _string_map(type_, stock)
    if type_.is_map():
        value = _atom_parser(type_.value)

        def map_(json: Any) -> data.Datum:
            if type(json) is list and len(json) == 2 and json[0] == "map":
                pairs = json[1]
                if type(pairs) is list and all(type(p) is list and len(p) == 2 for p in pairs):
                    values = {key(k): value(v) for k, v in pairs}
                    if len(values) == len(pairs) and type_.n_min <= len(values) <= type_.n_max:
                        return data.Datum(type_, values)
            return stock(json)  # python-ovs' own error for anything else

        return map_

    def set_or_scalar(json: Any) -> data.Datum:
        if type(json) is list and json and json[0] == "set":
            if len(json) != 2 or type(json[1]) is not list:
                return stock(json)
            values = {key(a): None for a in json[1]}
            if len(values) == len(json[1]) and type_.n_min <= len(values) <= type_.n_max:
                return data.Datum(type_, values)
            return stock(json)
        return data.Datum(type_, {key(json): None})

    return set_or_scalar


class NbIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """ovsdbapp's IDL with the three changes above (see the module's docstring)."""

    def __init__(
        self, *args: Any, owners: tuple[str, str] | None = None,
        refs: Mapping[str, tuple[str, ...]] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        """``owners``: the ``external_ids`` keys of a row's owner and project; every table
        replicated with ``external_ids`` then has an :class:`OwnerIndex` named ``OWNERS``.
        ``refs``: table -> reference columns to keep a :class:`RefIndex` of (``refs_index``)."""
        super().__init__(*args, **kwargs)
        for table in self.tables.values():  # empty yet: nothing to carry over
            table.rows = HashIndexedRows(table)
            if owners is not None and "external_ids" in table.columns:
                table.rows.indexes[OWNERS] = OwnerIndex(OWNERS, *owners)
            for column in (refs or {}).get(table.name, ()):
                name = refs_index(column)
                table.rows.indexes[name] = RefIndex(name, column)
        #: table -> column name -> (the column, its datum parser, its default datum)
        self._parsers: dict[str, dict[str, tuple[Any, DatumParser, data.Datum]]] = {}
        #: table -> the JSON default of each required scalar column
        self._required: dict[str, dict[str, Any]] = {}

    def cooperative_yield(self) -> None:
        pass

    def _columns(self, table: Any) -> dict[str, tuple[Any, DatumParser, data.Datum]]:
        found = self._parsers[table.name] = {
            name: (column, datum_parser(column.type), data.Datum.default(column.type))
            for name, column in table.columns.items()
        }
        return found

    def _Idl__add_default(  # noqa: N802 (python-ovs' private name, mangled)
        self, table: Any, row_update: dict[str, Any]
    ) -> None:
        """``Idl.__add_default`` of ovs 4.0.0 with the columns it fills worked out once per
        table: a required scalar column the server left out has its type's default."""
        defaults = self._required.get(table.name)
        if defaults is None:
            defaults = self._required[table.name] = {
                name: self._Idl__column_name(column)
                for name, column in table.columns.items()
                if column.type.n_min != 0
                and not column.type.is_map()
                and name not in self.readonly.get(table.name, ())
            }
        for name, default in defaults.items():
            if name not in row_update:
                row_update[name] = default

    def _Idl__row_update(  # noqa: N802 (python-ovs' private name, mangled)
        self, table: Any, row: Any, row_json: dict[str, Any]
    ) -> bool:
        """``Idl.__row_update`` of ovs 4.0.0, with :func:`datum_parser`'s parsers and each
        column's default parsed once (``ColumnDefaultDict.__missing__`` parses it per row)."""
        changed = False
        stored = row._data
        columns = self._parsers.get(table.name) or self._columns(table)
        for column_name, datum_json in row_json.items():
            found = columns.get(column_name)
            if found is None:
                ovs_idl.vlog.warn(f"unknown column {column_name} updating table {table.name}")
                continue
            column, parse, default = found
            try:
                datum = parse(datum_json)
            except error.Error as e:
                ovs_idl.vlog.warn(f"error parsing column {column_name} in table {table.name}: {e}")
                continue
            old = dict.get(stored, column_name, default)  # dict.get: no __missing__
            if datum != old:
                stored[column_name] = datum
                if column.alert:
                    changed = True
        return changed
