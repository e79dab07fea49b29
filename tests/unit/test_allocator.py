"""The pure allocation rules of one address space (vpcbus_ipam.allocator.SpaceView).

A hypothesis state machine drives a view through random claims, static requests,
releases, expiries and the passing of time, applying every choice to the view the way the
address book does (``view.apply(ip, Slot(...))``), and checks each answer against a
brute-force model written from the rules in the allocator's docstring.
"""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.unit.ipam_fixtures import ip, pool
from vpcbus_ipam.allocator import AllocationError, Counts, Slot, SpaceView, collapse, gaps
from vpcbus_ipam.pools import Pool, Range

HOLDERS = st.sampled_from([f"h{i}" for i in range(6)])


@st.composite
def spaces(draw: st.DrawFn) -> Pool:
    """Small spaces (so they fill up), with a gateway anywhere and excludes that may
    overlap the gateway, each other or the network's edges."""
    network = IPv4Network(f"10.9.0.0/{draw(st.integers(28, 30))}")
    size, base = network.num_addresses, int(network.network_address)
    gateway = IPv4Address(base + draw(st.integers(1, size - 2)))
    exclude = []
    for _ in range(draw(st.integers(0, 2))):
        first = draw(st.integers(0, size + 1))
        last = draw(st.integers(first, first + 3))
        exclude.append(Range(IPv4Address(base + first), IPv4Address(base + last)))
    return Pool(
        "p", network, gateway, tuple(exclude), kind=draw(st.sampled_from(["pool", "subnet"]))
    )


def is_reserved(space: Pool, addr: IPv4Address) -> bool:
    """Reserved, written independently of ``Pool.reserved``."""
    net = space.network
    return (
        addr in (net.network_address, net.broadcast_address, space.gateway)
        or any(r.first <= addr <= r.last for r in space.exclude)
        or addr not in net
    )


def expand(ranges: list[str]) -> list[IPv4Address]:
    out = []
    for text in ranges:
        first, _, last = text.partition("-")
        out += [IPv4Address(i) for i in range(int(ip(first)), int(ip(last or first)) + 1)]
    return out


