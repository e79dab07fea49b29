"""The address book: every address a holder gets is claimed in JetStream KV with
compare-and-set, so uniqueness is enforced by the store and not only in this process, and
several IPAM replicas may allocate at once.

Keys in the ``vpcbus-ipam-addresses`` bucket (a *space* is ``pool.<pool>`` for an external
network or ``subnet.<org>.<project>`` for a project subnet):

* ``<space>.<a>.<b>.<c>.<d>`` -> :class:`Holding`: who holds the address, or who released
  it and when (quarantine). Unique per address: created or updated with compare-and-set.
* ``bind.<space>.<holder>``    -> :class:`Binding`: the one address a holder has (and its
  MAC). Unique per holder: created with compare-and-set, so two replicas serving the same
  NIC at once end with one address, not two.
* ``ns.<namespace>``           -> the project key that claimed the backing namespace.

An allocation is valid when both agree. Claiming writes the address first and the binding
second; a crash in between leaves an address held without a binding, which the next
allocation for that holder adopts (or the sweep frees when the holder is gone). Releasing
writes the address first (released, quarantined) and drops the binding second; a binding
left pointing at an address its holder no longer holds is dropped when it is next read.

A watcher mirrors the bucket in memory. ``ready`` is set only once the initial values are
loaded, and nothing is allocated before that: a restarted replica never hands out an
address it has not yet seen taken (Kube-OVN issue #4304).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Collection, Iterable
from ipaddress import IPv4Address

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from vpcbus_ipam.allocator import AllocationError, Slot, SpaceView
from vpcbus_ipam.pools import Pool
from vpcbus_runtime.kvcas import delete_if
from vpcbus_runtime.kvmirror import mirror

BIND = "bind."
NS = "ns."
#: How often one allocation retries after losing compare-and-set races to other replicas.
MAX_ROUNDS = 16


class Holding(BaseModel):
    """The value of an address key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    holder: str
    held: bool = True
    at: float  # epoch seconds: when it was claimed, or released


