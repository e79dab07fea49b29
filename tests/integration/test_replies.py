"""``vpcbus_runtime.replies``: the services' request/reply, on a real nats-server. Replies
reach the request that asked, in any order; no responders, a time-out and a cancelled request
end as nats-py's own do; JetStream and KV calls (which ask through ``Client.request``) work
through it, errors included; and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import KeyNotFoundError, NotFoundError

from vpcbus.embedded.natsd import NatsServer
from vpcbus_runtime import bus, replies

pytestmark = [pytest.mark.connected]


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Nats]:
    client = await bus.connect(nats_server.url, name="test-replies")
    assert isinstance(client.request.__self__, replies.Replies)  # type: ignore[attr-defined]
    yield client
    await client.close()


def asked(nc: Nats) -> replies.Replies:
    found = nc.request.__self__  # type: ignore[attr-defined]
    assert isinstance(found, replies.Replies)
    return found


async def test_each_request_gets_its_own_reply_in_any_order(nc: Nats) -> None:
    """A responder that answers in reverse order of arrival, to 200 requests at once."""
    held: list[Msg] = []
    all_in = asyncio.Event()

    async def respond(msg: Msg) -> None:
        held.append(msg)
        if len(held) == 200:
            all_in.set()

    sub = await nc.subscribe("rp.echo", cb=respond)

    async def answer() -> None:
        await all_in.wait()
        for msg in reversed(held):
            await msg.respond(b"re:" + msg.data)

    answering = asyncio.create_task(answer())
    got = await asyncio.gather(*(nc.request("rp.echo", str(i).encode(), 5) for i in range(200)))
    await answering
    assert [m.data for m in got] == [f"re:{i}".encode() for i in range(200)]
    assert asked(nc)._waiting == {}
    await sub.unsubscribe()


async def test_no_responders_time_outs_and_cancels_end_as_nats_pys(nc: Nats) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request("rp.nobody", b"", 1)

    async def never(_msg: Msg) -> None:
        pass

    silent = await nc.subscribe("rp.silent", cb=never)
    with pytest.raises(nats.errors.TimeoutError):  # the sweeper's, not this guard's
        await asyncio.wait_for(nc.request("rp.silent", b"", 0.2), 10)
    pending = asyncio.create_task(nc.request("rp.silent", b"", 30))
    await asyncio.sleep(0.1)
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    assert pending.cancelled()
    assert asked(nc)._waiting == {}
    await silent.unsubscribe()
    # the sweeper stops once no request is outstanding, and its queues are empty then
    for _ in range(100):
        if asked(nc)._sweeper is None:
            break
        await asyncio.sleep(replies.SWEEP)
    assert asked(nc)._sweeper is None
    assert not any(asked(nc)._deadlines.values())


async def test_jetstream_and_kv_calls_ask_through_it(nc: Nats) -> None:
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="RPTEST", subjects=["rp.js.>"], allow_direct=True))
    serial = asked(nc)._serial
    ack = await js.publish("rp.js.a", b"one")
    assert ack.seq == 1
    msg = await js.get_last_msg("RPTEST", "rp.js.a", direct=True)
    assert msg.data == b"one"
    with pytest.raises(NotFoundError):
        await js.get_last_msg("RPTEST", "rp.js.none", direct=True)
    kv = await bus.ensure_bucket(js, "rp-bucket")
    revision = await kv.create("k", b"v")
    assert (await kv.get("k")).revision == revision
    with pytest.raises(KeyNotFoundError):
        await kv.get("missing")
    assert asked(nc)._serial > serial + 5  # each of those went through Replies.request


async def test_a_plain_nats_client_is_left_as_it_is(nats_server: NatsServer) -> None:
    plain = await nats.connect(nats_server.url)
    try:
        assert not isinstance(getattr(plain.request, "__self__", None), replies.Replies)
    finally:
        await plain.close()