class SpaceMachine(RuleBasedStateMachine):
    """The view under test next to a model: address -> (holder, held, at)."""

    def __init__(self) -> None:
        super().__init__()
        self.space = pool()
        self.view = SpaceView(self.space)
        self.quarantine = 0.0
        self.now = 1000.0
        self.model: dict[IPv4Address, tuple[str, bool, float]] = {}
        self.last: dict[str, IPv4Address] = {}  # holder -> what it released last
        self.revision = 0

    @initialize(space=spaces(), quarantine=st.sampled_from([0.0, 10.0]))
    def setup(self, space: Pool, quarantine: float) -> None:
        self.space, self.view, self.quarantine = space, SpaceView(space), quarantine

    # -- the model ------------------------------------------------------------------------

    def hosts(self) -> list[IPv4Address]:
        net = self.space.network
        return [a for a in net if not is_reserved(self.space, a)]

    def held_by(self, holder: str) -> IPv4Address | None:
        return next((a for a, (h, held, _) in self.model.items() if held and h == holder), None)

    def quarantined(self, addr: IPv4Address) -> bool:
        _, held, at = self.model[addr]
        return not held and self.now - at < self.quarantine

    def usable_by(self, addr: IPv4Address, holder: str) -> bool:
        if addr not in self.model:
            return True
        h, held, _ = self.model[addr]
        return h == holder if held else h == holder or not self.quarantined(addr)

    def expected(self, holder: str) -> IPv4Address | None:
        held = self.held_by(holder)
        if held is not None:
            return held
        last = self.last.get(holder)
        if last is not None and self.model.get(last, ("", True, 0.0))[:2] == (holder, False):
            return last  # sticky, whatever the quarantine
        return next((a for a in self.hosts() if self.usable_by(a, holder)), None)

    def static_problem(self, addr: IPv4Address, holder: str) -> str | None:
        if addr not in self.space.network:
            return "IPOutOfRange"
        if is_reserved(self.space, addr):
            return "IPReserved"
        if self.usable_by(addr, holder):
            return None
        return "IPConflict" if self.model[addr][1] else "IPQuarantined"

    def record(self, addr: IPv4Address, holder: str, held: bool) -> None:
        """What the book does after the store accepted a write."""
        self.revision += 1
        self.view.apply(addr, Slot(holder, held, self.now, self.revision))
        self.model[addr] = (holder, held, self.now)
        if not held:
            self.last[holder] = addr

    # -- rules ----------------------------------------------------------------------------

    def choose(self, holder: str, static: IPv4Address | None) -> IPv4Address | AllocationError:
        try:
            return self.view.choose(holder, static=static, now=self.now, quarantine=self.quarantine)
        except AllocationError as exc:
            return exc

    @rule(holder=HOLDERS)
    def claim(self, holder: str) -> None:
        want = self.expected(holder)
        got = self.choose(holder, None)
        if isinstance(got, AllocationError):
            assert (got.reason, want) == ("NoAvailableIPs", None)
            assert self.space.describe() in got.message
            return
        assert got == want
        assert not is_reserved(self.space, got)
        assert self.usable_by(got, holder)  # never somebody else's, nor quarantined for them
        if self.held_by(holder) != got:
            self.record(got, holder, held=True)

    @rule(holder=HOLDERS, offset=st.integers(0, 40))
    def static(self, holder: str, offset: int) -> None:
        net = self.space.network  # from just below to just above it
        addr = net.network_address + offset % (net.num_addresses + 2) - 1
        problem = self.static_problem(addr, holder)
        got = self.choose(holder, addr)
        if isinstance(got, AllocationError):
            assert got.reason == problem
            assert str(addr) in got.message
            if problem in ("IPConflict", "IPQuarantined"):
                assert f" by {self.model[addr][0]}" in got.message  # names the (last) holder
            return
        assert (problem, got) == (None, addr)
        old = self.held_by(holder)
        self.record(addr, holder, held=True)  # the book claims the new address first ...
        if old is not None and old != addr:
            self.record(old, holder, held=False)  # ... then releases the old one

    @rule(holder=HOLDERS)
    def release(self, holder: str) -> None:
        held = self.held_by(holder)
        if held is not None:
            self.record(held, holder, held=False)

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(holder=HOLDERS)
    def expire(self, holder: str) -> None:
        """The book purges a gone holder's released addresses once their quarantine ends."""
        for addr, (h, held, _) in list(self.model.items()):
            if h == holder and not held and not self.quarantined(addr):
                self.view.apply(addr, None)
                del self.model[addr]

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def holders_agree(self) -> None:
        held = {h: a for a, (h, is_held, _) in self.model.items() if is_held}
        assert len(set(held.values())) == len(held)  # one holder per address
        assert self.view.holders() == held
        assert not any(is_reserved(self.space, a) for a in held.values())

    @invariant()
    def accounting_agrees(self) -> None:
        hosts = self.hosts()
        in_use = sorted(a for a, (_, held, _) in self.model.items() if held)
        quarantined = [a for a in self.model if self.quarantined(a)]
        free = [a for a in hosts if a not in in_use and a not in quarantined]
        counts = self.view.counts(self.now, self.quarantine)
        assert counts == Counts(len(hosts), len(in_use), len(quarantined), len(free))
        used_ranges, free_ranges = self.view.ranges(self.now, self.quarantine)
        assert (expand(used_ranges), expand(free_ranges)) == (in_use, free)
        assert (used_ranges, free_ranges) == (collapse(in_use), collapse(free))  # maximal runs


SpaceMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_space_view = SpaceMachine.TestCase


# -- the rules one by one ---------------------------------------------------------------------


def choose(view: SpaceView, holder: str, static: str | None = None, now: float = 100.0) -> str:
    addr = ip(static) if static is not None else None
    return str(view.choose(holder, static=addr, now=now, quarantine=60.0))


def take(view: SpaceView, holder: str, now: float = 100.0) -> str:
    got = choose(view, holder, now=now)
    view.apply(ip(got), Slot(holder, True, now))
    return got


def test_exhaustion_is_an_error_and_recovers_after_release_and_quarantine() -> None:
    view = SpaceView(pool())  # gateway .1: .2 .. .6
    assert [take(view, f"h{i}") for i in range(5)] == [f"10.9.0.{i}" for i in range(2, 7)]
    with pytest.raises(AllocationError) as info:
        choose(view, "late")
    assert info.value.reason == "NoAvailableIPs"
    view.apply(ip("10.9.0.4"), Slot("h2", False, 100.0))
    with pytest.raises(AllocationError) as info:
        choose(view, "late", now=159.0)  # released, but quarantined for everyone else
    assert "1 quarantined" in info.value.message
    assert choose(view, "h2", now=101.0) == "10.9.0.4"  # its holder gets it back at once
    assert take(view, "late", now=160.0) == "10.9.0.4"
    assert view.counts(160.0, 60.0) == Counts(5, 5, 0, 0)


