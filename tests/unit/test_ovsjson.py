"""The fast JSON-RPC stream parser against the ``ovs`` library's own (pure-Python) one: the
same values from the same stream however the socket splits it, and errors where it errs."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import ovs.json
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpcbus_runtime import ovsjson


def _library_parser() -> Any:
    """The library's own parser from a private copy of ``ovs/json.py``: its methods look
    ``Parser`` up in their module, which :func:`ovsjson.install` may have swapped already."""
    spec = importlib.util.spec_from_file_location("ovs_json_reference", ovs.json.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARSER == module.PARSER_PY  # the wheel has no C parser: what we replace
    return module.Parser


REFERENCE: Any = _library_parser()

# Strings that stress the framing: quotes, backslashes, brackets, unicode, JSON escapes
# (no NUL: OVSDB has none, and the library refuses even an escaped one where json accepts it).
text = st.text(alphabet=st.sampled_from(list('ab"\\{}[],: \n\té€😀')), max_size=12)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), text)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=30,
)
message = st.one_of(st.dictionaries(text, value, max_size=5), st.lists(value, max_size=5))


def stream(parser: Any, data: str, cuts: list[int]) -> list[Any]:
    """Feed ``data`` as ``ovs.jsonrpc.Connection.recv`` does, split at ``cuts``: unconsumed
    input stays for the next parser; a done parser is finished and replaced."""
    chunks, start = [], 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]:
        chunks.append(data[start:cut])
        start = cut
    out: list[Any] = []
    pending, p = "", None
    for chunk in chunks:
        pending += chunk
        while pending:
            if p is None:
                p = parser()
            pending = pending[p.feed(pending) :]
            if p.is_done():
                out.append(p.finish())
                p = None
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(message, min_size=1, max_size=4),
    st.lists(st.sampled_from(["", " ", "\n", "  \n"]), min_size=4, max_size=4),
    st.lists(st.integers(0, 4000), max_size=30),
    st.booleans(),
)
def test_same_values_as_the_library_parser_however_the_stream_is_split(
    messages: list[Any], gaps: list[str], cuts: list[int], ascii: bool
) -> None:
    # ensure_ascii: JSON's \uXXXX escapes (surrogate pairs too) instead of the characters
    data = "".join(json.dumps(m, ensure_ascii=ascii) + gaps[i % 4] for i, m in enumerate(messages))
    assert stream(ovsjson.Parser, data, cuts) == messages
    assert stream(REFERENCE, data, cuts) == messages


@pytest.mark.parametrize("cut", range(1, 40))
def test_a_string_cut_anywhere_even_inside_an_escape(cut: int) -> None:
    first = {"s": 'a"}\\]{x\\', "t": ['\\"', "]"]}
    data = json.dumps(first) + json.dumps({"id": 2})
    assert stream(ovsjson.Parser, data, [cut]) == [first, {"id": 2}]


def test_a_large_ovsdb_reply_in_socket_sized_chunks() -> None:
    rows = {
        f"{i:08x}-0000-0000-0000-000000000000": {
            "initial": {"name": f"p{i}", "external_ids": ["map", [["k", 'v "{x}" \\']]]}
        }
        for i in range(2000)
    }
    reply = {"id": 3, "result": {"Logical_Switch_Port": rows}, "error": None}
    data = json.dumps(reply) + json.dumps({"method": "echo", "params": [], "id": "echo"})
    got = stream(ovsjson.Parser, data, list(range(4096, len(data), 4096)))
    assert got == [reply, {"method": "echo", "params": [], "id": "echo"}]


@pytest.mark.parametrize(
    "data", ['{"a": 1,}', '{"a" 1}', "}", '{"a": tru}', "[1, 2]]", "[" * 1001 + "]" * 1001]
)
def test_malformed_input_is_an_error_string_like_the_library(data: str) -> None:
    # ovs.jsonrpc drops the connection at the first error: compare up to it
    got, ref = (
        until_error(stream(ovsjson.Parser, data, [])),
        until_error(stream(REFERENCE, data, [])),
    )
    assert isinstance(got[-1], str) and isinstance(ref[-1], str)
    assert got[:-1] == ref[:-1]  # "[1, 2]]": the value, then an error for the extra bracket


def until_error(values: list[Any]) -> list[Any]:
    errors = [i for i, v in enumerate(values) if isinstance(v, str)]
    return values[: errors[0] + 1] if errors else values


def test_from_string_checks_the_trailer() -> None:
    assert ovsjson.install() in (True, False)
    assert ovs.json.from_string('{"a": [1, "b"]}') == {"a": [1, "b"]}
    assert isinstance(ovs.json.from_string('{"a": 1} x'), str)
    assert isinstance(ovs.json.from_string("   "), str)
    assert ovs.json.from_string('"plain"') == "plain"


def test_install_swaps_the_pure_python_parser() -> None:
    assert ovsjson.install() is True
    assert ovs.json.Parser is ovsjson.Parser
