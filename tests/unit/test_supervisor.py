"""``vpcbus up``'s supervision of one service (``stack._Service``): a dead service is restarted
with exponential backoff, and one that had run long enough starts over at the shortest delay
(otherwise a few crashes over days would leave every later restart 30 s away)."""

from __future__ import annotations

from pathlib import Path

from vpcbus import stack


class Dead:
    """A process that has exited."""

    returncode = 1

    def poll(self) -> int:
        return 1


class Recorded(stack._Service):
    """A service whose starts are recorded instead of spawned."""

    def __init__(self, logdir: Path) -> None:
        super().__init__("ipam", {}, logdir)
        self.starts: list[float] = []

    def start(self, now: float = 0.0) -> None:
        self.started = now
        self.starts.append(now)
        self.proc = Dead()  # type: ignore[assignment]


def test_backoff_doubles_and_resets_after_a_healthy_run(tmp_path: Path) -> None:
    svc = Recorded(tmp_path)
    svc.start(0.0)
    delays = []
    now = 1.0
    for _ in range(7):  # crash loop: each restart dies at once
        svc.supervise(now)  # notices the death, schedules the restart
        delays.append(svc.next_start - now)
        now = svc.next_start
        svc.supervise(now)  # restarts it
        now += 1.0
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    now += stack.HEALTHY_AFTER  # this time it ran a while before dying
    svc.supervise(now)
    assert svc.next_start - now == 1
