"""Compare-and-set deletes against a real nats-server (:mod:`vpcbus_runtime.kvcas`).

nats-py raises a lost delete race as a bare ``BadRequestError``, not as the
``KeyWrongLastSequenceError`` of ``update``; ``delete_if`` must answer it with False.
"""

from __future__ import annotations

import pytest
from nats.js.errors import KeyNotFoundError

from vpcbus.client import Client
from vpcbus_runtime import bus
from vpcbus_runtime.kvcas import delete_if

pytestmark = [pytest.mark.connected]


async def test_a_delete_that_lost_its_race_answers_false_and_keeps_the_key(
    client: Client,
) -> None:
    kv = await bus.ensure_bucket(client.js, "vpcbus-test-kvcas")
    first = await kv.create("k", b"1")
    second = await kv.update("k", b"2", last=first)

    assert await delete_if(kv, "k", first) is False
    entry = await kv.get("k")
    assert entry.value == b"2" and entry.revision == second

    assert await delete_if(kv, "k", second) is True
    with pytest.raises(KeyNotFoundError):
        await kv.get("k")