class Binding(BaseModel):
    """The value of a binding key: the holder's address and MAC."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ip: str
    mac: str = ""
    static: bool = False


#: ``IPv4Address(text)``, memoised: bindings and keys name addresses as text, and a
#: reconcile looks at every NIC of its project.
ip_of = functools.lru_cache(maxsize=1 << 17)(IPv4Address)


def address_key(space: str, ip: IPv4Address) -> str:
    return f"{space}.{ip}"


def binding_key(space: str, holder: str) -> str:
    return f"{BIND}{space}.{holder}"


def namespace_key(namespace: str) -> str:
    return f"{NS}{namespace}"


def holder_project(holder: str) -> str | None:
    """The project key of a ``project/<key>/...`` holder (EIPs, FIPs, services, the gateway);
    None for a NIC's (``vm/...``, ``pod/...``), which lives in its project's own subnet."""
    kind, _, rest = holder.partition("/")
    key, sep, _ = rest.partition("/")
    return key if kind == "project" and sep and key else None


def split_space(rest: str) -> tuple[str, str] | None:
    """``pool.c.1.2.3.4`` -> ("pool.c", "1.2.3.4"); ``subnet.o.p.x`` -> ("subnet.o.p", "x")."""
    parts = rest.split(".")
    width = {"pool": 2, "subnet": 3}.get(parts[0])
    if width is None or len(parts) <= width:
        return None
    return ".".join(parts[:width]), ".".join(parts[width:])


def _satisfies(bound: Binding, static: IPv4Address | None, mac: str | None) -> bool:
    """``bound`` is what a holder asking for ``static`` and ``mac`` should have (sticky)."""
    if static is not None and ip_of(bound.ip) != static:
        return False
    return bound.mac == (mac or bound.mac) and bound.static == (static is not None)


class AddressBook:
    def __init__(self, kv: KeyValue, *, quarantine: float = 60.0) -> None:
        self.kv = kv
        self.quarantine = quarantine
        self.ready = asyncio.Event()
        self._slots: dict[str, dict[IPv4Address, Slot]] = {}  # space -> its address slots
        self._views: dict[str, SpaceView] = {}
        self._binds: dict[str, dict[str, tuple[Binding, int]]] = {}  # space -> holder -> b
        self._claims: dict[str, tuple[str, int]] = {}  # ns key -> (project key, revision)
        #: Addresses being claimed right now by this process, so that concurrent allocations
        #: in one space pick different addresses instead of racing for the lowest.
        self._pending: dict[str, set[IPv4Address]] = {}
        self._task: asyncio.Task[None] | None = None
        #: Change numbers: every binding or address applied bumps ``_changes`` and stamps
        #: the holders it concerns, so a reconcile can tell which NICs changed since its last.
        self._changes = 0
        self._touched: dict[str, dict[str, int]] = {}  # space -> holder -> change number
        self._macs: dict[str, dict[str, str]] = {}  # space -> MAC -> a holder bound with it
        #: space -> holder -> its addresses, and space -> project key -> its ``project/<key>/``
        #: holders with an address or a binding there: a project's sweep of a shared external
        #: pool looks at its own holders, not the whole pool (bench/: at 3,000 projects that
        #: scan was 60 % of IPAM's CPU).
        self._ips: dict[str, dict[str, set[IPv4Address]]] = {}
        self._owned: dict[str, dict[str, set[str]]] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(mirror(self.kv, self._apply, self.ready))
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the mirror ----------------------------------------------------------------------

    def _apply(self, key: str, value: bytes | None, revision: int, op: str | None) -> None:
        gone = op in ("DEL", "PURGE") or not value
        if key.startswith(NS):
            claimed = self._claims.get(key)
            if claimed is not None and revision and claimed[1] >= revision:
                return
            if gone:
                self._claims.pop(key, None)
            else:
                assert value is not None
                self._claims[key] = (value.decode(), revision)
            return
        binding = key.startswith(BIND)
        where = split_space(key.removeprefix(BIND))
        if where is None:
            return
        space, rest = where
        if binding:
            binds = self._binds.setdefault(space, {})
            current_b = binds.get(rest)
            if current_b is not None and revision and current_b[1] >= revision:
                return
            macs = self._macs.setdefault(space, {})
            if current_b is not None and macs.get(current_b[0].mac) == rest:
                del macs[current_b[0].mac]
            if gone:
                binds.pop(rest, None)
            else:
                assert value is not None
                bound = Binding.model_validate_json(value)
                binds[rest] = (bound, revision)
                macs.setdefault(bound.mac, rest)
            self._index(space, rest)
            self._touch(space, rest)
            return
        try:
            ip = ip_of(rest)
        except ValueError:
            return
        slots = self._slots.setdefault(space, {})
        current = slots.get(ip)
        if current is not None and revision and current.revision >= revision:
            return  # the watcher lags behind (or echoes) a write this process applied
        slot = None
        if not gone:
            assert value is not None
            h = Holding.model_validate_json(value)
            slot = Slot(h.holder, h.held, h.at, revision)
            slots[ip] = slot
        else:
            slots.pop(ip, None)
        ips = self._ips.setdefault(space, {})
        if current is not None:
            ips.get(current.holder, set()).discard(ip)
        if slot is not None:
            ips.setdefault(slot.holder, set()).add(ip)
        for changed in {s.holder for s in (current, slot) if s is not None}:
            self._index(space, changed)
            self._touch(space, changed)
        view = self._views.get(space)
        if view is not None:
            view.apply(ip, slot)

    def _index(self, space: str, holder: str) -> None:
        """Keep ``holder`` in its project's set of ``space`` while it has an address or a
        binding there."""
        ips = self._ips.get(space, {})
        if not ips.get(holder, True):
            del ips[holder]
        owner = holder_project(holder)
        if owner is None:
            return
        owned = self._owned.setdefault(space, {})
        if holder in ips or holder in self._binds.get(space, {}):
            owned.setdefault(owner, set()).add(holder)
        elif owner in owned:
            owned[owner].discard(holder)
            if not owned[owner]:
                del owned[owner]

    def _touch(self, space: str, holder: str) -> None:
        self._changes += 1
        self._touched.setdefault(space, {})[holder] = self._changes

    def changes(self) -> int:
        """The current change number (see :meth:`changed_since`)."""
        return self._changes

    def changed_since(self, space: str, holder: str, change: int) -> bool:
        """Whether the holder's binding or an address it held or holds in ``space`` was
        applied after change number ``change``."""
        return self._touched.get(space, {}).get(holder, 0) > change

    def view(self, space: Pool) -> SpaceView:
        """The allocation view of ``space``, (re)built when its definition changed."""
        view = self._views.get(space.prefix)
        if view is None or view.space != space:
            view = SpaceView(space)
            for ip, slot in self._slots.get(space.prefix, {}).items():
                view.apply(ip, slot)
            self._views[space.prefix] = view
        return view

    # -- queries -------------------------------------------------------------------------

    def spaces(self) -> list[str]:
        """Spaces with at least one key (a dropped one stays empty in the mirror)."""
        return sorted(
            {s for s, v in self._slots.items() if v} | {s for s, v in self._binds.items() if v}
        )

    def binding(self, space: str, holder: str) -> Binding | None:
        found = self._binds.get(space, {}).get(holder)
        return found[0] if found is not None else None

    def bindings(self, space: str, holders: Collection[str] | None = None) -> dict[str, Binding]:
        """holder -> binding in ``space`` (only of ``holders`` when given)."""
        binds = self._binds.get(space, {})
        if holders is not None:
            return {h: binds[h][0] for h in holders if h in binds}
        return {h: b for h, (b, _) in binds.items()}

    def project_holders(self, space: str, project_key: str) -> set[str]:
        """The ``project/<key>/...`` holders with an address or a binding in ``space``."""
        return set(self._owned.get(space, {}).get(project_key, ()))

    def mac_user(self, space: str, mac: str) -> str | None:
        """A holder bound with ``mac`` in ``space`` (a MAC should have one)."""
        return self._macs.get(space, {}).get(mac)

    def _slots_of(
        self, space: str, holders: Collection[str] | None
    ) -> Iterable[tuple[IPv4Address, Slot]]:
        slots = self._slots.get(space, {})
        if holders is None:
            return slots.items()
        ips = self._ips.get(space, {})
        return sorted((ip, slots[ip]) for h in holders for ip in ips.get(h, ()) if ip in slots)

    def held(self, space: str, holders: Collection[str] | None = None) -> dict[str, IPv4Address]:
        """holder -> address, for every address held in ``space`` (bound or not); only of
        ``holders`` when given."""
        return {s.holder: ip for ip, s in self._slots_of(space, holders) if s.held}

    def strays(
        self, space: str, holders: Collection[str] | None = None
    ) -> list[tuple[str, IPv4Address, Slot]]:
        """Held addresses that are not their holder's bound one (a crash or a lost race
        between claim and binding left them): (holder, address, slot); only of ``holders``
        when given."""
        binds = self._binds.get(space, {})
        out = []
        for ip, slot in self._slots_of(space, holders):
            bound = binds.get(slot.holder)
            if slot.held and bound is not None and ip_of(bound[0].ip) != ip:
                out.append((slot.holder, ip, slot))
        return out

    async def release_stray(self, space: Pool, holder: str, ip: IPv4Address) -> None:
        """Release one stray address (see :meth:`strays`) into quarantine."""
        await self._release_address(self.view(space), ip, holder)

    def slots(self, space: str) -> dict[IPv4Address, Slot]:
        return dict(self._slots.get(space, {}))

    def slot(self, space: str, ip: IPv4Address) -> Slot | None:
        return self._slots.get(space, {}).get(ip)

    def has_space(self, space: str) -> bool:
        """``space`` has an address or a binding key (see :meth:`spaces`)."""
        return bool(self._slots.get(space)) or bool(self._binds.get(space))

    def claim_of(self, key: str) -> str | None:
        found = self._claims.get(key)
        return found[0] if found is not None else None

    def claims(self) -> dict[str, str]:
        return {k: v for k, (v, _) in self._claims.items()}

    def current(
        self, view: SpaceView, holder: str, *, static: IPv4Address | None, mac: str | None
    ) -> Binding | None:
        """The binding :meth:`ensure` would return at once, without I/O: bound, held by the
        holder, and already what it asks for. None: call :meth:`ensure`."""
        found = self._binds.get(view.space.prefix, {}).get(holder)
        if found is None:
            return None
        bound = found[0]
        slot = view.slots.get(ip_of(bound.ip))
        if slot is None or not slot.held or slot.holder != holder:
            return None
        return bound if _satisfies(bound, static, mac) else None

    # -- allocation ----------------------------------------------------------------------

    async def ensure(
        self,
        space: Pool,
        holder: str,
        *,
        static: IPv4Address | None = None,
        mac: str | None = None,
        default_mac: Callable[[IPv4Address], str] = lambda _ip: "",
    ) -> Binding:
        """The binding of ``holder`` in ``space``, allocating one when it has none.

        Raises :class:`AllocationError` when a static request cannot be met or the space is full.
        """
        await self.ready.wait()
        view = self.view(space)
        lost: set[IPv4Address] = set()
        for _ in range(MAX_ROUNDS):
            found = self._binds.get(space.prefix, {}).get(holder)
            if found is not None:
                bound, revision = found
                slot = view.slots.get(ip_of(bound.ip))
                if slot is None or not slot.held or slot.holder != holder:
                    # Our mirror may lag behind the replica that wrote this binding: ask the
                    # store before calling it stale, or we would drop a valid allocation.
                    await self._refresh(address_key(space.prefix, ip_of(bound.ip)))
                    slot = view.slots.get(ip_of(bound.ip))
                if slot is None or not slot.held or slot.holder != holder:
                    await self._drop_binding(space.prefix, holder, revision)  # stale
                    continue
                if _satisfies(bound, static, mac) and ip_of(bound.ip) in space.network:
                    return bound  # (outside: cidrBlock changed; the NIC moves to the new one)
            now = time.time()
            pending = self._pending.setdefault(space.prefix, set())
            ip = view.choose(
                holder, static=static, now=now, quarantine=self.quarantine, skip=lost | pending
            )
            pending.add(ip)
            try:
                claimed = await self._claim_address(view, ip, holder, now)
            except BaseException:
                view.reconsider(ip)  # not taken after all: a concurrent scan skipped it
                raise
            finally:
                pending.discard(ip)
            if not claimed:
                if static is not None:
                    view.check_static(ip, holder, time.time(), self.quarantine)
                lost.add(ip)
                continue
            kept_mac = found[0].mac if found is not None else ""  # a NIC keeps its MAC
            want = Binding(
                ip=str(ip), mac=mac or kept_mac or default_mac(ip), static=static is not None
            )
            if found is not None and found[0] == want:
                return want
            if not await self._write_binding(space.prefix, holder, want, found):
                # Another replica bound the holder: adopt what it did. Give our claim back
                # only if the winner did not bind that very address (it may have adopted our
                # claim, or we adopted its): freeing it would leave its binding dangling.
                winner = self._binds.get(space.prefix, {}).get(holder)
                if (found is None or IPv4Address(found[0].ip) != ip) and (
                    winner is None or winner[0].ip != str(ip)
                ):
                    await self._give_back(view, ip, holder)
                continue
            if found is not None and IPv4Address(found[0].ip) != ip:
                await self._release_address(view, IPv4Address(found[0].ip), holder)
            return want
        raise AllocationError("AllocationContended", f"gave up after {MAX_ROUNDS} contended rounds")

    async def release(self, space: Pool, holder: str) -> IPv4Address | None:
        """Release what ``holder`` holds in ``space`` into quarantine; returns the address.

        The holder's addresses come from the holder index (``_ips``), not a scan of the space:
        a shared external pool holds every project's gateway EIP, and deleting 5,000 projects
        scanned it once each (bench/: IPAM 27.6 CPU-s, 46 s for the delete burst)."""
        view = self.view(space)
        freed = None
        for ip in sorted(self._ips.get(space.prefix, {}).get(holder, ())):
            slot = view.slots.get(ip)
            if slot is not None and slot.held and slot.holder == holder:
                await self._release_address(view, ip, holder)
                freed = ip
        found = self._binds.get(space.prefix, {}).get(holder)
        if found is not None:
            await self._drop_binding(space.prefix, holder, found[1])
        return freed

    async def drop_space(self, space: str) -> int:
        """Forget a deleted project's subnet: every address and binding key of it."""
        keys = [address_key(space, ip) for ip in self._slots.get(space, {})]
        keys += [binding_key(space, h) for h in self._binds.get(space, {})]
        for key in keys:
            await self.kv.purge(key)
            self._apply(key, None, 0, "PURGE")
        self._slots.pop(space, None)
        self._binds.pop(space, None)
        self._views.pop(space, None)  # a new view: what was known of the old one is void
        self._touched.pop(space, None)
        self._macs.pop(space, None)
        self._ips.pop(space, None)
        self._owned.pop(space, None)
        return len(keys)

    async def expire(self, space: Pool, keep: Callable[[str], bool]) -> list[str]:
        """Purge released addresses whose quarantine ended, unless ``keep(holder)``.

        A released address remembers its last holder, so a NIC that comes back gets it
        again; once nobody can come back for it (its project is gone), the record goes.
        """
        now = time.time()
        gone = []
        for ip, slot in list(self._slots.get(space.prefix, {}).items()):
            if slot.held or now - slot.at < self.quarantine or keep(slot.holder):
                continue
            key = address_key(space.prefix, ip)
            if not await delete_if(self.kv, key, slot.revision):
                await self._refresh(key)
                continue
            await self.kv.purge(key)
            self._apply(key, None, 0, "PURGE")
            gone.append(f"{slot.holder}={ip}")
        return gone

    # -- compare-and-set writes ----------------------------------------------------------

    async def _claim_address(
        self, view: SpaceView, ip: IPv4Address, holder: str, now: float
    ) -> bool:
        slot = view.slots.get(ip)
        if slot is not None and slot.held and slot.holder == holder:
            return True  # an earlier claim that a crash left unbound: adopt it
        key = address_key(view.space.prefix, ip)
        value = Holding(holder=holder, at=now).model_dump_json().encode()
        try:
            if slot is None:
                revision = await self.kv.create(key, value)
            else:
                revision = await self.kv.update(key, value, last=slot.revision)
        except KeyWrongLastSequenceError:
            await self._refresh(key)
            return False
        self._apply(key, value, revision, "PUT")
        return True

    async def _release_address(self, view: SpaceView, ip: IPv4Address, holder: str) -> None:
        await self._set_released(view, ip, holder, time.time())

    async def _give_back(self, view: SpaceView, ip: IPv4Address, holder: str) -> None:
        """Undo a claim nobody saw (its binding lost): free at once, no quarantine."""
        await self._set_released(view, ip, holder, 0.0)

    async def _set_released(self, view: SpaceView, ip: IPv4Address, holder: str, at: float) -> None:
        key = address_key(view.space.prefix, ip)
        for _ in range(MAX_ROUNDS):
            slot = view.slots.get(ip)
            if slot is None or not slot.held or slot.holder != holder:
                return
            value = Holding(holder=holder, held=False, at=at).model_dump_json().encode()
            try:
                revision = await self.kv.update(key, value, last=slot.revision)
            except KeyWrongLastSequenceError:
                await self._refresh(key)
                continue
            self._apply(key, value, revision, "PUT")
            return

    async def _write_binding(
        self, space: str, holder: str, want: Binding, found: tuple[Binding, int] | None
    ) -> bool:
        key = binding_key(space, holder)
        value = want.model_dump_json().encode()
        try:
            if found is None:
                revision = await self.kv.create(key, value)
            else:
                revision = await self.kv.update(key, value, last=found[1])
        except KeyWrongLastSequenceError:
            await self._refresh(key)
            return False
        self._apply(key, value, revision, "PUT")
        return True

    async def _drop_binding(self, space: str, holder: str, revision: int) -> None:
        key = binding_key(space, holder)
        if not await delete_if(self.kv, key, revision):
            await self._refresh(key)
            return
        self._apply(key, None, 0, "DEL")

    async def _refresh(self, key: str) -> None:
        """Another writer won a race on ``key``: read it rather than wait for the watcher."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:  # also KeyDeletedError, its subclass
            self._apply(key, None, 0, "DEL")
            return
        self._apply(key, entry.value, entry.revision or 0, entry.operation or "PUT")

    # -- namespace claims ----------------------------------------------------------------

    async def claim(self, key: str, holder: str) -> str:
        """Claim a unique name (``ns.<namespace>``); returns the holder that has it."""
        await self.ready.wait()
        current = self._claims.get(key)
        if current is not None:
            return current[0]
        try:
            revision = await self.kv.create(key, holder.encode())
        except KeyWrongLastSequenceError:
            await self._refresh(key)
            return self.claim_of(key) or ""
        self._apply(key, holder.encode(), revision, "PUT")
        return holder

    async def unclaim(self, key: str, holder: str) -> None:
        current = self._claims.get(key)
        if current is None or current[0] != holder:
            return
        if not await delete_if(self.kv, key, current[1]):
            return
        await self.kv.purge(key)
        self._apply(key, None, 0, "PURGE")
