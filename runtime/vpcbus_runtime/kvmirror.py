"""Mirroring a KV bucket (or part of it) into memory with a watcher that never gives up.

Used by the member index and by IPAM's address book: ``apply`` gets every key's value as
it changes; ``ready`` is set once the initial values have been delivered, so a caller can
refuse to act on a view it has not finished loading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from nats.js.kv import KeyValue

Apply = Callable[[str, bytes | None, int, str | None], None]

log = structlog.get_logger()


async def mirror(kv: KeyValue, apply: Apply, ready: asyncio.Event, *, keys: str = ">") -> None:
    """Feed ``apply(key, value, revision, operation)``; restarts the watch after errors."""
    while True:
        try:
            watcher = await kv.watch(keys)
            async for entry in watcher:
                if entry is None:
                    ready.set()
                    continue
                apply(entry.key, entry.value, entry.revision or 0, entry.operation)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("kv watch restarting", keys=keys, error=repr(exc))
            await asyncio.sleep(0.5)
