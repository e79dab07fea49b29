"""``vpcbus_runtime.ovsidl.datum_parser`` against python-ovs' ``Datum.from_json``: for every
column of OVN's NB and SB schemas, and for arbitrary JSON, the same datum or the same error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ovs.db.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ovs.db import data, error, types

from vpcbus_runtime.ovsidl import datum_parser

SCHEMAS = [Path("/usr/share/ovn/ovn-nb.ovsschema"), Path("/usr/share/ovn/ovn-sb.ovsschema")]
UUID = "6f7b4c4e-8a61-4b8e-9b0e-1d2c3b4a5f60"
OTHER_UUID = "0b0e1d2c-3b4a-4f60-8a61-6f7b4c4e9b0e"


def columns() -> list[tuple[str, types.Type]]:
    found = []
    for path in SCHEMAS:
        if not path.exists():  # scripts/setup installs ovn-central; say so if it did not
            pytest.fail(f"{path} is missing: run scripts/setup")
        schema = ovs.db.schema.DbSchema.from_json(json.loads(path.read_text()))
        for table in schema.tables.values():
            for name, column in table.columns.items():
                found.append((f"{schema.name}.{table.name}.{name}", column.type))
    return found


COLUMNS = columns()


def atoms(base: types.BaseType) -> list[Any]:
    """Valid and invalid JSON atoms of ``base``."""
    if base.enum is not None:
        valid = [a.to_json() for a in sorted(base.enum.values)][:2]
    elif base.type == types.StringType:
        valid = ["", "x", "a-longer-string"]
    elif base.type == types.IntegerType:
        valid = [v for v in (base.min, base.max, 0, 7) if v is not None]
    elif base.type == types.RealType:
        valid = [0, 1.5]
    elif base.type == types.BooleanType:
        valid = [True, False]
    else:
        valid = [["uuid", UUID], ["uuid", OTHER_UUID]]
    invalid = ["zz-not-in-any-enum", 12345678, -1, 1.25, True, None, ["uuid", "nope"], {}]
    invalid += [["uuid", UUID.replace("-", "")], ["uuid", "{" + UUID + "}"], ["uuid", False]]
    return valid + invalid


def samples(type_: types.Type) -> list[Any]:
    keys = atoms(type_.key)
    out: list[Any] = [data.Datum.default(type_).to_json(), *keys, ["set", []], ["map", []]]
    if type_.is_map():
        values = atoms(type_.value)
        out += [["map", [[k, v]]] for k in keys for v in values[:3]]
        out += [["map", [[keys[0], values[0]], [keys[0], values[0]]]]]  # a duplicate key
        out += [["map", [[keys[0], values[0]], [keys[1], values[1]]]], ["map", [keys[0]]]]
    else:
        out += [["set", [k]] for k in keys] + [["set", keys[:2]], ["set", [keys[0]] * 2]]
    out += [["set"], ["map"], ["set", keys[0]], [], 3.5, ["map", ""], ["map", "ab"], ["map", {}]]
    out += [["map", [[keys[0]]]], ["map", [[keys[0], keys[0], keys[0]]]], ["map", [keys[:2]]]]
    return out


def outcome(parse: Any, json_: Any) -> Any:
    try:
        datum = parse(json_)
    except error.Error:
        return "ovs.db.error.Error"
    except Exception as exc:  # the stock parser's own crash must be ours too
        return type(exc).__name__
    return (datum.type, datum.to_json())


@pytest.mark.parametrize(("name", "type_"), COLUMNS, ids=[c[0] for c in COLUMNS])
def test_each_schema_column_parses_as_python_ovs_parses_it(name: str, type_: types.Type) -> None:
    ours = datum_parser(type_)
    for sample in samples(type_):
        want = outcome(lambda j: data.Datum.from_json(type_, j), sample)
        assert outcome(ours, sample) == want, (name, sample)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 70000)
    | st.floats(allow_nan=False)
    | st.text(max_size=3)
    | st.sampled_from(["set", "map", "uuid", "named-uuid", UUID, UUID.upper(), "allow"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(column=st.sampled_from(COLUMNS), json_=json_values)
def test_any_json_gives_the_same_datum_or_the_same_error(
    column: tuple[str, types.Type], json_: Any
) -> None:
    _, type_ = column
    want = outcome(lambda j: data.Datum.from_json(type_, j), json_)
    assert outcome(datum_parser(type_), json_) == want
