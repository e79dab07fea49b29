"""A C-speed JSON parser for the ``ovs`` library's JSON-RPC stream.

The ``ovs`` wheel from PyPI has no C extension (it builds one only against
``libopenvswitch``, which Debian 12 does not ship as a development package), so every byte
an OVSDB server sends is lexed character by character in Python: a service's first monitor
reply of a large Northbound database took seconds (bench/RESULTS.md). This parser keeps the
stream's framing (one top-level JSON value after another, split anywhere by the socket) but
only *finds* where a value ends, with a regular expression over strings and brackets, and
then decodes the whole value with the standard library's C decoder.

:func:`install` swaps it in for ``ovs.json.Parser`` when the pure-Python one is in use; the
interface is the one ``ovs.jsonrpc`` and ``ovs.json.from_string`` rely on: ``feed`` consumes
input up to the end of the first complete value and says how much, ``is_done`` tells whether a
value is complete, ``finish`` returns the value, or an error message as a ``str``.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A complete string, or one cut off by the end of the input (group ``end`` not a quote);
# or one bracket. Everything else (numbers, literals, commas, colons, blanks) is skipped by
# the regular expression engine itself.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?P<end>"|\\?\Z)|[{}\[\]]', re.DOTALL)
#: After escapes are gone, a string is anything between two quotes (no backtracking).
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_BOUNDARY = re.compile(r"[}\]]\s*[{\[]")
_OPEN = frozenset("{[")
#: The pure-Python parser's limit, kept so hostile input fails the same way.
MAX_HEIGHT = 1000


class Parser:
    """Drop-in for ``ovs.json.Parser``: see the module docstring."""

    def __init__(self, check_trailer: bool = False) -> None:
        self.check_trailer = check_trailer
        self._parts: list[str] = []
        # Where the input taken so far left off: bracket depth, inside a string, right after
        # a backslash in one (the next character is escaped).
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._done = False
        self._error: str | None = None

    def feed(self, s: str) -> int:
        """Take input up to the end of the first complete top-level value; the number of
        characters of ``s`` taken (all of it while the value is still open)."""
        if self._done:
            if self.check_trailer and s.strip():
                self._error = "trailing garbage at end of input"
            return len(s) if self.check_trailer else 0
        if not s:
            return 0
        # Fast path, all in C. Escapes (``\x``) go first, so every quote left delimits a
        # string; then the strings go, and the brackets left are counted. A value can end in
        # ``s`` only where the depth comes back to zero, and between two top-level values a
        # closing bracket meets an opening one with nothing but blanks between (inside one
        # value, JSON puts a comma there).
        t = s[1:] if self._escaped else s
        if "\\" in t:
            t = _ESCAPE.sub("", t)
        escaped = t.endswith("\\")
        if escaped:
            t = t[:-1]
        if self._in_string:
            t = '"' + t
        in_string = t.count('"') % 2 == 1
        bare = _STRING.sub("", t)
        if in_string:
            bare = bare[: bare.find('"')]
        depth = self._depth
        after = depth + bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]")
        if after > 0 and depth > 0 and _BOUNDARY.search(bare) is None:
            self._depth, self._in_string, self._escaped = after, in_string, escaped
            self._parts.append(s)
            return len(s)
        return self._scan(s)

    def _scan(self, s: str) -> int:
        """The exact walk, token by token, where a value may end in ``s``."""
        prefix = ('"' if self._in_string else "") + ("\\" if self._escaped else "")
        text = prefix + s
        depth = self._depth
        self._in_string = self._escaped = False
        for m in _TOKEN.finditer(text):
            c = m.group()
            first = c[0]
            if first == '"':
                end = m.group("end")
                if end != '"':  # the input ends inside this string
                    self._in_string, self._escaped = True, end == "\\"
                    break
                if depth == 0:  # a bare top-level string is complete at once
                    return self._complete(s, m.end() - len(prefix))
            elif first in _OPEN:
                depth += 1
                if depth > MAX_HEIGHT:
                    return self._fail(f"input exceeds maximum nesting depth {MAX_HEIGHT}", s)
            else:
                depth -= 1
                if depth == 0:
                    return self._complete(s, m.end() - len(prefix))
                if depth < 0:
                    return self._fail(f"syntax error: unexpected {c!r}", s)
        self._depth = depth
        self._parts.append(s)
        return len(s)

    def _complete(self, s: str, end: int) -> int:
        self._parts.append(s[:end])
        self._done = True
        if self.check_trailer:
            if s[end:].strip():
                self._error = "trailing garbage at end of input"
            return len(s)
        return end

    def _fail(self, error: str, s: str) -> int:
        self._error, self._done = error, True
        return len(s)

    def is_done(self) -> bool:
        return self._done

    def finish(self) -> Any:
        """The value, or the error as a ``str`` (the ``ovs`` convention)."""
        if self._error is not None:
            return self._error
        text = "".join(self._parts)
        self._parts = []
        if not text.strip():
            return "empty input stream"
        try:
            return json.loads(text)
        except ValueError as exc:
            return f"syntax error: {exc}"


def install() -> bool:
    """Use :class:`Parser` for ``ovs``'s JSON when its own C parser is missing; True when
    swapped in (idempotent). The library's pure-Python class cannot be used afterwards (its
    methods look ``Parser`` up in their module); nothing in ``ovs`` or ``ovsdbapp`` keeps a
    reference to it."""
    import ovs.json

    if ovs.json.PARSER == ovs.json.PARSER_C:
        return False
    ovs.json.Parser = Parser
    return True
