"""``vpcbus watch``: what happens on the bus, one line per message, as it happens.

It subscribes to the lifecycle events, the services' statuses, errors and dead letters and
IPAM's pool accounting (the subject catalogue), narrowed by ``-p ORG/PROJECT`` or ``--org``,
``--service`` and ``--type``, and prints the time, type, service, project and what the message
says. A status is printed only when it differs from the last one seen for the same service
and project (state, reason, generation or members), with the members that changed.
``--json`` prints every message instead, as ``{"subject": ..., "data": ...}``. A payload that
is not what its subject promises is printed as such.

Statuses, errors and dead letters name their service and project in the subject, so the
filters become subscriptions. Events name their project only in the payload: they are
decoded as the services decode them (:func:`vpcbus_runtime.intake.decode`) and filtered here;
one too malformed to name a project is shown only when no project or org filter is set.

Live by default (core NATS subscriptions). ``--since-start`` first replays what the streams
still hold (an ordered JetStream consumer per filter: every retained event, the last status
of each service and project, 30 days of errors), stream by stream, then carries on live.

Registered by :func:`vpcbus.__main__.build_parser` through :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vpcbus import messages
from vpcbus.client import Client, Seen
from vpcbus.common import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    RECONNECT_GRACE,
    CliError,
    connect,
    endpoints,
    parse_ref,
)
from vpcbus_proto import names, subjects
from vpcbus_proto.status import ServiceStatus

TYPES: Final = ("event", "status", "error", "dlq", "usage")
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

# -- what to show ------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    types: tuple[str, ...]
    service: str | None = None
    org: str | None = None
    project: str | None = None

    def subjects(self) -> list[str]:
        """The subscriptions: status, error and dlq narrowed by subject; events all."""
        scope = ".".join(t or "*" for t in (self.service, self.org, self.project))
        out: list[str] = []
        for kind in self.types:
            if kind == "event":
                out += subjects.EVENT_SUBJECTS
            elif kind == "usage":
                out.append(subjects.pool_usage_subject("*"))
            else:
                out.append(f"vpcbus.{kind}.{scope}")
        return out

    def wants(self, line: messages.Line) -> bool:
        return (
            line.kind in self.types
            and self.service in (None, line.service)
            and self.org in (None, line.org)
            and self.project in (None, line.project)
        )


def build_filter(
    types: Sequence[str], *, service: str | None, org: str | None, project: str | None
) -> Filter:
    """The filter of the options; a :class:`CliError` (usage) when they contradict."""
    if org is not None and not names.is_label(org):
        raise CliError(f"--org {org!r} is not a lower-case DNS label", EXIT_USAGE)
    if not types:
        types = [
            t for t in TYPES
            if not (t == "event" and service)
            and not (t == "usage" and (org or service not in (None, "ipam")))
        ]  # fmt: skip
    if "event" in types and service:
        raise CliError("events belong to no service: drop --service or --type event", EXIT_USAGE)
    if "usage" in types and org:
        raise CliError("usage (pool accounting) belongs to no project: drop -p/--org", EXIT_USAGE)
    if "usage" in types and service not in (None, "ipam"):
        raise CliError("usage (pool accounting) is IPAM's: drop --service", EXIT_USAGE)
    return Filter(tuple(dict.fromkeys(types)), service, org, project)


class Feed:
    """Messages in, lines out: filtered, and statuses only when they changed."""

    def __init__(self, flt: Filter, *, every_status: bool = False) -> None:
        self.flt = flt
        self.every_status = every_status
        self._last: dict[str, ServiceStatus] = {}

    def take(self, subject: str, data: bytes) -> messages.Line | None:
        before = self._last.get(subject)
        line = messages.describe(subject, data, before)
        if not self.flt.wants(line):
            return None
        if line.status is not None:
            repeated = before is not None and messages.unchanged(before, line.status)
            if repeated and not self.every_status:
                return None
            self._last[subject] = line.status
        return line


# -- the command -------------------------------------------------------------------------


async def watch_cmd(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project) if args.project else (args.org, None)
    flt = build_filter(args.type or [], service=args.service, org=org, project=project)
    if args.count is not None and args.count < 1:
        raise CliError("--count must be 1 or more", EXIT_USAGE)
    url = endpoints(args.home)["nats"]
    seen: asyncio.Queue[Seen | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:  # from here on, Ctrl-C ends the watch with 0 (None: stop)
        loop.add_signal_handler(sig, seen.put_nowait, None)
    try:
        client = await connect(args.home, url, forever=True)  # outlives a NATS restart
        try:
            await client.tap(flt.subjects(), seen.put, replay=args.since_start)
            subscribed = " ".join(flt.subjects())
            print(f"watching {subscribed} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            await _print(client, url, seen, Feed(flt, every_status=args.json), args)
        finally:
            if not client.nc.is_closed:
                await client.close()
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
    return EXIT_OK


async def _print(
    client: Client, url: str, seen: asyncio.Queue[Seen | None], feed: Feed, args: argparse.Namespace
) -> None:
    """Until ``--count`` lines, ``--timeout``, a signal (None) or a closed stdout."""
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    printed = 0
    while args.count is None or printed < args.count:
        wait = 0.5 if deadline is None else min(0.5, deadline - loop.time())
        if wait <= 0:
            return
        try:
            msg = await asyncio.wait_for(seen.get(), wait)
        except TimeoutError:
            if client.lost(RECONNECT_GRACE):
                raise CliError(f"lost the connection to NATS at {url}", EXIT_UNREACHABLE) from None
            continue
        if msg is None:
            return
        line = feed.take(msg.subject, msg.data)
        if line is None:
            continue
        text = (
            messages.raw_json(msg.subject, msg.data)
            if args.json
            else messages.render(msg.time, line)
        )
        if not _emit(text):
            return
        printed += 1


def _emit(text: str) -> bool:
    """Print a line; False once the reader went away (``vpcbus watch | head``)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return False
    return True


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus watch``."""
    w = sub.add_parser(
        "watch",
        help="stream events, status changes, errors and pool usage as they happen",
        description="One line per message: time (UTC), type, service, ORG/PROJECT, summary. "
        "A status is printed when its state, reason, generation or members changed.",
    )
    scope = w.add_mutually_exclusive_group()
    scope.add_argument("-p", "--project", metavar="ORG/PROJECT", help="one project")
    scope.add_argument("--org", help="one organization")
    w.add_argument("--service", choices=subjects.SERVICES, help="one service's status/errors")
    w.add_argument(
        "--type", nargs="+", action="extend", choices=TYPES, metavar="TYPE",
        help=f"{', '.join(TYPES)} (default: every type the filters apply to)",
    )  # fmt: skip
    w.add_argument("--json", action="store_true", help='every message as {"subject", "data"}')
    w.add_argument("--count", type=int, metavar="N", help="exit after N lines")
    w.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds")
    w.add_argument(
        "--since-start", action="store_true",
        help="first replay what the streams hold (events, last statuses, errors), then live",
    )  # fmt: skip
    w.set_defaults(func=watch_cmd)
