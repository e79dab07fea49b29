"""The services' KV buckets read with direct gets (``vpcbus_runtime.bus``), on a real
nats-server: a new bucket has them, an older one without them still works and is turned
over by the admin's ``allow_direct_gets``; reads see the same values and deletions."""

from __future__ import annotations

import pytest
from nats.js import api
from nats.js.errors import KeyNotFoundError

from vpcbus.client import Client
from vpcbus_proto import permissions
from vpcbus_runtime import bus

pytestmark = [pytest.mark.connected]


async def direct(client: Client, bucket: str) -> bool:
    info = await client.js.stream_info(permissions.kv_stream(bucket))
    return bool(info.config.allow_direct)


async def reads(client: Client, bucket: str) -> None:
    """Values, revisions and deletions read back through the bucket ``ensure_bucket`` opens."""
    kv = await bus.ensure_bucket(client.js, bucket)
    first = await kv.put("project.acme.shop", b"1")
    second = await kv.update("project.acme.shop", b"2", last=first)
    entry = await kv.get("project.acme.shop")
    assert (entry.value, entry.revision) == (b"2", second)
    await kv.delete("project.acme.shop")
    with pytest.raises(KeyNotFoundError):
        await kv.get("project.acme.shop")
    with pytest.raises(KeyNotFoundError):
        await kv.get("project.acme.never")


async def test_a_new_bucket_is_read_with_direct_gets(client: Client) -> None:
    await bus.ensure_bucket(client.js, "vpcbus-test-direct-new")
    assert await direct(client, "vpcbus-test-direct-new")
    await reads(client, "vpcbus-test-direct-new")
    assert await bus.allow_direct_gets(client.js, ["vpcbus-test-direct-new"]) == []


async def test_an_older_bucket_keeps_working_until_the_admin_turns_direct_gets_on(
    client: Client,
) -> None:
    bucket = "vpcbus-test-direct-old"
    await client.js.create_key_value(api.KeyValueConfig(bucket=bucket))  # nats-py's default
    assert not await direct(client, bucket)
    await reads(client, bucket)  # ensure_bucket opens it as it is

    changed = await bus.allow_direct_gets(client.js, [bucket, "vpcbus-test-direct-absent"])
    assert changed == [bucket]
    assert await direct(client, bucket)
    await reads(client, bucket)
    assert await bus.allow_direct_gets(client.js, [bucket]) == []
