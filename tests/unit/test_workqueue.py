"""The per-key work queue: coalescing, parallelism across keys, delays, errors, stop; and
the controller's retry backoff."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from vpcbus_runtime.controller import MAX_BACKOFF, backoff
from vpcbus_runtime.workqueue import WorkQueue

#: Upper bound for anything that should happen "now"; generous so a loaded CI never flakes.
SOON = 5.0


class Recorder:
    """A handler that records runs, can be held at a gate, and can be told to fail."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.started: dict[str, asyncio.Event] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.running: Counter[str] = Counter()
        self.max_running: Counter[str] = Counter()
        self.concurrent = 0
        self.max_concurrent = 0
        self.fail: dict[str, BaseException] = {}
        self.times: list[float] = []
        self.ended = asyncio.Event()  # set whenever a run ends
        self.ran = asyncio.Event()  # set whenever a run starts

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    def began(self, key: str) -> asyncio.Event:
        return self.started.setdefault(key, asyncio.Event())

    async def __call__(self, key: str) -> int:
        self.runs.append(key)
        self.times.append(asyncio.get_running_loop().time())
        self.running[key] += 1
        self.concurrent += 1
        self.max_running[key] = max(self.max_running[key], self.running[key])
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.began(key).set()
        self.ran.set()
        try:
            await asyncio.sleep(0)  # a real handler awaits something
            if key in self.gates:
                await self.gates[key].wait()
            if key in self.fail:
                raise self.fail[key]
            return self.runs.count(key)
        finally:
            self.running[key] -= 1
            self.concurrent -= 1
            self.ended.set()

    async def wait_runs(self, count: int) -> None:
        async with asyncio.timeout(SOON):
            while len(self.runs) < count:
                self.ran.clear()
                await self.ran.wait()


@pytest.fixture
def handler() -> Recorder:
    return Recorder()


@pytest.fixture
async def queue(handler: Recorder) -> AsyncIterator[WorkQueue[int]]:
    q: WorkQueue[int] = WorkQueue(handler, workers=4)
    yield q
    await q.stop()


async def idle(q: WorkQueue[int], handler: Recorder) -> None:
    """Wait until nothing is queued or running (bounded)."""
    async with asyncio.timeout(SOON):
        while len(q) or handler.concurrent:
            handler.ended.clear()
            await handler.ended.wait()
    await asyncio.sleep(0.02)  # and nothing more starts


