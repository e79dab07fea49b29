"""Which address a holder gets: the allocation rules of one address space. Pure: no I/O.

A :class:`SpaceView` mirrors one space's slots (an external pool, or a project subnet) as
the address book reads them from KV, and decides; the book then claims the decision with
compare-and-set and applies what the store says. The rules, in order:

1. A holder keeps what it holds (sticky), unless it asks for another static address.
2. A static request gets exactly that address or a :class:`AllocationError` naming the reason.
3. Otherwise the holder gets back the address it released last, if no one took it since
   (a VM that restarts or re-attaches keeps its IP, also after the quarantine).
4. Otherwise the lowest free address.

A released address is *quarantined*: nobody but its last holder gets it before
``quarantine`` seconds have passed (Kube-OVN's delayed reuse), so a stale ARP or DNS entry
never points at a new owner. Reserved addresses (network, broadcast, gateway, excludes) are
never handed out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

from vpcbus_ipam.pools import Pool


@dataclass(frozen=True)
class Slot:
    """One address's record: who holds it, or who held it and when they let go."""

    holder: str
    held: bool
    at: float = 0.0  # epoch seconds: claimed at when held, released at when not
    revision: int = 0


class AllocationError(Exception):
    """The request cannot be met: ``reason`` is a CamelCase reason for statuses."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Counts:
    capacity: int
    in_use: int
    quarantined: int
    available: int


class SpaceView:
    """The slots of one space and the allocation rules over them."""

    def __init__(self, space: Pool) -> None:
        self.space = space
        self.slots: dict[IPv4Address, Slot] = {}
        self._held: dict[str, IPv4Address] = {}  # holder -> held address
        self._last: dict[str, IPv4Address] = {}  # holder -> address it released last
        self._hint = 0  # lowest host offset that may be free
        #: A window ``[_hint, _open)`` the last scans found only held or quarantined
        #: addresses in; until ``_open_until`` (the first of those quarantines to end) a
        #: scan for a holder that released none of them (``_open_holders``) starts at
        #: ``_open``. Without it, every allocation after many releases (a project deleted
        #: per EIP, NICs detached) walked all the quarantined addresses again: quadratic,
        #: IPAM's CPU more than doubled in a bench burst after 200 deletions.
        self._open = 0
        self._open_until = 0.0
        self._open_quarantine = 0.0
        self._open_holders: frozenset[str] = frozenset()

    # -- mirror ---------------------------------------------------------------------------

    def apply(self, ip: IPv4Address, slot: Slot | None) -> None:
        """Record what the store says about ``ip`` (None: the key is gone)."""
        old = self.slots.pop(ip, None)
        if old is not None:
            if self._held.get(old.holder) == ip:
                del self._held[old.holder]
            if self._last.get(old.holder) == ip:
                del self._last[old.holder]
        if slot is None:
            self._freed(ip)
            return
        self.slots[ip] = slot
        if slot.held:
            self._held[slot.holder] = ip
        else:
            self._last[slot.holder] = ip
            self._freed(ip)

    def reconsider(self, ip: IPv4Address) -> None:
        """``ip`` was passed in ``skip`` to a scan but its claim failed: it may be free."""
        self._freed(ip)

    def _freed(self, ip: IPv4Address) -> None:
        offset = self.space.offset(ip)
        if 0 <= offset < self._hint:
            self._hint = offset
        if offset < self._open:
            self._open = max(offset, 0)  # the window ends before it: checked again

    # -- queries --------------------------------------------------------------------------

    def held_by(self, holder: str) -> IPv4Address | None:
        return self._held.get(holder)

    def holders(self) -> dict[str, IPv4Address]:
        return dict(self._held)

    def usable_by(self, ip: IPv4Address, holder: str, now: float, quarantine: float) -> bool:
        """``ip`` is free for ``holder``: unrecorded, or released by it or long enough ago."""
        slot = self.slots.get(ip)
        if slot is None:
            return True
        if slot.held:
            return slot.holder == holder
        return slot.holder == holder or now - slot.at >= quarantine

    def choose(
        self,
        holder: str,
        *,
        static: IPv4Address | None,
        now: float,
        quarantine: float,
        skip: Iterable[IPv4Address] = (),
    ) -> IPv4Address:
        """The address to claim for ``holder`` (rules in the module docstring).

        ``skip``: addresses lost to another writer in this round. Raises :class:`AllocationError`
        (``IPConflict``, ``IPQuarantined``, ``IPOutOfRange``, ``IPReserved``,
        ``NoAvailableIPs``).
        """
        held = self._held.get(holder)
        if static is not None:
            self.check_static(static, holder, now, quarantine)
            return static
        if held is not None and held in self.space.network:
            return held  # (outside: the project's cidrBlock changed; it moves, see the book)
        avoid = set(skip)
        last = self._last.get(holder)
        if (
            last is not None
            and last not in avoid
            and not self.space.reserved(last)  # excluded since it was released
            and self.usable_by(last, holder, now, 0.0)
        ):
            return last
        first_unheld: int | None = None
        start, until, holders = self._hint, float("inf"), set[str]()
        window = (
            self._open > self._hint and now < self._open_until
            and quarantine == self._open_quarantine and holder not in self._open_holders
        )  # fmt: skip
        if window:  # skip what the last scans found taken, and keep what they learnt
            start, until, holders = self._open, self._open_until, set(self._open_holders)
        growing = True  # everything from the hint up to here is held or quarantined
        for ip in self.space.candidates(start):
            slot = self.slots.get(ip)
            unheld = slot is None or not slot.held
            if not window and first_unheld is None and unheld and ip not in avoid:
                # Everything below is held: the next scan may start here. Quarantined
                # addresses stop the hint, since they become free with time alone.
                first_unheld = self.space.offset(ip)
                self._hint = first_unheld
            usable = ip not in avoid and self.usable_by(ip, holder, now, quarantine)
            if growing and (usable or ip in avoid or slot is None or (
                not slot.held and now - slot.at >= quarantine
            )):  # fmt: skip
                growing = False  # free for someone: the window ends before it
                self._open, self._open_until = self.space.offset(ip), until
                self._open_quarantine, self._open_holders = quarantine, frozenset(holders)
            elif growing and slot is not None and not slot.held:
                until = min(until, slot.at + quarantine)
                holders.add(slot.holder)
            if usable:
                return ip
        raise AllocationError(
            "NoAvailableIPs",
            f"{self.space.describe()} has no free address "
            f"({self.counts(now, quarantine).quarantined} quarantined)",
        )

    def check_static(self, ip: IPv4Address, holder: str, now: float, quarantine: float) -> None:
        space = self.space
        if ip not in space.network:
            raise AllocationError("IPOutOfRange", f"{ip} is outside {space.describe()}")
        if space.reserved(ip):
            raise AllocationError("IPReserved", f"{ip} is reserved in {space.describe()}")
        slot = self.slots.get(ip)
        if slot is None or self.usable_by(ip, holder, now, quarantine):
            return
        if slot.held:
            raise AllocationError("IPConflict", f"{ip} is already held by {slot.holder}")
        until = slot.at + quarantine - now
        raise AllocationError(
            "IPQuarantined",
            f"{ip} was released by {slot.holder} and is quarantined for {until:.0f} s more",
        )

    def counts(self, now: float, quarantine: float) -> Counts:
        capacity = self.space.capacity()
        in_use = quarantined = 0
        skip = self._reserved_recorded()  # excluded after it was handed out: counted as reserved
        for ip, slot in self.slots.items():
            if skip and ip in skip:
                continue
            if slot.held:
                in_use += 1
            elif now - slot.at < quarantine:
                quarantined += 1
        return Counts(capacity, in_use, quarantined, max(capacity - in_use - quarantined, 0))

    def _reserved_recorded(self) -> set[IPv4Address]:
        """Recorded addresses that are reserved now. Without exclude ranges only the
        network, broadcast and gateway addresses can be: three lookups, not a scan."""
        space = self.space
        if space.exclude:
            return {ip for ip in self.slots if space.reserved(ip)}
        net = space.network
        special = (net.network_address, net.broadcast_address, space.gateway)
        return {ip for ip in special if ip in self.slots}

    def ranges(self, now: float, quarantine: float) -> tuple[list[str], list[str]]:
        """In-use and available addresses as ``a-b`` ranges (for ``vpcbus get subnet``).

        Interval arithmetic over the recorded slots and the reserved ranges, not a scan of
        the space: a /16 with a few addresses in use costs a few comparisons.
        """
        held = sorted(int(ip) for ip, s in self.slots.items() if s.held)  # ints sort fast
        busy = [
            (int(ip), int(ip)) for ip, s in self.slots.items() if s.held or now - s.at < quarantine
        ]
        free = [
            _span(a, b)
            for a, b in gaps(self.space.host_range(), busy + self.space.reserved_ranges())
        ]
        return [_span(a, b) for a, b in _runs(held)], free


def gaps(whole: tuple[int, int], taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the inclusive range ``whole`` that no ``taken`` range covers."""
    out = []
    cursor, end = whole
    for a, b in sorted(taken):
        if b < cursor:
            continue
        if a > end:
            break
        if a > cursor:
            out.append((cursor, a - 1))
        cursor = max(cursor, b + 1)
    if cursor <= end:
        out.append((cursor, end))
    return out


def collapse(ips: Iterable[IPv4Address]) -> list[str]:
    """Sorted addresses as ``first-last`` runs (a single address stays as it is)."""
    return [_span(first, last) for first, last in _runs(int(ip) for ip in ips)]


def _span(first: int, last: int) -> str:
    if first == last:
        return str(IPv4Address(first))
    return f"{IPv4Address(first)}-{IPv4Address(last)}"


def _runs(ips: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Sorted integers as maximal runs of consecutive values."""
    first = last = None
    for ip in ips:
        if last is not None and ip == last + 1:
            last = ip
            continue
        if first is not None and last is not None:
            yield first, last
        first = last = ip
    if first is not None and last is not None:
        yield first, last
