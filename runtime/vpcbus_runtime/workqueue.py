"""A per-key work queue: one run per key at a time, coalesced, with delayed requeues.

The semantics of controller-runtime's workqueue: a key enqueued while it is queued is not
queued twice; a key enqueued while it runs is run once more afterwards; different keys run
in parallel on ``workers`` tasks. ``run_now`` lets a caller wait for a run that starts
after the call (the event handler waits so it can ack or nak on the outcome).

Two lanes: keys added with ``background=True`` (the periodic resync) run only when no other
key is waiting, and at most a quarter of the workers run them at once, so a new event is
served at once even while a restart resyncs thousands of projects. A background key added
again normally moves to the front lane.

Pacing (``pace`` > 0, off by default): a key added within ``pace`` times the duration of its
last run (at most ``max_pause``) after that run ended waits until then. A key whose run is
expensive and grows with its size (a project with thousands of NICs, reconciled as a whole)
then takes the events of a burst in batches, instead of re-running after every few of them
and spending the CPU on re-runs. A key that was idle for longer still runs at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _KeyState(Generic[T]):
    queued: bool = False
    background: bool = False  # queued in the background lane only
    running: bool = False
    dirty: bool = False
    waiting: list[asyncio.Future[T]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    due: float = 0.0
    resume: float = 0.0  # paced: not run again before this loop time
    paced: bool = False  # waiting for ``resume`` (counts as queued)


class WorkQueue(Generic[T]):
    def __init__(
        self,
        handler: Callable[[str], Awaitable[T]],
        *,
        workers: int,
        pace: float = 0.0,
        max_pause: float = 1.0,
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._pace = pace
        self._max_pause = max_pause
        #: Paced keys that finished and left ``_keys``: when they may run again.
        self._resume: dict[str, float] = {}
        self._resume_pruned = 512
        self._front: deque[str] = deque()
        self._back: deque[str] = deque()
        self._idle: set[asyncio.Future[None]] = set()  # workers waiting for something to run
        self._drain_waiters: set[asyncio.Future[None]] = set()  # see drained()
        self._background_limit = max(1, workers // 4)
        self._background_running = 0
        self._keys: dict[str, _KeyState[T]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for state in self._keys.values():
            if state.timer is not None:
                state.timer.cancel()
            for fut in state.waiting:
                if not fut.done():
                    fut.cancel()

    def __len__(self) -> int:
        return sum(1 for state in self._keys.values() if state.queued or state.paced)

    def background(self) -> int:
        """Keys waiting in the background lane or running from it."""
        queued = sum(1 for state in self._keys.values() if state.queued and state.background)
        return queued + self._background_running

    async def drained(self) -> None:
        """Return once no background work is queued or running."""
        while self.background():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drain_waiters.add(fut)
            await fut

    def _wake_drain_waiters(self) -> None:
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    def pending(self, key: str) -> bool:
        """``key`` is waiting to run, running, or due to run again after a delay."""
        state = self._keys.get(key)
        return state is not None and (
            state.queued or state.paced or state.running or state.timer is not None
        )

    def add(self, key: str, *, background: bool = False) -> None:
        """Run ``key`` soon (coalesced with any pending run); ``background``: when idle."""
        state = self._state(key)
        if not state.running and not state.queued:
            pause = state.resume - asyncio.get_running_loop().time()
            if pause > 0.001:  # paced: the timer adds it when the pause is over
                if state.timer is None or state.due > state.resume:
                    self._arm(key, state, pause)
                state.paced = True
                return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.running:
            state.dirty = True
        elif not state.queued:
            state.queued = True
            state.background = background
            self._push(key, background=background)
        elif state.background and not background:  # promote; the back entry is skipped
            state.background = False
            self._push(key, background=False)
            self._wake_drain_waiters()

    def _push(self, key: str, *, background: bool) -> None:
        (self._back if background else self._front).append(key)
        self._poke()

    def _poke(self) -> None:
        """Wake every idle worker: an entry was pushed or a background run ended."""
        for fut in self._idle:
            if not fut.done():
                fut.set_result(None)
        self._idle.clear()

    def _pop_valid(self, lane: deque[str], *, background: bool) -> str | None:
        """The first entry of ``lane`` still queued in it; stale entries are dropped."""
        while lane:
            key = lane.popleft()
            state = self._keys.get(key)
            if state is not None and state.queued and state.background == background:
                return key
        return None

    async def _next(self) -> tuple[str, bool]:
        """The next key to run and whether it is background work; front lane first."""
        while True:
            key = self._pop_valid(self._front, background=False)
            if key is not None:
                return key, False
            if self._background_running < self._background_limit:
                key = self._pop_valid(self._back, background=True)
                if key is not None:
                    self._background_running += 1
                    return key, True
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.add(fut)
            await fut

    def add_after(self, key: str, delay: float) -> None:
        """Run ``key`` after ``delay`` seconds unless something runs it sooner."""
        loop = asyncio.get_running_loop()
        state = self._state(key)
        due = loop.time() + delay
        if state.queued or (state.timer is not None and state.due <= due):
            return
        self._arm(key, state, delay)

    def _state(self, key: str) -> _KeyState[T]:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState(resume=self._resume.pop(key, 0.0))
        return state

    def _remember_resume(self, key: str, resume: float, now: float) -> None:
        """Keep a finished key's pause beyond its state (pruned of past ones as it grows)."""
        self._resume[key] = resume
        if len(self._resume) > 2 * self._resume_pruned:
            self._resume = {k: t for k, t in self._resume.items() if t > now}
            self._resume_pruned = max(len(self._resume), 512)

    def _arm(self, key: str, state: _KeyState[T], delay: float) -> None:
        loop = asyncio.get_running_loop()
        if state.timer is not None:
            state.timer.cancel()
        state.due = loop.time() + delay
        state.timer = loop.call_later(delay, self._fire, key)

    def _fire(self, key: str) -> None:
        state = self._keys.get(key)
        if state is not None:
            state.timer = None
            state.paced = False
        self.add(key)

    async def run_now(self, key: str) -> T:
        """Enqueue ``key`` and wait for the outcome of a run that starts after this call."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._state(key).waiting.append(fut)
        self.add(key)
        return await fut

    async def _work(self) -> None:
        while True:
            key, background = await self._next()
            state = self._keys[key]
            state.queued = False
            state.background = False
            state.running = True
            waiting, state.waiting = state.waiting, []
            started = asyncio.get_running_loop().time()
            try:
                result = await self._handler(key)
            except asyncio.CancelledError:  # stop(): its waiters are no longer in state
                for fut in waiting:
                    fut.cancel()
                raise
            except BaseException as exc:  # handed to whoever waits; the handler logs
                for fut in waiting:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for fut in waiting:
                    if not fut.done():
                        fut.set_result(result)
            finally:
                if background:
                    self._background_running -= 1
                    self._poke()
                    self._wake_drain_waiters()
                state.running = False
                ended = asyncio.get_running_loop().time()
                state.resume = ended + min(self._pace * (ended - started), self._max_pause)
                if state.dirty or state.waiting:
                    state.dirty = False
                    self.add(key)  # at once, or after the pause (pacing)
                elif state.timer is None:
                    del self._keys[key]
                    if state.resume > ended + 0.001:
                        self._remember_resume(key, state.resume, ended)
