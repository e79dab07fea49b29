"""The dashboard's HTTP/1.1 side, on ``asyncio.start_server``: the page, a JSON snapshot and a
server-sent event stream of updates.

* ``GET /``: the page (``dashboard.html``, package data). It loads nothing from elsewhere; its
  Content-Security-Policy lets it talk only to this server.
* ``GET /api/state``: :meth:`vpcbus.boards.Board.snapshot` as JSON, and ``listeners``: how
  many event streams are open.
* ``GET /events``: ``text/event-stream``: first ``event: snapshot`` (everything), then one
  event per update (``project``, ``pool``, ``event``, ``failure``; ``data`` is one JSON line), and
  a ``: keep-alive`` comment after each quiet ``keepalive`` seconds. A page that falls
  :data:`MAX_BACKLOG` updates behind is disconnected; its ``EventSource`` reconnects and starts
  over from a fresh snapshot.
* Anything else: 404; a method other than GET: 405; a request that is not HTTP: 400.

Each response but the event stream closes its connection. Used by :mod:`vpcbus.dashboard`,
which feeds the :class:`Hub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources
from typing import Final
from urllib.parse import urlsplit

from vpcbus import boards

#: Updates queued for one page before it is dropped (it reconnects and resyncs).
MAX_BACKLOG: Final = 1000
#: How long a client may take to send its request line and headers.
REQUEST_TIMEOUT: Final = 10.0
MAX_REQUEST: Final = 16 * 1024
#: How soon a disconnected ``EventSource`` tries again, in milliseconds.
RETRY_MS: Final = 2000
PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)


def page() -> bytes:
    return resources.files("vpcbus").joinpath("dashboard.html").read_bytes()


class Hub:
    """A board and the pages listening to it: every update goes to each page's queue."""

    def __init__(self, board: boards.Board) -> None:
        self.board = board
        self._queues: set[asyncio.Queue[boards.Update | None]] = set()

    def take(self, update: boards.Update | None) -> None:
        if update is None:
            return
        for queue in list(self._queues):
            try:
                queue.put_nowait(update)
            except asyncio.QueueFull:  # too slow: cut it off, it will resync
                self._queues.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def listen(self) -> tuple[boards.Json, asyncio.Queue[boards.Update | None]]:
        """The snapshot and the queue of every update after it (None: disconnect)."""
        queue: asyncio.Queue[boards.Update | None] = asyncio.Queue(MAX_BACKLOG)
        self._queues.add(queue)
        return self.board.snapshot(), queue

    def leave(self, queue: asyncio.Queue[boards.Update | None]) -> None:
        self._queues.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._queues)


class Server:
    """Serves one :class:`Hub`; :meth:`handle` is the ``asyncio.start_server`` callback."""

    def __init__(self, hub: Hub, *, keepalive: float = 15.0) -> None:
        self.hub = hub
        self.keepalive = keepalive
        self._page = page()
        self._open: dict[asyncio.StreamWriter, asyncio.Future[None]] = {}

    async def hang_up(self) -> None:
        """Close every open connection (event streams never end by themselves) and wait for
        their handlers: the listening server's ``wait_closed`` waits for them (Python 3.12+)."""
        for writer in self._open:
            writer.close()  # a stream's handler sees EOF and returns
        if self._open:
            await asyncio.wait(self._open.values(), timeout=REQUEST_TIMEOUT)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open[writer] = finished = asyncio.get_running_loop().create_future()
        try:
            await self._respond(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or never finished its request
        finally:
            del self._open[writer]
            finished.set_result(None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _send(writer, 400, b"request too large\n")
            return
        method, target, version = _request_line(head)
        if not version.startswith("HTTP/1."):
            await _send(writer, 400, b"not an HTTP/1.x request\n")
        elif method != "GET":
            await _send(writer, 405, b"only GET\n", extra={"Allow": "GET"})
        elif (path := urlsplit(target).path) == "/":
            extra = {"Content-Security-Policy": PAGE_POLICY}
            await _send(writer, 200, self._page, "text/html; charset=utf-8", extra)
        elif path == "/api/state":
            state = {**self.hub.board.snapshot(), "listeners": self.hub.listeners}
            body = json.dumps(state).encode()
            await _send(writer, 200, body, "application/json")
        elif path == "/events":
            await self._stream(reader, writer)
        else:
            await _send(writer, 404, b"not found\n")

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The event stream, until the client disconnects or falls too far behind."""
        snapshot, queue = self.hub.listen()
        gone = asyncio.ensure_future(reader.read(1))  # EOF (or junk): the page went away
        update = asyncio.ensure_future(queue.get())
        try:
            writer.write(_head(200, "text/event-stream", None, {"X-Accel-Buffering": "no"}))
            writer.write(f"retry: {RETRY_MS}\n\n".encode() + frame("snapshot", snapshot))
            await writer.drain()
            while True:
                done, _ = await asyncio.wait(
                    {gone, update}, timeout=self.keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    return
                if update in done:
                    item = update.result()
                    if item is None:
                        return
                    writer.write(frame(*item))
                    update = asyncio.ensure_future(queue.get())
                else:
                    writer.write(b": keep-alive\n\n")
                await writer.drain()
        finally:
            self.hub.leave(queue)
            for task in (gone, update):
                task.cancel()
            await asyncio.gather(gone, update, return_exceptions=True)


def _request_line(head: bytes) -> tuple[str, str, str]:
    """``GET /path HTTP/1.1``: its three words ("" for a missing one)."""
    words = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    method, target, version = [*words, "", "", ""][:3]
    return method, target, version


def frame(kind: str, data: boards.Json) -> bytes:
    """One server-sent event; JSON has no raw newlines, so one ``data:`` line."""
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _head(
    status: int, content_type: str, length: int | None, extra: dict[str, str] | None = None
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    if length is not None:
        lines += [f"Content-Length: {length}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: dict[str, str] | None = None,
) -> None:
    writer.write(_head(status, content_type, len(body), extra) + body)
    await writer.drain()
