"""Progress of a long CLI wait: a line on stderr every few seconds saying what is pending.

``project create|update|delete --wait`` hand a :class:`Progress` to
:meth:`vpcbus.client.Watch.until`, which calls it at least once a second; it stays quiet for
the first ``every`` seconds (most waits end sooner) and then prints at most one line per
``every`` seconds, so the output reads the same on a terminal, in a pipe and in a CI log.
stdout is left alone: scripts parse it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from vpcbus.client import Statuses
from vpcbus_proto import subjects


def pending(project: str, generation: int, statuses: Statuses) -> str:
    """``waiting for acme/shop: ipam Ready, vpc Pending (WaitingForIpam), nat -, dns -``;
    a service still on an older generation says which (``nat Ready at gen 1``)."""
    parts = []
    for service in subjects.SERVICES:
        st = statuses.get(service)
        if st is None:
            parts.append(f"{service} -")
        elif st.generation < generation:
            parts.append(f"{service} {st.state} at gen {st.generation}")
        elif st.state in ("Pending", "Error"):
            parts.append(f"{service} {st.state} ({st.reason})")
        else:
            parts.append(f"{service} {st.state}")
    return f"waiting for {project}: {', '.join(parts)}"


class Progress:
    """Call with the statuses seen so far; prints :func:`pending` when it is time to."""

    def __init__(
        self,
        project: str,
        generation: int,
        *,
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        out: TextIO | None = None,
    ) -> None:
        self.project = project
        self.generation = generation
        self.every = every
        self.clock = clock
        self.out = out
        self.started = self.last = clock()

    def __call__(self, statuses: Statuses) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        line = pending(self.project, self.generation, statuses)
        print(f"{line} ({now - self.started:.0f}s)", file=self.out or sys.stderr, flush=True)
