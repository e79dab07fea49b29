"""Pull a durable JetStream consumer into a callback, without a task and a timer per message.

nats-py's ``PullSubscription.fetch`` waits for each message of a batch with
``Subscription.next_msg``: a ``uuid4``, a task, and ``asyncio.wait_for`` (a second task and a
timer on the loop's heap) per message. Consuming and acking 20,000 messages that way took
0.6 CPU-s on this machine; through a callback subscription, 0.21 (bench/RESULTS.md). Every
event and every peer status a service handles came through it.

A :class:`Puller` keeps one pull request open on the consumer, ``{"batch": B, "expires": E}``,
answered to its own inbox. The inbox's callback subscription hands every message to
``deliver``, one at a time and in the consumer's order, so a ``deliver`` that waits (for a
free slot, say) holds back the next message. A request is over when B messages came, when the
server ends it with a status (``408`` expired; ``409`` consumer deleted, leadership changed,
...), or after E + :data:`GRACE` seconds without either (lost in a reconnect). The next request
is made at once, or after :data:`PAUSE` when the server reported an error.

Only public client API is used: a subscription, a publish, and the message's own ack methods
(its reply subject is the consumer's ack subject, as with nats-py's own pull subscriptions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

log = structlog.get_logger()

#: Seconds past a request's expiry after which it is taken as lost.
GRACE = 1.0
#: Seconds to wait before asking again after the server answered with an error status.
PAUSE = 0.5
#: Status codes that end a request normally: no messages (only with ``no_wait``), expired.
_ENDED = frozenset({"404", "408"})
_HEARTBEAT = "100"
_STATUS = api.Header.STATUS.value
_DESCRIPTION = api.Header.DESCRIPTION.value


class Puller:
    """Deliver the messages of ``stream``'s durable consumer ``durable`` to ``deliver``."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        deliver: Callable[[Msg], Awaitable[None]],
        *,
        batch: int = 128,
        expires: float = 2.0,
        prefix: str = api.DEFAULT_PREFIX,
    ) -> None:
        if batch < 1 or expires <= 0:
            raise ValueError("batch must be at least 1 and expires positive")
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self.deliver = deliver
        self.batch = batch
        self.expires = expires
        self._next = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._request = json.dumps({"batch": batch, "expires": int(expires * 1e9)}).encode()
        self._inbox = ""
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._over = asyncio.Event()
        self._received = 0  # messages of the current request
        self._pause = 0.0
        #: Pull requests made, and the statuses that ended one, by code (for tests and stats).
        self.requests = 0
        self.statuses: dict[str, int] = {}

    async def start(self) -> None:
        if self._task is not None:
            return
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._task = asyncio.create_task(self._ask_forever(), name=f"pull {self.durable}")

    async def stop(self) -> None:
        """Make no more requests and deliver nothing more. What the server sends to the open
        request from now on is not acked, and is delivered again after the ack wait."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has no subscriptions
                await sub.unsubscribe()

    async def _ask_forever(self) -> None:
        while True:
            self._received = 0
            self._pause = 0.0
            self._over.clear()
            try:
                await self.nc.publish(self._next, self._request, reply=self._inbox)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # closed, or the reconnect buffer is full
                log.warning("pull request failed", consumer=self.durable, error=repr(exc))
                await asyncio.sleep(PAUSE)
                continue
            self.requests += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.expires + GRACE):
                    await self._over.wait()
            if self._pause:
                await asyncio.sleep(self._pause)

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply:  # a stream message: its reply subject is the consumer's ack subject
            self._received += 1
            if self._received >= self.batch:
                self._over.set()  # ask for more while this one is delivered
            await self.deliver(msg)
            return
        headers = msg.headers or {}
        status = headers.get(_STATUS, "")
        if status == _HEARTBEAT:  # not asked for; harmless
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status not in _ENDED:
            log.warning(
                "pull request ended by the server", consumer=self.durable, status=status,
                description=headers.get(_DESCRIPTION, ""),
            )  # fmt: skip
            self._pause = PAUSE
        self._over.set()
