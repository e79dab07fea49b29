"""The address book: every allocated external address is one KV key, created with
compare-and-set, so uniqueness is enforced by the store and not only in this process.

Keys in the ``vpcbus-ipam-addresses`` bucket:

* ``pool.<pool>.<a>.<b>.<c>.<d>`` -> :class:`Holding` (which owner holds the address)
* ``ns.<namespace>``               -> the project key that claimed the backing namespace

A watcher keeps an in-memory index of the bucket. ``ready`` is set only once the initial
values are loaded, and nothing is allocated before that: a restarted replica never hands
out an address it has not yet seen taken (Kube-OVN issue #4304).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from ipaddress import IPv4Address

import structlog
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from vpcbus_ipam.pools import Pool

log = structlog.get_logger()


class Holding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    holder: str
    pool: str
    ip: str
    allocated_at: datetime


def address_key(pool: str, ip: IPv4Address) -> str:
    return f"pool.{pool}.{ip}"


def namespace_key(namespace: str) -> str:
    return f"ns.{namespace}"


class AddressBook:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.ready = asyncio.Event()
        self._by_key: dict[str, tuple[str, int]] = {}  # key -> (holder, revision)
        self._by_holder: dict[str, str] = {}  # holder -> key
        self._hint: dict[str, int] = {}  # pool -> lowest offset that may be free
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self.kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self.ready.set()
                        continue
                    self._apply(entry.key, entry.value, entry.revision or 0, entry.operation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("address watch restarting", error=repr(exc))
                await asyncio.sleep(0.5)

    def _apply(self, key: str, value: bytes | None, revision: int, op: str | None) -> None:
        old = self._by_key.pop(key, None)
        if old is not None and self._by_holder.get(old[0]) == key:
            del self._by_holder[old[0]]
        if op in ("DEL", "PURGE") or not value:
            self._freed(key)
            return
        holder = (
            Holding.model_validate_json(value).holder
            if key.startswith("pool.")
            else (value.decode())
        )
        self._by_key[key] = (holder, revision)
        self._by_holder[holder] = key

    def _freed(self, key: str) -> None:
        parts = key.split(".", 2)
        if len(parts) == 3 and parts[0] == "pool":
            self._hint[parts[1]] = 0

    # -- queries -------------------------------------------------------------------------

    def held_by(self, holder: str) -> tuple[str, IPv4Address] | None:
        """(pool, ip) that ``holder`` holds, or None."""
        key = self._by_holder.get(holder)
        if key is None or not key.startswith("pool."):
            return None
        _, pool, ip = key.split(".", 2)
        return pool, IPv4Address(ip)

    def holders(self) -> dict[str, str]:
        return {k: h for k, (h, _) in self._by_key.items()}

    def in_use(self, pool: str) -> int:
        return sum(1 for k in self._by_key if k.startswith(f"pool.{pool}."))

    # -- writes --------------------------------------------------------------------------

    async def allocate(self, pool: Pool, holder: str) -> IPv4Address | None:
        """The address ``holder`` already has in ``pool`` (sticky) or the lowest free one."""
        await self.ready.wait()
        held = self.held_by(holder)
        if held is not None and held[0] == pool.name:
            return held[1]
        start = self._hint.get(pool.name, 0)
        for ip in pool.candidates(start):
            key = address_key(pool.name, ip)
            if key in self._by_key:
                continue
            holding = Holding(holder=holder, pool=pool.name, ip=str(ip), allocated_at=now())
            try:
                revision = await self.kv.create(key, holding.model_dump_json().encode())
            except KeyWrongLastSequenceError:
                self._by_key.setdefault(key, ("<unknown>", 0))  # taken elsewhere
                continue
            self._apply(key, holding.model_dump_json().encode(), revision, "PUT")
            self._hint[pool.name] = pool.offset(ip) + 1
            return ip
        self._hint[pool.name] = 0
        return None

    async def release(self, holder: str) -> str | None:
        """Free what ``holder`` holds; returns the freed key, None when it held nothing."""
        key = self._by_holder.get(holder)
        if key is None:
            return None
        _, revision = self._by_key[key]
        try:
            await self.kv.delete(key, last=revision)
        except KeyWrongLastSequenceError:
            return None  # rewritten meanwhile; the watcher will tell us the new state
        await self.kv.purge(key)
        self._apply(key, None, 0, "PURGE")
        return key

    async def claim(self, key: str, holder: str) -> str:
        """Claim a unique name (``ns.<namespace>``); returns the holder that has it."""
        await self.ready.wait()
        current = self._by_key.get(key)
        if current is not None:
            return current[0]
        try:
            revision = await self.kv.create(key, holder.encode())
        except KeyWrongLastSequenceError:
            entry = await self.kv.get(key)
            return (entry.value or b"").decode()
        self._apply(key, holder.encode(), revision, "PUT")
        return holder

    async def unclaim(self, key: str, holder: str) -> None:
        current = self._by_key.get(key)
        if current is None or current[0] != holder:
            return
        try:
            await self.kv.delete(key, last=current[1])
        except KeyWrongLastSequenceError:
            return
        await self.kv.purge(key)
        self._apply(key, None, 0, "PURGE")


def now() -> datetime:
    return datetime.now(UTC)
