"""``vpcbus_runtime.pulling``: a durable consumer pulled into a callback, on a real nats-server.
Every message comes once and in order across many requests; a delivery that waits holds the
next back; a request the server expires, or ends because the consumer went away, is followed by
another; a request lost in a server restart is given up after its grace; and a stopped puller
delivers nothing more (what it was sent comes back after the ack wait)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from tests.integration.helpers import eventually
from vpcbus.embedded.natsd import NatsServer
from vpcbus_runtime import bus, pulling

pytestmark = [pytest.mark.connected]

_names = itertools.count()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Nats]:
    client = await bus.connect(nats_server.url, name="test-pulling")
    yield client
    await client.close()


async def stream(js: JetStreamContext, *, ack_wait: float = 30.0) -> tuple[str, str]:
    """A new stream ``P<n>`` on ``p<n>.>`` with a durable consumer ``c``."""
    n = next(_names)
    name = f"P{n}"
    await js.add_stream(name=name, subjects=[f"p{n}.>"])
    await consumer(js, name, ack_wait=ack_wait)
    return name, f"p{n}"


async def consumer(js: JetStreamContext, name: str, *, ack_wait: float = 30.0) -> None:
    config = api.ConsumerConfig(
        durable_name="c", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait
    )
    await js.add_consumer(name, config)


def acking(into: list[int]) -> Callable[[Msg], Awaitable[None]]:
    async def deliver(msg: Msg) -> None:
        into.append(msg.metadata.sequence.stream)
        await msg.ack()

    return deliver


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async def holds() -> bool:
        return check()

    assert await eventually(holds, timeout=timeout, interval=0.01)


async def settled(js: JetStreamContext, name: str) -> None:
    """Every message of the consumer delivered and acked (acks reach it asynchronously)."""

    async def done() -> bool:
        info = await js.consumer_info(name, "c")
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    assert await eventually(done, timeout=10, interval=0.02)


@contextlib.asynccontextmanager
async def running(puller: pulling.Puller) -> AsyncIterator[pulling.Puller]:
    await puller.start()
    try:
        yield puller
    finally:
        await puller.stop()


async def test_every_message_comes_once_and_in_order_across_requests(nc: Nats) -> None:
    js = nc.jetstream()
    name, prefix = await stream(js)
    seen: list[int] = []
    async with running(pulling.Puller(nc, name, "c", acking(seen), batch=5)) as puller:
        for i in range(23):
            await js.publish(f"{prefix}.{i % 3}", str(i).encode())
        await until(lambda: len(seen) == 23)
        assert seen == list(range(1, 24))
        assert puller.requests >= 5  # 23 messages, 5 a request
        await settled(js, name)
        await asyncio.sleep(0.2)
        assert len(seen) == 23  # nothing twice


async def test_a_delivery_that_waits_holds_the_next_back(nc: Nats) -> None:
    js = nc.jetstream()
    name, prefix = await stream(js)
    seen: list[int] = []
    gate = asyncio.Event()

    async def deliver(msg: Msg) -> None:
        seen.append(msg.metadata.sequence.stream)
        if len(seen) == 1:
            await gate.wait()
        await msg.ack()

    async with running(pulling.Puller(nc, name, "c", deliver, batch=2)):
        for i in range(5):
            await js.publish(f"{prefix}.x", str(i).encode())
        await until(lambda: len(seen) == 1)
        await asyncio.sleep(0.3)
        assert seen == [1]
        gate.set()
        await until(lambda: len(seen) == 5)
        assert seen == [1, 2, 3, 4, 5]


async def test_an_expired_request_is_followed_by_another(
    nc: Nats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the server's 408 can end the request here: the grace is far away."""
    monkeypatch.setattr(pulling, "GRACE", 600.0)
    js = nc.jetstream()
    name, prefix = await stream(js)
    seen: list[int] = []
    async with running(pulling.Puller(nc, name, "c", acking(seen), expires=0.2)) as puller:
        await until(lambda: puller.statuses.get("408", 0) >= 2)
        await js.publish(f"{prefix}.late", b"late")
        await until(lambda: seen == [1])
        assert puller.requests >= 3


async def test_a_deleted_consumer_is_reported_and_pulling_resumes_when_it_is_back(
    nc: Nats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pulling, "GRACE", 600.0)  # the server's status ends the request
    js = nc.jetstream()
    name, prefix = await stream(js)
    seen: list[int] = []
    async with running(pulling.Puller(nc, name, "c", acking(seen), expires=0.5)) as puller:
        await until(lambda: puller.requests >= 1)
        await js.delete_consumer(name, "c")
        await until(lambda: puller.statuses.get("409", 0) >= 1)
        await consumer(js, name)
        await js.publish(f"{prefix}.back", b"back")
        await until(lambda: seen == [1])


async def test_a_request_lost_in_a_server_restart_is_given_up_after_its_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed server sends no status (a stopped one says 409 Server Shutdown), and the
    restarted one forgot the open request."""
    monkeypatch.setattr(pulling, "GRACE", 0.5)
    server = NatsServer(tmp_path)
    server.start()
    try:
        nc = await bus.connect(server.url, name="test-pulling-restart")
        try:
            js = nc.jetstream()
            name, prefix = await stream(js)
            seen: list[int] = []
            puller = pulling.Puller(nc, name, "c", acking(seen), expires=1.0)
            async with running(puller):
                await until(lambda: puller.requests == 1)
                await asyncio.to_thread(server.stop, kill=True)
                await asyncio.to_thread(server.start)
                await until(lambda: nc.is_connected)
                await js.publish(f"{prefix}.after", b"after", timeout=5)
                await until(lambda: seen == [1], timeout=40)
                assert puller.requests >= 2
                assert not puller.statuses  # no status ended the first request
        finally:
            await nc.close()
    finally:
        server.stop()


async def test_a_stopped_puller_delivers_nothing_more(nc: Nats) -> None:
    js = nc.jetstream()
    name, prefix = await stream(js, ack_wait=1.0)
    seen: list[int] = []
    puller = pulling.Puller(nc, name, "c", acking(seen))
    async with running(puller):
        await js.publish(f"{prefix}.a", b"a")
        await until(lambda: seen == [1])
    await js.publish(f"{prefix}.b", b"b")  # to the stopped puller's open request, or none
    await asyncio.sleep(0.3)
    assert seen == [1]
    again: list[int] = []
    async with running(pulling.Puller(nc, name, "c", acking(again))):
        await until(lambda: again == [2])  # after the ack wait, if the old request took it
    await settled(js, name)


def test_batch_and_expiry_are_checked() -> None:
    async def deliver(msg: Msg) -> None:
        return None

    with pytest.raises(ValueError, match="batch"):
        pulling.Puller(Nats(), "S", "c", deliver, batch=0)
    with pytest.raises(ValueError, match="batch"):
        pulling.Puller(Nats(), "S", "c", deliver, expires=0)
