"""``vpcbus dashboard``: a web page of the bus, live: projects by services, EIPs, pools, the
newest lifecycle events, errors and dead letters.

It reads the streams of the subject catalogue with ordered JetStream consumers, each of which
first replays what its stream holds and then carries on live, without a gap or a duplicate:

* ``vpcbus.status.>`` and ``vpcbus.usage.>`` from ``VPCBUS_STATUS``, the last message of each
  subject (the current state of everything), then every change;
* ``VPCBUS_EVENTS`` (``project.*``, ``workload.*``, ``eip.*``) and ``VPCBUS_ERRORS``
  (``vpcbus.error.>``, ``vpcbus.dlq.>``) from their newest :data:`REPLAY` messages on.

Every message is folded into a :class:`vpcbus.boards.Board`, and each update goes to the open
pages as a server-sent event (:mod:`vpcbus.webserving`). It serves once the replay is done (or
after :data:`LOAD_TIMEOUT`) and prints its address; it stops on Ctrl-C or SIGTERM, and exits
``4`` when the connection to NATS is lost.

Registered by :func:`vpcbus.__main__.build_parser` through :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Final

from nats.aio.msg import Msg
from nats.js import api

from vpcbus import boards, webserving
from vpcbus.client import Client
from vpcbus.common import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    RECONNECT_GRACE,
    CliError,
    connect,
)
from vpcbus_proto import subjects

#: Messages of the events and errors streams replayed at start (the board keeps fewer).
REPLAY: Final = 200
#: How long the start waits for the replay before it serves anyway.
LOAD_TIMEOUT: Final = 10.0

Take = Callable[[str, bytes, datetime, int], None]


async def dashboard_cmd(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port} is not a TCP port", EXIT_USAGE)
    if args.keepalive <= 0:
        raise CliError("--keepalive must be more than 0 seconds", EXIT_USAGE)
    client = await connect(args.home, forever=True)  # outlives a NATS restart
    try:
        return await _serve(client, args)
    finally:
        if not client.nc.is_closed:
            await client.close()


async def _serve(client: Client, args: argparse.Namespace) -> int:
    hub = webserving.Hub(boards.Board())

    def take(subject: str, data: bytes, when: datetime, seq: int) -> None:
        try:
            hub.take(hub.board.take(subject, data, when, seq))
        except Exception as exc:  # a bug must not stop the feed; the message is skipped
            print(f"warning: skipped a message on {subject}: {exc!r}", file=sys.stderr)

    loaded = await feed(client, take)
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in loaded)), LOAD_TIMEOUT)
    except TimeoutError:
        print("note: still replaying the streams; serving meanwhile", file=sys.stderr)
    web = webserving.Server(hub, keepalive=args.keepalive)
    try:
        server = await asyncio.start_server(
            web.handle, args.host, args.port, limit=webserving.MAX_REQUEST
        )
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"dashboard on http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            await _until_stopped(client)
        finally:
            await web.hang_up()
    return EXIT_OK


async def _until_stopped(client: Client) -> None:
    """Until SIGINT or SIGTERM; a :class:`CliError` once the NATS connection is gone."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            if client.lost(RECONNECT_GRACE):
                raise CliError("lost the connection to NATS", EXIT_UNREACHABLE)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                continue
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# -- the feed ------------------------------------------------------------------------------


async def feed(client: Client, take: Take) -> list[asyncio.Event]:
    """Tap the three streams; each event is set once its consumer has replayed the stream."""
    last = api.DeliverPolicy.LAST_PER_SUBJECT
    taps = [
        (subjects.STATUS_STREAM, "vpcbus.status.>", api.ConsumerConfig(deliver_policy=last)),
        (subjects.STATUS_STREAM, "vpcbus.usage.>", api.ConsumerConfig(deliver_policy=last)),
        (subjects.EVENTS_STREAM, ">", await _newest(client, subjects.EVENTS_STREAM)),
        (subjects.ERRORS_STREAM, ">", await _newest(client, subjects.ERRORS_STREAM)),
    ]
    return [await _tap(client, stream, subject, config, take) for stream, subject, config in taps]


async def _newest(client: Client, stream: str) -> api.ConsumerConfig:
    """Deliver from the stream's newest :data:`REPLAY` messages on."""
    info = await client.js.stream_info(stream)
    start = max(info.state.first_seq, info.state.last_seq - REPLAY + 1, 1)
    return api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
    )


async def _tap(
    client: Client, stream: str, subject: str, config: api.ConsumerConfig, take: Take
) -> asyncio.Event:
    loaded = asyncio.Event()

    async def arrived(msg: Msg) -> None:
        meta = msg.metadata
        take(msg.subject, msg.data, meta.timestamp, meta.sequence.stream)
        if meta.num_pending == 0:
            loaded.set()

    sub = await client.js.subscribe(
        subject, stream=stream, cb=arrived, ordered_consumer=True, config=config
    )
    if (await sub.consumer_info()).num_pending == 0:
        loaded.set()  # nothing to replay, or all of it was handed over already
    return loaded


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus dashboard``."""
    d = sub.add_parser(
        "dashboard",
        help="serve a live web page of projects, services, EIPs, events and errors",
        description="A web page of the bus, updated live (server-sent events): projects x "
        "services with their state, EIPs, pool usage, recent events, errors and dead letters. "
        "It has no authentication: keep --host on a loopback address unless the network is "
        "trusted.",
    )
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    d.add_argument("--port", type=int, default=8080, help="TCP port, 0 for any (%(default)s)")
    d.add_argument(
        "--keepalive", type=float, default=15.0, metavar="S",
        help="seconds between keep-alive comments on a quiet event stream (%(default)s)",
    )  # fmt: skip
    d.set_defaults(func=dashboard_cmd)