async def test_repeated_adds_of_a_queued_key_coalesce(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    for _ in range(10):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    queue.start()
    await idle(queue, handler)
    assert sorted(handler.runs) == ["a", "b"]


async def test_adds_while_running_cause_exactly_one_more_run(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    gate = handler.gate("a")
    queue.start()
    queue.add("a")
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    for _ in range(10):
        queue.add("a")
    assert len(queue) == 0  # not queued twice while it runs
    gate.set()
    await idle(queue, handler)
    assert handler.runs == ["a", "a"]
    assert handler.max_running["a"] == 1  # never two runs of one key at once


async def test_different_keys_run_concurrently(handler: Recorder) -> None:
    both = asyncio.Barrier(2)

    async def meet(key: str) -> int:
        async with asyncio.timeout(SOON):  # deadlocks (-> fails) if run one after the other
            await both.wait()
        return await handler(key)

    q: WorkQueue[int] = WorkQueue(meet, workers=2)
    q.start()
    try:
        async with asyncio.timeout(SOON):
            assert list(await asyncio.gather(q.run_now("a"), q.run_now("b"))) == [1, 1]
    finally:
        await q.stop()


async def test_one_key_is_never_run_concurrently_even_with_many_workers(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    queue.start()
    for _ in range(5):
        for key in "abc":
            queue.add(key)
            await asyncio.sleep(0)
    await idle(queue, handler)
    assert set(handler.runs) == {"a", "b", "c"}
    assert all(handler.max_running[k] == 1 for k in "abc")


async def test_run_now_returns_the_outcome_of_a_run_that_starts_after_the_call(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    gate = handler.gate("a")
    queue.start()
    queue.add("a")
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    # run 1 is in progress; a waiter now must see run 2, not run 1's result
    waiter = asyncio.create_task(queue.run_now("a"))
    await asyncio.sleep(0.01)
    gate.set()
    async with asyncio.timeout(SOON):
        assert await waiter == 2
    assert handler.runs == ["a", "a"]


async def test_waiters_of_one_run_share_its_result(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    waiters = [asyncio.create_task(queue.run_now("a")) for _ in range(3)]
    await asyncio.sleep(0)
    queue.start()
    async with asyncio.timeout(SOON):
        assert await asyncio.gather(*waiters) == [1, 1, 1]
    assert handler.runs == ["a"]


async def test_errors_reach_the_waiters_and_the_queue_goes_on(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    handler.fail["a"] = ValueError("boom")
    queue.start()
    with pytest.raises(ValueError, match="boom"):
        async with asyncio.timeout(SOON):
            await queue.run_now("a")
    del handler.fail["a"]
    async with asyncio.timeout(SOON):
        assert await queue.run_now("a") == 2  # the worker survived
        assert await queue.run_now("b") == 1


async def test_add_after_delays_the_run(queue: WorkQueue[int], handler: Recorder) -> None:
    queue.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    queue.add_after("a", 0.2)
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    assert handler.times[0] - t0 >= 0.19
    await idle(queue, handler)
    assert handler.runs == ["a"]


async def test_an_earlier_add_after_wins_and_a_later_one_does_not_postpone(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    queue.start()
    t0 = asyncio.get_running_loop().time()
    queue.add_after("a", 5.0)
    queue.add_after("a", 0.1)  # sooner: replaces the 5 s timer
    queue.add_after("a", 3.0)  # later: ignored
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    assert 0.09 <= handler.times[0] - t0 < 2.5  # the 0.1 s timer, not the 3 s or 5 s one
    await asyncio.sleep(0.2)
    assert handler.runs == ["a"]  # the cancelled and ignored timers never fire


async def test_add_runs_now_and_cancels_a_pending_timer(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    queue.start()
    queue.add_after("a", 0.15)
    queue.add("a")
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    await asyncio.sleep(0.3)
    assert handler.runs == ["a"]


async def test_add_after_while_running_reruns_after_the_delay(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    gate = handler.gate("a")
    queue.start()
    queue.add("a")
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    queue.add_after("a", 0.1)
    gate.set()
    await handler.wait_runs(2)
    assert handler.times[1] - handler.times[0] >= 0.09


async def test_stop_cancels_running_and_queued_waiters_and_timers(handler: Recorder) -> None:
    handler.gate("a")  # never opened: run of "a" hangs
    q: WorkQueue[int] = WorkQueue(handler, workers=1)
    q.start()
    running = asyncio.create_task(q.run_now("a"))
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    queued = asyncio.create_task(q.run_now("b"))  # the only worker is busy
    again = asyncio.create_task(q.run_now("a"))  # waits for a second run of "a"
    q.add_after("c", 0.05)
    await asyncio.sleep(0)
    async with asyncio.timeout(SOON):
        await q.stop()
    done, _ = await asyncio.wait([running, queued, again], timeout=SOON)
    assert len(done) == 3, "stop() left a waiter hanging"
    assert all(task.cancelled() for task in done)
    queued_at_stop = len(q)
    await asyncio.sleep(0.1)
    assert handler.runs == ["a"]  # nothing ran after stop
    assert len(q) == queued_at_stop  # and the cancelled timer did not queue "c"


def test_retry_backoff_doubles_from_half_a_second_up_to_a_minute() -> None:
    delays = [backoff(a) for a in range(1, 40)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert all(b == min(2 * a, MAX_BACKOFF) for a, b in itertools.pairwise(delays))
    assert max(delays) == MAX_BACKOFF == 60.0
    assert backoff(0) == backoff(1)  # a first delivery counted as 0 is not faster


async def test_background_keys_wait_for_every_front_key(handler: Recorder) -> None:
    q: WorkQueue[int] = WorkQueue(handler, workers=1)
    q.start()
    try:
        handler.gate("busy")
        q.add("busy")
        await asyncio.wait_for(handler.began("busy").wait(), SOON)
        for key in ("r1", "r2", "r3"):  # a resync
            q.add(key, background=True)
        q.add("event1")
        q.add("event2")
        assert q.background() == 3  # what a resync waits for before its next period
        handler.gate("busy").set()
        await idle(q, handler)
        assert handler.runs == ["busy", "event1", "event2", "r1", "r2", "r3"]
        assert q.background() == 0
    finally:
        await q.stop()


async def test_a_background_key_added_again_moves_to_the_front_and_runs_once(
    handler: Recorder,
) -> None:
    q: WorkQueue[int] = WorkQueue(handler, workers=1)
    q.start()
    try:
        handler.gate("busy")
        q.add("busy")
        await asyncio.wait_for(handler.began("busy").wait(), SOON)
        for key in ("r1", "r2", "r3"):
            q.add(key, background=True)
        waiter = asyncio.create_task(q.run_now("r3"))  # an event for a key the resync queued
        q.add("r1", background=True)  # coalesced: still queued once
        await asyncio.sleep(0)
        assert len(q) == 3
        assert q.background() == 2  # r3 is front-lane work now
        handler.gate("busy").set()
        assert await asyncio.wait_for(waiter, SOON) == 1
        await idle(q, handler)
        assert handler.runs == ["busy", "r3", "r1", "r2"]
    finally:
        await q.stop()


async def test_background_work_leaves_most_workers_to_the_front_lane(handler: Recorder) -> None:
    q: WorkQueue[int] = WorkQueue(handler, workers=4)  # at most one background run at a time
    q.start()
    try:
        for key in ("r1", "r2", "r3"):
            handler.gate(key)
            q.add(key, background=True)
        await asyncio.wait_for(handler.began("r1").wait(), SOON)
        await asyncio.sleep(0.05)
        assert handler.runs == ["r1"]  # r2 and r3 wait although three workers are idle
        assert q.background() == 3  # one running, two queued
        drained = asyncio.create_task(q.drained())
        assert await asyncio.wait_for(q.run_now("event"), SOON) == 1  # served meanwhile
        assert not drained.done()
        for key in ("r1", "r2", "r3"):
            handler.gate(key).set()
        await idle(q, handler)
        assert handler.runs == ["r1", "event", "r2", "r3"]
        await asyncio.wait_for(drained, SOON)  # what the next resync waits for
        assert handler.max_concurrent == 2
    finally:
        await q.stop()


# -- pacing -------------------------------------------------------------------------------


class Slow(Recorder):
    """A handler whose runs take ``seconds``; ``begun`` holds when each run began."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.begun: list[float] = []

    async def __call__(self, key: str) -> int:
        self.begun.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.seconds)
        return await super().__call__(key)


#: Runs take 0.1 s and the pace makes the pause after a disturbed run 1 s: "at once" is
#: then told from "after the pause" with wide margins on a loaded machine.
RUN, PACE, PAUSE = 0.1, 10.0, 1.0


async def test_a_paced_key_dirtied_while_running_waits_and_takes_the_adds_in_one_run() -> None:
    handler = Slow(RUN)
    q: WorkQueue[int] = WorkQueue(handler, workers=2, pace=PACE, max_pause=5.0)
    q.start()
    try:
        loop = asyncio.get_running_loop()
        asked = loop.time()
        q.add("a")  # idle: runs at once
        await asyncio.sleep(RUN / 2)
        q.add("a")  # while it runs: one more run, after the pause
        await handler.wait_runs(1)
        first_end = loop.time()
        for _ in range(5):
            q.add("a")  # during the pause: the same run
            await asyncio.sleep(0.02)
        assert len(q) == 1  # the paused key counts as queued
        async with asyncio.timeout(SOON):
            await handler.wait_runs(2)
        await idle(q, handler)
    finally:
        await q.stop()
    assert handler.runs == ["a", "a"]
    assert handler.begun[0] - asked < PAUSE / 2  # the idle key did not wait
    assert handler.begun[1] - first_end >= PAUSE * 0.9  # pace x the first run's duration


async def test_the_pause_is_capped_and_other_keys_are_not_held_up() -> None:
    handler = Slow(RUN)
    q: WorkQueue[int] = WorkQueue(handler, workers=2, pace=1000.0, max_pause=PAUSE)
    q.start()
    try:
        q.add("a")
        await asyncio.sleep(RUN / 2)
        q.add("a")  # paused for min(1000 x 0.1 s, 1 s)
        await handler.wait_runs(1)
        first_end = asyncio.get_running_loop().time()
        q.add("b")  # another key runs at once
        await handler.wait_runs(2)
        assert handler.runs == ["a", "b"]
        async with asyncio.timeout(SOON):
            await handler.wait_runs(3)
    finally:
        await q.stop()
    assert handler.runs == ["a", "b", "a"]
    assert handler.begun[1] - first_end < PAUSE / 2
    assert PAUSE * 0.9 <= handler.begun[2] - first_end < SOON  # capped: not 100 s


async def test_a_key_added_again_right_after_its_run_waits_and_one_idle_longer_does_not() -> None:
    handler = Slow(RUN)
    q: WorkQueue[int] = WorkQueue(handler, workers=1, pace=PACE)
    q.start()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(SOON):
            await q.run_now("a")
            soon_after = loop.time()
            await q.run_now("a")  # within its pause: waits for it
            await asyncio.sleep(PAUSE * 1.1)  # idle for longer than the pause
            later = loop.time()
            await q.run_now("a")
    finally:
        await q.stop()
    assert handler.begun[1] - soon_after >= PAUSE * 0.8
    assert handler.begun[2] - later < PAUSE / 2


async def test_the_remembered_pauses_of_finished_keys_are_pruned() -> None:
    handler = Slow(0.001)
    q: WorkQueue[int] = WorkQueue(handler, workers=4, pace=50.0, max_pause=0.05)
    q.start()
    remembered = []
    try:
        async with asyncio.timeout(SOON * 4):
            for chunk in range(30):
                await asyncio.gather(*(q.run_now(f"k{chunk}.{i}") for i in range(100)))
                remembered.append(len(q._resume))
    finally:
        await q.stop()
    assert max(remembered) > 100  # finished keys' pauses are remembered ...
    assert max(remembered) <= 1024 + 100  # ... but not one entry for every key ever run


async def test_pending_is_true_while_a_key_waits_runs_or_is_due_again(
    queue: WorkQueue[int], handler: Recorder
) -> None:
    assert not queue.pending("a")
    queue.add("a")
    assert queue.pending("a")  # queued
    gate = handler.gate("a")
    queue.start()
    async with asyncio.timeout(SOON):
        await handler.began("a").wait()
    assert queue.pending("a")  # running
    gate.set()
    await idle(queue, handler)
    assert not queue.pending("a")
    queue.add_after("a", 60.0)
    assert queue.pending("a")  # due again later
