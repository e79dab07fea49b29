"""``NbSession``'s group commit against a real OVN NB ``ovsdb-server``: transactions handed in
while a commit is in flight are committed together, each caller gets its own function's
result, a function that fails fails only its own caller (the others are committed), and a
dry run still writes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from vpcbus_runtime import ovn as nbdb
from vpcbus_runtime.errors import TemporaryError
from vpcbus_runtime.ovn import NbSession, Txn

pytestmark = [pytest.mark.connected]

N = 40


def switch(name: str) -> Any:
    def fn(api: Any, txn: Txn) -> str:
        row = nbdb.insert(api, txn, "Logical_Switch", name=name,
                          external_ids=nbdb.ownership("vpc", f"acme.{name}"))  # fmt: skip
        return f"{name}:{row.uuid}"

    return fn


def broken(api: Any, txn: Txn) -> str:
    raise ValueError("this project's function is wrong")


async def names(nb: NbSession) -> set[str]:
    return set(await nb.read(lambda api: [r.name for r in nbdb.rows(api, "Logical_Switch")]))


async def test_concurrent_transactions_share_commits_and_keep_their_own_results(
    nb: NbSession,
) -> None:
    await nb.transact(switch("gc-warmup"))  # connected before the burst
    before = dict(nb.counters)
    results = await asyncio.gather(*(nb.transact(switch(f"gc-{i}")) for i in range(N)))
    assert [r.split(":")[0] for r in results] == [f"gc-{i}" for i in range(N)]
    assert len({r.split(":")[1] for r in results}) == N  # each its own row
    assert {f"gc-{i}" for i in range(N)} <= await names(nb)
    commits = nb.counters["commits"] - before["commits"]
    assert nb.counters["batched"] - before["batched"] == N
    assert commits < N, f"{N} transactions took {commits} commits: none shared"
    assert nb.counters["batch_fallbacks"] == before["batch_fallbacks"]


async def test_a_failing_function_fails_only_its_caller(nb: NbSession) -> None:
    await nb.transact(switch("gf-warmup"))
    before = dict(nb.counters)
    calls = [nb.transact(switch(f"gf-{i}")) for i in range(10)]
    calls.insert(5, nb.transact(broken))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], TemporaryError)
    assert "this project's function is wrong" in str(failed[0])
    assert isinstance(outcomes[5], TemporaryError)
    assert {f"gf-{i}" for i in range(10)} <= await names(nb)  # the others are committed
    assert nb.counters["batch_fallbacks"] > before["batch_fallbacks"]


async def test_a_dry_run_inside_a_burst_writes_nothing(nb: NbSession) -> None:
    await nb.transact(switch("gd-warmup"))

    async def dry() -> str:
        with nbdb.dry_run() as plan:
            result: str = await nb.transact(switch("gd-dry"))
        assert [c.object for c in plan.changes] == ["Logical_Switch/gd-dry"]
        return result

    out = await asyncio.gather(dry(), *(nb.transact(switch(f"gd-{i}")) for i in range(10)))
    assert out[0].startswith("gd-dry:")
    have = await names(nb)
    assert "gd-dry" not in have and {f"gd-{i}" for i in range(10)} <= have


def slow_switch(name: str) -> Any:
    def fn(api: Any, txn: Txn) -> str:
        time.sleep(0.3)  # holds the IDL thread: the commit is in flight when cancelled
        result: str = switch(name)(api, txn)
        return result

    return fn


@pytest.mark.parametrize("when", ["before it ran", "while committing"])
async def test_a_cancelled_commit_fails_its_callers_instead_of_leaving_them_waiting(
    nb: NbSession, when: str
) -> None:
    """At shutdown the loop cancels the task that commits: the functions it was committing,
    and those waiting for the next commit, get an error (they may or may not have been
    written) instead of a wait forever; the session commits again afterwards."""
    await nb.transact(switch("gx-warmup"))
    first = asyncio.create_task(nb.transact(slow_switch(f"gx-{when}-0")))
    await asyncio.sleep(0)  # the commit task exists, not started
    flusher = nb._flusher
    assert flusher is not None
    if when == "while committing":
        await asyncio.sleep(0.1)  # started: the slow function holds the IDL thread
    else:
        flusher.cancel()
    later = [asyncio.create_task(nb.transact(switch(f"gx-{when}-{i}"))) for i in (1, 2)]
    await asyncio.sleep(0)  # they wait for the next commit
    flusher.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 10)
    assert all(isinstance(o, TemporaryError) for o in outcomes), outcomes
    assert await nb.transact(switch(f"gx-{when}-after")), "the session commits again"
