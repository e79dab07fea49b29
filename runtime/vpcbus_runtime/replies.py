"""Request/reply for the services' NATS client, without a timer per request.

Every record read, peer status read, status publish and KV write of a reconcile is a NATS
request (``Client.request``, which JetStream's and KV's calls use). nats-py waits for each
reply with ``asyncio.wait_for``: a waiter future, a done callback and a timer handle pushed
onto the event loop's heap and cancelled again, per request. In a burst of 1,000 projects that
was 6-14 % of each service's CPU (bench/, py-spy).

:class:`Replies` keeps nats-py's design (one wildcard inbox subscription, a future per request
found by its token) and replaces the timers with one sweeper: requests are queued by their
time-out in the order they were made, so each queue is in deadline order, and every
:data:`SWEEP` seconds the sweeper fails the ones past theirs with ``nats.errors.TimeoutError``
(at most :data:`SWEEP` late). It is installed on the client as its ``request`` method, so every
nats-py call that asks (``js.publish``, ``get_last_msg``, ``KeyValue.get``, ...) uses it with
nats-py's own handling of the reply.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

#: How often, in seconds, requests past their time-out are failed.
SWEEP = 0.05
#: The status header of a "no responders" reply (nats-py's ``NO_RESPONDERS_STATUS``).
_STATUS = "Status"
_NO_RESPONDERS = "503"


class Replies:
    """``Client.request`` for one client, as :func:`install` sets it up."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._stock = nc.request
        self._prefix = f"{nc.new_inbox()}."
        self._serial = 0
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        #: time-out -> (deadline, token) in the order the requests were made
        self._deadlines: dict[float, deque[tuple[float, str]]] = {}
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def request(
        self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg:  # fmt: skip
        if old_style or self._sub is None:  # not started (install starts it)
            return await self._stock(subject, payload, timeout, old_style, headers)
        loop = asyncio.get_running_loop()
        self._serial += 1
        token = str(self._serial)
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        self._deadlines.setdefault(timeout, deque()).append((loop.time() + timeout, token))
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="nats-request-sweeper")
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def start(self) -> None:
        """Subscribe to the replies' inbox (once, before any request can race to do it)."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(f"{self._prefix}*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is not None and not future.done():
            future.set_result(msg)

    async def _sweep(self) -> None:
        """Fail requests past their time-out, while there are any."""
        loop = asyncio.get_running_loop()
        try:
            while any(self._deadlines.values()):
                await asyncio.sleep(SWEEP)
                now = loop.time()
                for queue in self._deadlines.values():
                    while queue and (queue[0][0] <= now or queue[0][1] not in self._waiting):
                        _, token = queue.popleft()
                        future = self._waiting.get(token)
                        if future is not None and not future.done():
                            future.set_exception(nats.errors.TimeoutError())
        finally:
            self._sweeper = None


async def install(nc: Client) -> Replies:
    """Make ``nc.request`` a :class:`Replies`' (for this client only)."""
    replies = Replies(nc)
    await replies.start()
    nc.request = replies.request  # type: ignore[method-assign]
    return replies
