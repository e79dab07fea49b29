"""Plain-text tables and ages in kubectl's style, for the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta


def show(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for line in [headers, *rows]:
        print("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