def test_a_quarantined_address_is_found_again_when_its_quarantine_ends() -> None:
    view = SpaceView(pool())
    take(view, "a")
    take(view, "b")
    view.apply(ip("10.9.0.2"), Slot("a", False, 100.0))
    assert take(view, "c", now=101.0) == "10.9.0.4"  # the scan passes .2 (quarantined) ...
    assert take(view, "d", now=161.0) == "10.9.0.2"  # ... and still sees it with time alone


def test_scans_after_many_releases_do_not_walk_the_quarantined_addresses_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 projects deleted (their EIPs quarantined), then new ones: each allocation looks at
    a few addresses, not at the 200 again (it did: quadratic, bench/). When the first of
    those quarantines ends, the scan sees them again."""
    view = SpaceView(pool("10.9.0.0/22"))
    gone = [take(view, f"old{i}") for i in range(200)]
    for i, addr in enumerate(gone):
        view.apply(ip(addr), Slot(f"old{i}", False, 100.0 + i / 100))
    looked = 0
    usable_by = view.usable_by

    def counting(addr: IPv4Address, holder: str, now: float, quarantine: float) -> bool:
        nonlocal looked
        looked += 1
        return usable_by(addr, holder, now, quarantine)

    monkeypatch.setattr(view, "usable_by", counting)
    assert take(view, "new0", now=110.0) == "10.9.0.202"  # past the 200, once
    looked = 0
    new = [take(view, f"new{i}", now=110.0) for i in range(1, 101)]
    assert new == [str(ip("10.9.0.203") + i) for i in range(100)]
    assert looked <= 2 * len(new)
    # .2's quarantine (released at 100.0) ends at 160.0: the lowest free address again.
    assert take(view, "later", now=160.0) == "10.9.0.2"
    # Its old holder released it: its own quarantined address is found below the window.
    view.apply(ip("10.9.0.2"), Slot("later", False, 161.0))
    view.apply(ip("10.9.1.50"), Slot("later", False, 162.0))  # released last, then taken:
    view.apply(ip("10.9.1.50"), Slot("other", True, 162.5))
    assert choose(view, "later", now=163.0) == "10.9.0.2"
    assert choose(view, "someone", now=163.0) == "10.9.0.3"  # quarantined until 160.01


def test_sticky_after_quarantine_even_when_lower_addresses_are_free() -> None:
    view = SpaceView(pool())
    for holder in ("a", "b", "c"):
        take(view, holder)
    view.apply(ip("10.9.0.3"), Slot("b", False, 100.0))
    view.apply(ip("10.9.0.2"), Slot("a", False, 100.0))
    assert choose(view, "b", now=10_000.0) == "10.9.0.3"
    assert choose(view, "new", now=10_000.0) == "10.9.0.2"  # lowest free for a newcomer
    view.apply(ip("10.9.0.3"), Slot("new", True, 10_000.0))
    assert choose(view, "b", now=10_000.0) == "10.9.0.2"  # taken meanwhile: lowest free


@pytest.mark.parametrize(
    ("static", "reason", "named"),
    [
        ("10.9.0.2", "IPConflict", "already held by a"),
        ("10.9.0.3", "IPQuarantined", "released by b and is quarantined for 50 s"),
        ("10.9.0.1", "IPReserved", "reserved in external network p (10.9.0.0/29)"),
        ("10.9.0.0", "IPReserved", "reserved"),
        ("10.9.0.7", "IPReserved", "reserved"),
        ("10.9.0.5", "IPReserved", "reserved"),
        ("10.9.0.8", "IPOutOfRange", "outside external network p (10.9.0.0/29)"),
    ],
)
def test_static_conflicts_say_why(static: str, reason: str, named: str) -> None:
    view = SpaceView(pool("10.9.0.0/29", "10.9.0.1", "10.9.0.5"))
    view.apply(ip("10.9.0.2"), Slot("a", True, 100.0))
    view.apply(ip("10.9.0.3"), Slot("b", False, 100.0))
    with pytest.raises(AllocationError) as info:
        choose(view, "c", static, now=110.0)
    assert info.value.reason == reason
    assert named in info.value.message and static in info.value.message


def test_static_is_granted_to_its_own_holder_and_over_an_ended_quarantine() -> None:
    view = SpaceView(pool())
    view.apply(ip("10.9.0.2"), Slot("a", True, 100.0))
    view.apply(ip("10.9.0.3"), Slot("b", False, 100.0))
    assert choose(view, "a", "10.9.0.2") == "10.9.0.2"
    assert choose(view, "b", "10.9.0.3", now=101.0) == "10.9.0.3"
    assert choose(view, "c", "10.9.0.3", now=160.0) == "10.9.0.3"
    assert choose(view, "a", "10.9.0.6") == "10.9.0.6"  # moving is fine too


def test_skip_avoids_addresses_another_writer_is_claiming() -> None:
    view = SpaceView(pool())
    view.apply(ip("10.9.0.2"), Slot("a", False, 0.0))
    got = view.choose("a", static=None, now=1.0, quarantine=60.0, skip={ip("10.9.0.2")})
    assert got == ip("10.9.0.3")  # not even its own last address when it was lost
    got = view.choose("b", static=None, now=1.0, quarantine=60.0, skip=[ip("10.9.0.3")])
    assert got == ip("10.9.0.4")  # .2 is still quarantined for b


def test_a_released_address_that_became_reserved_is_not_handed_back() -> None:
    """Changing excludes affects new allocations only; coming back is a new allocation."""
    view = SpaceView(pool())
    view.apply(ip("10.9.0.2"), Slot("a", True, 100.0))
    view.apply(ip("10.9.0.3"), Slot("b", False, 100.0))
    narrower = SpaceView(pool("10.9.0.0/29", "10.9.0.1", "10.9.0.2..10.9.0.3"))
    for addr, slot in view.slots.items():
        narrower.apply(addr, slot)
    assert choose(narrower, "a") == "10.9.0.2"  # held: kept
    assert choose(narrower, "b") == "10.9.0.4"
    assert narrower.counts(100.0, 60.0) == Counts(3, 0, 0, 3)  # .2 counts as reserved


# -- range arithmetic -------------------------------------------------------------------------

intervals = st.tuples(st.integers(0, 40), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=200, deadline=None)
@given(intervals, st.lists(intervals, max_size=6))
def test_gaps_are_the_uncovered_parts(whole: tuple[int, int], taken: list[tuple[int, int]]) -> None:
    out = gaps(whole, taken)
    covered = {i for a, b in taken for i in range(a, b + 1)}
    assert [i for a, b in out for i in range(a, b + 1)] == [
        i for i in range(whole[0], whole[1] + 1) if i not in covered
    ]
    assert all(a <= b for a, b in out)
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(out))  # maximal


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 40)))
def test_collapse_writes_sorted_addresses_as_maximal_runs(offsets: set[int]) -> None:
    addrs = [IPv4Address(int(ip("10.9.0.0")) + i) for i in sorted(offsets)]
    runs = collapse(addrs)
    assert expand(runs) == addrs
    assert all("-" not in r or r.split("-")[0] != r.split("-")[1] for r in runs)
    ends = [ip(r.split("-")[-1]) for r in runs]
    starts = [ip(r.split("-")[0]) for r in runs]
    assert all(int(b) + 1 < int(c) for b, c in zip(ends, starts[1:], strict=False))


def test_ranges_of_a_busy_space() -> None:
    view = SpaceView(pool("10.9.0.0/28", "10.9.0.1", "10.9.0.9..10.9.0.10"))
    for n in (2, 3, 4, 7):
        view.apply(ip(f"10.9.0.{n}"), Slot(f"h{n}", True, 0.0))
    view.apply(ip("10.9.0.5"), Slot("old", False, 50.0))  # quarantined until 110
    assert view.ranges(100.0, 60.0) == (
        ["10.9.0.2-10.9.0.4", "10.9.0.7"],
        ["10.9.0.6", "10.9.0.8", "10.9.0.11-10.9.0.14"],
    )
    assert view.ranges(110.0, 60.0)[1][0] == "10.9.0.5-10.9.0.6"
