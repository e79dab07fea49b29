"""vpcbus benchmark: the embedded stack against the limits of its own parts (issue 9).

Run by hand, from the repository root::

    .venv/bin/python bench/bench.py                       # sizes 100,1000, 3 repeats
    .venv/bin/python bench/bench.py --sizes 100 --quick   # one short repeat (~1 min)
    .venv/bin/python bench/bench.py --full                # adds the 5,000-project burst
    .venv/bin/python bench/bench.py --sizes 1000 --repeats 1 --profile bench/profile

Every repeat starts a fresh stack in a temporary directory: a nats-server with JetStream
(:class:`vpcbus.embedded.natsd.NatsServer`), OVN central (:class:`vpcbus.embedded.ovn.OvnCentral`)
and the four services as processes (``service_argv``, env ``NATS_URL`` / ``OVN_NB_DB``, as
``vpcbus up`` and the test fixtures start them). Then, per repeat:

1. **raw OVN baseline** for each size N: a separate, empty OVN central; one ovsdbapp
   transaction per project creating what the services create for it (router, switch, two
   router ports, two switch ports, default route, SNAT, DNS row), sequentially, with the
   services' python-ovs tuning (the ratio's baseline); then the same with stock ovsdbapp, for
   comparison with figures taken before that tuning.
2. **burst** of N ``project.created`` (published back to back with :class:`vpcbus.client.Client`):
   time until all N are Ready (all four services Ready at the event's generation, timestamped
   from a core-NATS subscription to ``vpcbus.status.>``), projects/s, p50/p99 publish->Ready,
   RSS (VmRSS/VmHWM from ``/proc``) of each service, CPU seconds of every process of the stack
   during the burst, reconciles per project per service (from ``$SRV.STATS``), and the NATS
   messages per project each service sent and got (nats-server's ``/connz``).
3. **restart recovery** (largest size only, its projects in place, ovn-northd caught up with
   them: idle for 2 s, timed): SIGKILL all four services,
   start them again and publish one new project at once. Measured: until every service answers
   ``$SRV.PING``; until the new project is Ready ("serving again"); until the start-up resync is
   complete, i.e. every service has reconciled at least as many times as it has records and its
   work queue is empty (``$SRV.STATS``); and until the services are quiet (no reconcile for 2 s).
4. **delete burst** of the same N: time until every service reports Deleted (and p50/p99), then
   until the status stream is back to its size before the burst ("gone": tombstones expired
   and statuses purged; ``VPCBUS_TOMBSTONE_SECONDS`` is 5 here).
5. **steady load**: 10 projects/s for 20 s (``--steady-rate``/``--steady-seconds``), p50/p99.
6. **raw JetStream baseline**: ``publish_async`` of M event-sized messages into a file stream
   on the same server while a durable pull consumer fetches (batch 128) and acks each one,
   as the services do; plus sequential ``js.publish`` (what the client does per event).

The vpcbus rate is printed as a ratio to the slower baseline (in practice raw OVN) at the same
N. Results: a table on stdout (median and min..max over repeats) and
``bench/results-<timestamp>.json`` with every repeat's raw figures, the machine and the command.
``--profile DIR`` attaches ``py-spy record`` (``pip install -r bench/requirements.txt``) to each
service during the bursts of the largest size and writes raw stacks plus a hotspot summary
to DIR; timings of a profiled run are perturbed and are marked so in the JSON.

Nothing here asserts: targets (issue 9) are printed next to the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import api

from vpcbus.client import Client
from vpcbus.embedded import commands, natsd, procs
from vpcbus.embedded.natsd import NatsServer
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import events, subjects
from vpcbus_proto.projects import ProjectRef, ProjectSpec
from vpcbus_proto.status import ServiceStatus, project_ready
from vpcbus_runtime.pulling import Puller
from vpcbus_vpc.desired import NEIGHBOUR_OPTIONS

BENCH_DIR = Path(__file__).resolve().parent
ORG = "bench"
CIDR = "10.0.0.0/24"
#: Settings the services run with; everything else is the services' own default.
SERVICE_ENV = {
    "VPCBUS_LOG_FORMAT": "json",
    "VPCBUS_LOG_LEVEL": "info",
    "VPCBUS_TOMBSTONE_SECONDS": "5",
}
TARGETS = {
    "burst_1000_seconds": 20.0,
    "burst_rate_min": 50.0,
    "ratio_to_slower_baseline_min": 0.5,
    "steady_p99_ms": 300.0,
    "restart_serving_seconds": 5.0,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The longest the restart phase waits for ovn-northd to catch up with NB first, and what
#: counts as caught up: less than IDLE_CPU of a core over IDLE_WINDOW seconds.
SETTLE_TIMEOUT = 300.0
IDLE_CPU = 0.05
IDLE_WINDOW = 2.0


# -- small helpers ------------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in KiB; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (from /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle, not iowait) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def spec_for(name: str) -> ProjectSpec:
    return ProjectSpec(organization=ORG, name=name, cidr_block=CIDR, egress_network_type="cloud")


def project_key(name: str) -> str:
    return f"{ORG}.{name}"


# -- the stack ------------------------------------------------------------------------------


class Stack:
    """nats-server, OVN central and the four services in one temporary directory."""

    def __init__(self, root: Path, extra_env: dict[str, str], *, northd: bool = True) -> None:
        self.root = root
        self.northd = northd
        self.nats = NatsServer(root / "nats")
        self.ovn = OvnCentral(root / "ovn")
        self.logdir = root / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.extra_env = extra_env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **SERVICE_ENV,
            **self.extra_env,
            "NATS_URL": self.nats.url,
            "OVN_NB_DB": self.ovn.nb_db,
        }

    def start(self) -> None:
        self.nats.start()
        self.ovn.start()
        if not self.northd:
            procs.stop_pidfile(self.ovn.dirs.run / "ovn-northd.pid")
        self.start_services()

    def start_services(self) -> None:
        env = self.env
        for name in commands.SERVICES:
            with (self.logdir / f"{name}.log").open("ab") as log:
                self.procs[name] = subprocess.Popen(
                    commands.service_argv(name, python=sys.executable),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=commands.OWN_SESSION,
                )

    def kill_services(self) -> None:
        """SIGKILL every service and reap it (a crash, not a clean stop)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()
        self.procs = {}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}
        self.ovn.stop()
        self.nats.stop()

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def pids(self) -> dict[str, int]:
        """Every process of the stack, by role."""
        out = {name: proc.pid for name, proc in self.procs.items()}
        if self.nats.proc is not None:
            out["nats-server"] = self.nats.proc.pid
        run = self.ovn.dirs.run
        for role, pidfile in (
            ("ovsdb-nb", "ovnnb_db.pid"),
            ("ovsdb-sb", "ovnsb_db.pid"),
            ("ovn-northd", "ovn-northd.pid"),
        ):
            pid = procs.read_pid(run / pidfile)
            if pid is not None:
                out[role] = pid
        return out

    def cpu(self) -> dict[str, float]:
        out = {}
        for role, pid in self.pids().items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                out[role] = seconds
        out["bench"] = self_cpu_seconds()
        out["system"] = system_busy_seconds()
        return out

    def memory(self) -> dict[str, dict[str, int]]:
        return {role: proc_status(pid) for role, pid in self.pids().items()}

    def messages(self) -> dict[str, dict[str, int]]:
        """Messages each service's connections sent to nats-server (``in``: publishes,
        requests, acks) and got from it (``out``: deliveries, replies), from ``/connz``."""
        url = f"http://{self.nats.host}:{self.nats.monitor_port}/connz?limit=4096"
        with urllib.request.urlopen(url, timeout=5) as reply:
            conns = json.load(reply).get("connections") or []
        out: dict[str, dict[str, int]] = {}
        for conn in conns:
            parts = str(conn.get("name", "")).split("-")
            if len(parts) >= 2 and parts[0] == "vpcbus" and parts[1] in commands.SERVICES:
                mine = out.setdefault(parts[1], {"in": 0, "out": 0})
                mine["in"] += int(conn.get("in_msgs", 0))
                mine["out"] += int(conn.get("out_msgs", 0))
        return out

    def nb_count(self, table: str) -> int:
        out = self.ovn.nbctl("--bare", "--columns=_uuid", "list", table)
        return len([line for line in out.splitlines() if line.strip()])


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process over a phase; ``other`` is what the rest of the machine used
    meanwhile (other users' tests, ...): noise, printed so it can be seen."""
    out = {k: round(after[k] - before[k], 2) for k in after if k in before}
    if "system" in out:
        mine = sum(v for k, v in out.items() if k != "system")
        out["other"] = round(max(0.0, out.pop("system") - mine), 2)
    return out


# -- watching statuses ------------------------------------------------------------------------


@dataclass
class Want:
    kind: str  # "ready" | "deleted"
    generation: int
    published_at: float
    done_at: float | None = None


@dataclass
class Tracker:
    """Every status on ``vpcbus.status.>`` (core NATS), and when each wanted state was reached."""

    statuses: dict[str, dict[str, ServiceStatus]] = field(default_factory=dict)
    wants: dict[str, Want] = field(default_factory=dict)
    errors: int = 0
    messages: int = 0
    _pending: int = 0
    _all_done: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_status(self, msg: Msg) -> None:
        at = now()
        self.messages += 1
        if not msg.data:
            return
        st = ServiceStatus.model_validate_json(msg.data)
        key = f"{st.organization}.{st.project}"
        self.statuses.setdefault(key, {})[st.service] = st
        self._check(key, at)

    async def on_error(self, _msg: Msg) -> None:
        self.errors += 1

    def reset(self) -> None:
        self.wants = {}
        self._pending = 0
        self._all_done = asyncio.Event()

    def expect(self, key: str, kind: str, generation: int, published_at: float) -> None:
        self.wants[key] = Want(kind, generation, published_at)
        self._pending += 1
        # An earlier want may have been met while this one was being published.
        self._all_done.clear()
        self._check(key, now())

    def _check(self, key: str, at: float) -> None:
        want = self.wants.get(key)
        if want is None or want.done_at is not None:
            return
        sts = self.statuses.get(key, {})
        if want.kind == "ready":
            done = project_ready(sts) and min(s.generation for s in sts.values()) >= want.generation
        else:
            done = set(sts) == set(subjects.SERVICES) and all(
                s.state == "Deleted" and s.generation >= want.generation for s in sts.values()
            )
        if done:
            want.done_at = at
            self._pending -= 1
            if self._pending == 0:
                self._all_done.set()

    async def wait_all(self, timeout: float, progress: float = 15.0) -> bool:
        """Wait until every wanted state is reached; print progress every ``progress`` s."""
        deadline = now() + timeout
        while (left := deadline - now()) > 0:
            try:
                await asyncio.wait_for(self._all_done.wait(), min(left, progress))
                return True
            except TimeoutError:
                done = sum(1 for w in self.wants.values() if w.done_at is not None)
                print(f"    ... {done}/{len(self.wants)} done", flush=True)
        return self._all_done.is_set()

    def latencies_ms(self, keys: Iterable[str]) -> list[float]:
        out = []
        for key in keys:
            w = self.wants[key]
            if w.done_at is not None:
                out.append((w.done_at - w.published_at) * 1000)
        return out

    def last_done(self, keys: Iterable[str]) -> float | None:
        done = [self.wants[k].done_at for k in keys]
        return None if any(d is None for d in done) else max(d for d in done if d is not None)

    def stuck(self, keys: Iterable[str], limit: int = 3) -> list[str]:
        out = []
        for key in keys:
            if self.wants[key].done_at is None:
                sts = self.statuses.get(key, {})
                detail = ", ".join(
                    f"{s}={st.state}/{st.reason}@{st.generation}" for s, st in sorted(sts.items())
                )
                out.append(f"{key}: {detail or 'no status'}")
                if len(out) >= limit:
                    break
        return out


# -- bus helpers ----------------------------------------------------------------------------


async def wait_registered(nc: Nats, timeout: float) -> dict[str, float]:
    """Seconds until each service answers ``$SRV.PING`` (its consumers are bound)."""
    start = now()
    up: dict[str, float] = {}
    while len(up) < len(commands.SERVICES):
        for name in commands.SERVICES:
            if name in up:
                continue
            try:
                await nc.request(f"$SRV.PING.vpcbus-{name}", b"", timeout=0.2)
                up[name] = now() - start
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
        if len(up) < len(commands.SERVICES):
            if now() - start > timeout:
                raise TimeoutError(f"services not up after {timeout}s: {sorted(up)}")
            await asyncio.sleep(0.02)
    return up


async def service_stats(nc: Nats, name: str) -> dict[str, Any] | None:
    """The controller counters a service reports through ``$SRV.STATS``."""
    try:
        reply = await nc.request(f"$SRV.STATS.vpcbus-{name}", b"", timeout=1.0)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    body = json.loads(reply.data)
    for endpoint in body.get("endpoints") or []:
        data = endpoint.get("data")
        if isinstance(data, dict):
            return data
    return None


async def all_stats(nc: Nats) -> dict[str, dict[str, Any] | None]:
    found = await asyncio.gather(*(service_stats(nc, n) for n in commands.SERVICES))
    return dict(zip(commands.SERVICES, found, strict=True))


async def status_messages(client: Client) -> int:
    info = await client.js.stream_info(subjects.STATUS_STREAM)
    return int(info.state.messages)


async def statuses_left(client: Client, keys: set[str]) -> dict[str, int]:
    """What is still in the status stream for ``keys``: counts by service/state/reason."""
    left: Counter[str] = Counter()
    for key, sts in (await client.all_statuses()).items():
        if key in keys:
            for svc, st in sts.items():
                left[f"{svc}/{st.state}/{st.reason}"] += 1
    return dict(left)


async def record_counts(client: Client) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in commands.SERVICES:
        kv = await client.js.key_value(subjects.kv_bucket(name))
        try:
            out[name] = len(await kv.keys())
        except Exception:  # NoKeysError: an empty bucket
            out[name] = 0
    return out


# -- profiling ------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` attached to each service for the duration of one burst."""

    def __init__(self, outdir: Path, rate: int = 100) -> None:
        self.outdir = outdir
        self.rate = rate
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    @staticmethod
    def binary() -> str:
        beside = Path(sys.executable).parent / "py-spy"
        found = str(beside) if beside.exists() else shutil.which("py-spy")
        if found is None:
            raise SystemExit("--profile needs py-spy: pip install -r bench/requirements.txt")
        return found

    def start(self, pids: dict[str, int], label: str) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            out = self.outdir / f"{label}-{name}.txt"
            argv = [self.binary(), "record", "--pid", str(pid), "--rate", str(self.rate),
                    "--format", "raw", "--gil", "--output", str(out)]  # fmt: skip
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running[name] = (proc, out)
        time.sleep(0.3)  # let py-spy attach before the burst starts

    def stop(self) -> dict[str, dict[str, Any]]:
        summaries = {}
        for name, (proc, out) in self.running.items():
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            summaries[name] = summarise_stacks(out)
        self.running = {}
        return summaries


def summarise_stacks(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples from a py-spy raw file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"samples": 0, "own": [], "inclusive": []}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(n / total, 3)) for f, n in counter.most_common(top)] if total else []

    return {"samples": total, "own": share(own), "inclusive": share(inclusive)}


# -- phases ---------------------------------------------------------------------------------


async def publish_creates(
    client: Client, tracker: Tracker, names: list[str]
) -> tuple[float, float]:
    """Publish one ``project.created`` per name, back to back; (start, end) times."""
    start = now()
    for name in names:
        at = now()
        pub = await client.upsert(spec_for(name))
        tracker.expect(project_key(name), "ready", pub.generation, at)
    return start, now()


async def phase_burst(
    stack: Stack, client: Client, tracker: Tracker, n: int, label: str, timeout: float,
    profiler: Profiler | None,
) -> dict[str, Any]:  # fmt: skip
    names = [f"{label}p{i}" for i in range(n)]
    keys = [project_key(x) for x in names]
    stats_before = await all_stats(client.nc)
    cpu_before = stack.cpu()
    msgs_before = stack.messages()
    tracker.reset()
    if profiler is not None:
        profiler.start({s: p.pid for s, p in stack.procs.items()}, label)
    start, published = await publish_creates(client, tracker, names)
    complete = await tracker.wait_all(timeout)
    end = tracker.last_done(keys) if complete else now()
    assert end is not None
    profile = profiler.stop() if profiler is not None else None
    cpu_after = stack.cpu()
    msgs_after = stack.messages()
    stats_after = await all_stats(client.nc)
    lat = tracker.latencies_ms(keys)
    total = end - start
    reconciles, unknown, messages = {}, {}, {}
    for svc in commands.SERVICES:
        m, m0 = msgs_after.get(svc), msgs_before.get(svc)
        if m is not None and m0 is not None:
            messages[svc] = {d: round((m[d] - m0[d]) / n, 2) for d in ("in", "out")}
        a, b = stats_after.get(svc), stats_before.get(svc)
        if a is not None and b is not None:
            reconciles[svc] = round((a["reconciles"] - b["reconciles"]) / n, 2)
            unknown[svc] = round((a["unknown_projects"] - b["unknown_projects"]) / n, 2)
    result: dict[str, Any] = {
        "n": n,
        "complete": complete,
        "ready": len(lat),
        "publish_seconds": round(published - start, 3),
        "seconds": round(total, 3),
        "rate": round(len(lat) / total, 2),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
        "memory_kib": stack.memory(),
        "cpu_seconds": cpu_delta(cpu_before, cpu_after),
        "reconciles_per_project": reconciles,
        # peer statuses that came before the service's own event: no reconcile
        "unknown_per_project": unknown,
        # NATS messages per project each service sent (in) and got (out), all connections
        "messages_per_project": messages,
        "nb_rows": {t: stack.nb_count(t) for t in ("Logical_Router", "NAT", "DNS")},
    }
    if not complete:
        result["stuck"] = tracker.stuck(keys)
    if profile is not None:
        result["profile"] = profile
    return result


async def northd_idle(stack: Stack) -> float | None:
    """Seconds until ovn-northd stopped working: it then used less than :data:`IDLE_CPU` of a
    core for :data:`IDLE_WINDOW` s (it only works on changes, so it has caught up with NB);
    None if that did not happen within :data:`SETTLE_TIMEOUT`. Idleness rather than
    ``ovn-nbctl --wait=sb sync``, which waits for one more full run of northd (and did not
    return within 300 s after a burst of 5,000 with static neighbour entries)."""
    pid = stack.pids().get("ovn-northd")
    busy_cpu = cpu_seconds(pid) if pid is not None else None
    if pid is None or busy_cpu is None:
        return None
    start = busy_at = now()
    while now() - start < SETTLE_TIMEOUT:
        await asyncio.sleep(0.25)
        t, used = now(), cpu_seconds(pid)
        if used is None:
            return None
        if used - busy_cpu >= IDLE_CPU * IDLE_WINDOW:  # worked since the last mark
            busy_at, busy_cpu = t, used
        elif t - busy_at >= IDLE_WINDOW:
            return round(busy_at - start, 3)
    print(f"    ovn-northd still busy after {SETTLE_TIMEOUT:.0f} s; restarting anyway")
    return None


async def phase_restart(
    stack: Stack, client: Client, tracker: Tracker, label: str, timeout: float,
    profiler: Profiler | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Kill all services, start them, publish one new project at once. ``profiler``: record
    the services from their start until the new project is Ready (py-spy attaches in ~0.3 s,
    which the figures then include).

    First the projects are put fully in place: ovn-northd is let finish translating them
    into logical flows, so that it does not take one of the two cores from the restarting
    services. How long that took is reported as ``settle_seconds``: about a second after a
    burst of 5,000; minutes while the project routers had static neighbour entries, O(N^2)
    logical flows (``vpcbus_vpc.desired.NEIGHBOUR_OPTIONS``), when one recompute took 27 s."""
    settled = await northd_idle(stack)
    records = await record_counts(client)
    stack.kill_services()
    tracker.reset()
    start, wall_start = now(), datetime.now(UTC)
    stack.start_services()
    if profiler is not None:
        profiler.start({s: p.pid for s, p in stack.procs.items()}, f"{label}-restart")
    name = f"{label}new"
    pub = await client.upsert(spec_for(name))
    published = now()
    tracker.expect(project_key(name), "ready", pub.generation, start)
    up: dict[str, float] = {}
    resynced: dict[str, float] = {}
    last_counts: dict[str, int] = {}
    last_change = start
    ready_at: float | None = None
    profile: dict[str, Any] | None = None
    deadline = start + timeout
    while now() < deadline:
        t = now()
        for svc in commands.SERVICES:
            if svc not in up:
                try:
                    await client.nc.request(f"$SRV.PING.vpcbus-{svc}", b"", timeout=0.2)
                    up[svc] = now() - start
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    continue
            stats = await service_stats(client.nc, svc)
            if stats is None:
                continue
            count = int(stats["reconciles"])
            if count != last_counts.get(svc):
                last_counts[svc] = count
                last_change = t
            if svc not in resynced and count >= records[svc] and stats["queue_depth"] == 0:
                resynced[svc] = t - start
        w = tracker.wants[project_key(name)]
        if w.done_at is not None and ready_at is None:
            ready_at = w.done_at
            if profiler is not None:
                profile = profiler.stop()
        done = ready_at is not None and len(resynced) == len(commands.SERVICES)
        if done and now() - last_change >= 2.0:
            break
        await asyncio.sleep(0.05)
    if profiler is not None and profiler.running:
        profile = profiler.stop()
    return {
        "profile": profile if profiler is not None else None,
        "settle_seconds": settled,
        "records": records,
        "up_seconds": {k: round(v, 3) for k, v in up.items()},
        "all_up_seconds": round(max(up.values()), 3) if len(up) == 4 else None,
        "publish_seconds": round(published - start, 3),
        "new_ready_seconds": round(ready_at - start, 3) if ready_at is not None else None,
        # when each service reported the new project (its status' observed_at): the chain
        "new_status_seconds": {
            svc: round((st.observed_at - wall_start).total_seconds(), 3)
            for svc, st in tracker.statuses.get(project_key(name), {}).items()
        },
        "resync_seconds": {k: round(v, 3) for k, v in resynced.items()},
        "all_resynced_seconds": round(max(resynced.values()), 3)
        if len(resynced) == len(commands.SERVICES)
        else None,
        "quiet_seconds": round(last_change - start, 3),
        "reconciles_after_restart": last_counts,
    }


async def phase_delete(
    stack: Stack, client: Client, tracker: Tracker, names: list[str], msgs_before: int,
    timeout: float, gone_timeout: float,
) -> dict[str, Any]:  # fmt: skip
    keys = [project_key(x) for x in names]
    cpu_before = stack.cpu()
    tracker.reset()
    start = now()
    for name in names:
        at = now()
        pub = await client.delete(ProjectRef(organization=ORG, name=name))
        tracker.expect(project_key(name), "deleted", pub.generation, at)
    published = now()
    complete = await tracker.wait_all(timeout)
    end = tracker.last_done(keys) if complete else now()
    assert end is not None
    cpu_after = stack.cpu()
    lat = tracker.latencies_ms(keys)
    gone: float | None = None
    left = await status_messages(client)
    while now() - end < gone_timeout:
        left = await status_messages(client)
        if left <= msgs_before:
            gone = now() - start
            break
        await asyncio.sleep(0.2)
    result: dict[str, Any] = {
        "n": len(names),
        "complete": complete,
        "deleted": len(lat),
        "publish_seconds": round(published - start, 3),
        "seconds": round(end - start, 3),
        "rate": round(len(lat) / (end - start), 2),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "cpu_seconds": cpu_delta(cpu_before, cpu_after),
        "gone_seconds": round(gone, 3) if gone is not None else None,
        "status_messages_left": max(0, left - msgs_before),
        "statuses_left": await statuses_left(client, set(keys)) if gone is None else {},
        "nb_rows_after": {t: stack.nb_count(t) for t in ("Logical_Router", "NAT", "DNS")},
    }
    if not complete:
        result["stuck"] = tracker.stuck(keys)
    return result


async def phase_steady(
    stack: Stack, client: Client, tracker: Tracker, rate: float, seconds: float, label: str,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    count = max(1, round(rate * seconds))
    names = [f"{label}s{i}" for i in range(count)]
    keys = [project_key(x) for x in names]
    tracker.reset()
    cpu_before = stack.cpu()
    start = now()
    for i, name in enumerate(names):
        due = start + i / rate
        if (wait := due - now()) > 0:
            await asyncio.sleep(wait)
        at = now()
        pub = await client.upsert(spec_for(name))
        tracker.expect(project_key(name), "ready", pub.generation, at)
    complete = await tracker.wait_all(timeout)
    cpu_after = stack.cpu()
    lat = tracker.latencies_ms(keys)
    result: dict[str, Any] = {
        "n": count,
        "rate": rate,
        "complete": complete,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
        "cpu_seconds": cpu_delta(cpu_before, cpu_after),
    }
    if not complete:
        result["stuck"] = tracker.stuck(keys)
    # Clean up (not measured), so the next phase starts from the same state.
    tracker.reset()
    for name in names:
        pub = await client.delete(ProjectRef(organization=ORG, name=name))
        tracker.expect(project_key(name), "deleted", pub.generation, now())
    await tracker.wait_all(timeout)
    return result


async def baseline_jetstream(url: str, messages: int) -> dict[str, Any]:
    """Raw JetStream on the same server: async publish while a pull consumer acks each
    (pulled as the services pull, :class:`vpcbus_runtime.pulling.Puller`)."""
    nc = await nats.connect(url, name="vpcbus-bench-raw")
    js = nc.jetstream()
    stream = f"BENCH_RAW_{uuid.uuid4().hex[:6]}"
    await js.add_stream(
        api.StreamConfig(
            name=stream, subjects=[f"{stream.lower()}.>"], storage=api.StorageType.FILE
        )
    )
    durable = "raw"
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=1024,
        ),
    )
    body = json.dumps(
        events.new_event(subjects.PROJECT_CREATED, spec_for("raw-baseline-project"))
    ).encode()
    subject = f"{stream.lower()}.project"
    done = asyncio.Event()
    got = 0

    async def consume(msg: Msg) -> None:
        nonlocal got
        await msg.ack()
        got += 1
        if got >= messages:
            done.set()

    # The services' own pull loop: the fastest consume of the parts they are built from.
    puller = Puller(nc, stream, durable, consume)
    try:
        await puller.start()
        start = now()
        for i in range(messages):
            await js.publish_async(subject, body, headers={"Nats-Msg-Id": f"{stream}-{i}"})
        await js.publish_async_completed()
        published = now()
        await asyncio.wait_for(done.wait(), timeout=120)
        consumed = now()
        await puller.stop()
        # What vpcbus.client does per event: a sequential publish awaiting each ack.
        sync_n = max(200, messages // 10)
        sync_start = now()
        for i in range(sync_n):
            await js.publish(subject, body, headers={"Nats-Msg-Id": f"{stream}-s{i}"})
        sync_seconds = now() - sync_start
    finally:
        await puller.stop()
        await js.delete_stream(stream)
        await nc.close()
    return {
        "messages": messages,
        "bytes": len(body),
        "publish_rate": round(messages / (published - start), 1),
        "publish_consume_rate": round(messages / (consumed - start), 1),
        "sync_publish_rate": round(sync_n / sync_seconds, 1),
    }


def _raw_project(api_: Any, txn: Any, i: int) -> None:
    """What the four services write for one project, in one transaction (no reads, no scans)."""
    ns = f"raw-p{i}"
    key = f"raw.p{i}"
    eip = f"100.65.{2 + i // 250}.{2 + i % 250}"

    def ids(owner: str) -> dict[str, str]:
        return {"vpcbus-owner": owner, "vpcbus-project": key}

    def insert(table: str, **columns: Any) -> Any:
        row = txn.insert(api_.tables[table])
        for column, value in columns.items():
            setattr(row, column, value)
        return row

    lrp_lan = insert("Logical_Router_Port", name=f"{ns}-{ns}-default", mac="0a:00:00:00:00:01",
                     networks=["10.0.0.1/24"], external_ids=ids("vpc"))  # fmt: skip
    lrp_ext = insert("Logical_Router_Port", name=f"{ns}-ext-cloud", mac="0a:00:00:00:00:02",
                     networks=[f"{eip}/16"], external_ids=ids("vpc"))  # fmt: skip
    route = insert("Logical_Router_Static_Route", ip_prefix="0.0.0.0/0", nexthop="100.65.0.1",
                   external_ids=ids("vpc"))  # fmt: skip
    snat = insert("NAT", type="snat", external_ip=eip, logical_ip=CIDR, external_ids=ids("nat"))
    insert("Logical_Router", name=ns, external_ids=ids("vpc"), ports=[lrp_lan, lrp_ext],
           options={"chassis": "vpcbus-chassis-1", **NEIGHBOUR_OPTIONS},
           static_routes=[route], nat=[snat])  # fmt: skip
    lsp_lan = insert("Logical_Switch_Port", name=f"{ns}-default-{ns}", type="router",
                     addresses=["router"], options={"router-port": lrp_lan.name},
                     external_ids=ids("vpc"))  # fmt: skip
    dns = insert("DNS", records={f"gateway.{ns}.svc.cluster.local": "10.0.0.1"},
                 external_ids=ids("dns"))  # fmt: skip
    insert("Logical_Switch", name=f"{ns}-default", external_ids=ids("vpc"), ports=[lsp_lan],
           dns_records=[dns])  # fmt: skip
    lsp_ext = insert("Logical_Switch_Port", name=f"ext-cloud-{ns}", type="router",
                     addresses=["router"],
                     options={"router-port": lrp_ext.name, "nat-addresses": "router"},
                     external_ids=ids("vpc"))  # fmt: skip
    ext = api_.lookup("Logical_Switch", "ext-cloud")
    ext.addvalue("ports", lsp_ext)


def baseline_ovn(root: Path, n: int, *, northd: bool = True, tuned: bool = True) -> dict[str, Any]:
    """:func:`raw_ovn` in a child process (a fresh interpreter per run, like a service)."""
    argv = [sys.executable, __file__, "--raw-ovn", str(root), str(n)]
    if not northd:
        argv.append("--no-northd")
    if not tuned:
        argv.append("--raw-stock")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(300, n), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"raw OVN baseline failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def raw_ovn(root: Path, n: int, *, northd: bool = True, tuned: bool = True) -> dict[str, Any]:
    """Raw ovsdbapp: N projects' NB rows, one transaction each, against an empty OVN central.

    ``tuned`` (the baseline the ratio uses): with the services' own python-ovs tuning
    (:mod:`vpcbus_runtime.ovsjson`'s JSON, the IDL without a sleep per row parsed), so the
    baseline is what ovsdbapp can do here at best and none of vpcbus's ratio comes from tuning
    its parts and not the baseline's. Without it: stock ovsdbapp (~1.8x slower here), as the
    figures before 2026-12-05 (later) were measured against."""
    from ovsdbapp.backend.ovs_idl import command, connection
    from ovsdbapp.schema.ovn_northbound import impl_idl

    from vpcbus_runtime import ovsjson
    from vpcbus_runtime.ovsidl import NbIdl

    if tuned:
        ovsjson.install()

    class Run(command.BaseCommand):  # type: ignore[misc]
        def __init__(self, api_: Any, fn: Callable[[Any, Any], None]) -> None:
            super().__init__(api_)
            self.fn = fn

        def run_idl(self, txn: Any) -> None:
            self.fn(self.api, txn)

    central = OvnCentral(root)
    central.start()
    if not northd:
        procs.stop_pidfile(central.dirs.run / "ovn-northd.pid")
    try:
        idl_class = NbIdl if tuned else connection.OvsdbIdl
        idl = idl_class.from_server(central.nb_db, "OVN_Northbound")
        nb = impl_idl.OvnNbApiIdlImpl(connection.Connection(idl=idl, timeout=60))
        with nb.transaction(check_error=True) as txn:
            txn.add(nb.ls_add("ext-cloud", may_exist=True))
            localnet = nb.lsp_add(
                "ext-cloud",
                "ext-cloud-localnet",
                type="localnet",
                addresses=["unknown"],
                options={"network_name": "cloud"},
            )
            txn.add(localnet)
        pids = {
            "ovsdb-nb": procs.read_pid(central.dirs.run / "ovnnb_db.pid"),
            "ovn-northd": procs.read_pid(central.dirs.run / "ovn-northd.pid"),
            "ovsdb-sb": procs.read_pid(central.dirs.run / "ovnsb_db.pid"),
        }
        cpu_before = {k: cpu_seconds(p) or 0.0 for k, p in pids.items() if p is not None}
        cpu_before["bench"] = self_cpu_seconds()
        cpu_before["system"] = system_busy_seconds()
        start = now()
        for i in range(n):
            Run(nb, functools.partial(_raw_project, i=i)).execute(check_error=True)
        seconds = now() - start
        cpu_after = {k: cpu_seconds(p) or 0.0 for k, p in pids.items() if p is not None}
        cpu_after["bench"] = self_cpu_seconds()
        cpu_after["system"] = system_busy_seconds()
        memory = {k: proc_status(p) for k, p in pids.items() if p is not None}
        routers = len(central.nbctl("--bare", "--columns=_uuid", "list", "Logical_Router").split())
        nb.ovsdb_connection.stop()
    finally:
        central.stop()
    return {
        "n": n,
        "seconds": round(seconds, 3),
        "rate": round(n / seconds, 2),
        "routers": routers,
        "cpu_seconds": cpu_delta(cpu_before, cpu_after),
        "memory_kib": memory,
    }


# -- one repeat -----------------------------------------------------------------------------


@dataclass
class Config:
    sizes: list[int]
    repeats: int
    steady_rate: float
    steady_seconds: float
    js_messages: int
    timeout: float
    profile: Path | None
    env: dict[str, str]
    keep: bool
    northd: bool = True
    skip: frozenset[str] = frozenset()
    profile_rate: int = 100

    def wait(self, n: int) -> float:
        """How long a burst of ``n`` may take before it is reported incomplete."""
        return max(self.timeout, 0.1 * n)


async def run_repeat(cfg: Config, rep: int, root: Path, out: dict[str, Any]) -> None:
    """One repeat on a fresh stack; fills ``out`` as it goes (kept if interrupted)."""
    out.update(
        {"repeat": rep, "baseline_ovn": {}, "baseline_ovn_stock": {}, "burst": {}, "delete": {}}
    )
    for n in [] if "ovn" in cfg.skip else cfg.sizes:
        print(f"[{rep}] raw OVN baseline, {n} projects ...", flush=True)
        try:
            base = baseline_ovn(root / f"ovn-raw-{n}", n, northd=cfg.northd)
        except Exception as exc:  # a baseline that fails must not cost the whole run
            print(f"    failed: {exc!r}", flush=True)
            out["baseline_ovn"][str(n)] = {"n": n, "error": repr(exc)}
            continue
        out["baseline_ovn"][str(n)] = base
        print(f"    {base['rate']} projects/s  cpu {base['cpu_seconds']}", flush=True)
        try:  # only for comparison with earlier figures: its failure costs nothing else
            stock = baseline_ovn(root / f"ovn-stock-{n}", n, northd=cfg.northd, tuned=False)
        except Exception as exc:
            print(f"    stock ovsdbapp baseline failed: {exc!r}", flush=True)
            continue
        out["baseline_ovn_stock"][str(n)] = stock
        print(f"    stock ovsdbapp: {stock['rate']} projects/s", flush=True)

    stack = Stack(root / "stack", cfg.env, northd=cfg.northd)
    started = now()
    stack.start()
    client = await Client.connect(stack.nats.url, name="vpcbus-bench")
    try:
        await client.ensure_streams()
        up = await wait_registered(client.nc, 60)
        out["start_seconds"] = {k: round(v, 3) for k, v in up.items()}
        out["stack_start_seconds"] = round(now() - started, 3)
        tracker = Tracker()
        await client.nc.subscribe("vpcbus.status.>", cb=tracker.on_status)
        await client.nc.subscribe("vpcbus.error.>", cb=tracker.on_error)
        await client.nc.subscribe("vpcbus.dlq.>", cb=tracker.on_error)
        await client.nc.flush()

        if "jetstream" not in cfg.skip:
            print(f"[{rep}] raw JetStream baseline, {cfg.js_messages} msgs ...", flush=True)
            out["baseline_jetstream"] = j = await baseline_jetstream(
                stack.nats.url, cfg.js_messages
            )
            print(f"    {j['publish_consume_rate']} msgs/s", flush=True)

        if "steady" not in cfg.skip:
            print(f"[{rep}] steady {cfg.steady_rate}/s for {cfg.steady_seconds} s ...", flush=True)
            out["steady"] = s = await phase_steady(
                stack, client, tracker, cfg.steady_rate, cfg.steady_seconds, f"r{rep}",
                cfg.timeout,
            )  # fmt: skip
            print(f"    p50 {s['p50_ms']:.0f} ms p99 {s['p99_ms']:.0f} ms  cpu {s['cpu_seconds']}")

        profiler = Profiler(cfg.profile, cfg.profile_rate) if cfg.profile is not None else None
        largest = max(cfg.sizes)
        for n in cfg.sizes:
            label = f"r{rep}n{n}"
            msgs_before = await status_messages(client)
            print(f"[{rep}] burst of {n} project.created ...", flush=True)
            out["burst"][str(n)] = b = await phase_burst(
                stack, client, tracker, n, label, cfg.wait(n),
                profiler if n == largest else None,
            )  # fmt: skip
            print(
                f"    {b['ready']}/{n} Ready in {b['seconds']} s, {b['rate']}/s, "
                f"p50 {b['p50_ms'] or 0:.0f} ms p99 {b['p99_ms'] or 0:.0f} ms  "
                f"cpu {b['cpu_seconds']}",
                flush=True,
            )
            names = [f"{label}p{i}" for i in range(n)]
            if n == largest and "restart" not in cfg.skip:
                print(f"[{rep}] restart recovery with {n} projects ...", flush=True)
                out["restart"] = r = await phase_restart(
                    stack, client, tracker, label, cfg.wait(n), profiler
                )
                print(
                    f"    ovn-northd caught up in {r['settle_seconds']} s; "
                    f"up {r['all_up_seconds']} s, new project Ready "
                    f"{r['new_ready_seconds']} s, resync {r['all_resynced_seconds']} s, "
                    f"quiet {r['quiet_seconds']} s",
                    flush=True,
                )
                names.append(f"{label}new")
            if "delete" in cfg.skip:
                continue
            print(f"[{rep}] delete burst of {len(names)} ...", flush=True)
            out["delete"][str(n)] = d = await phase_delete(
                stack, client, tracker, names, msgs_before, cfg.wait(n), gone_timeout=30.0
            )
            print(
                f"    {d['deleted']}/{len(names)} Deleted in {d['seconds']} s, "
                f"gone {d['gone_seconds']} s ({d['status_messages_left']} statuses left)",
                flush=True,
            )
        out["errors_seen"] = tracker.errors
        out["dead_services"] = stack.dead()
    finally:
        with contextlib.suppress(Exception):  # a stuck drain must not keep the stack running
            await asyncio.wait_for(client.close(), 5)
        stack.stop()


# -- summary --------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {
        "median": round(statistics.median(vals), 3),
        "min": round(min(vals), 3),
        "max": round(max(vals), 3),
        "n": len(vals),
    }


def get(d: dict[str, Any], *path: str) -> Any:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def summarise(runs: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    rows: dict[str, Any] = {}

    def add(name: str, values: list[Any], unit: str, target: str = "") -> None:
        s = spread([float(v) for v in values if v is not None])
        if s is not None:
            rows[name] = {**s, "unit": unit, "target": target}

    for n in sizes:
        k = str(n)
        add(f"burst {n}: all Ready", [get(r, "burst", k, "seconds") for r in runs], "s",
            "<= 20" if n == 1000 else "")  # fmt: skip
        add(f"burst {n}: rate", [get(r, "burst", k, "rate") for r in runs], "projects/s",
            ">= 50" if n >= 1000 else "")  # fmt: skip
        add(f"burst {n}: p50", [get(r, "burst", k, "p50_ms") for r in runs], "ms")
        add(f"burst {n}: p99", [get(r, "burst", k, "p99_ms") for r in runs], "ms")
        add(f"burst {n}: time/project", [
            1000 * r["burst"][k]["seconds"] / n for r in runs if get(r, "burst", k)
        ], "ms")  # fmt: skip
        add(f"raw OVN {n}: rate", [get(r, "baseline_ovn", k, "rate") for r in runs], "projects/s")
        add(f"raw OVN {n}: rate, stock ovsdbapp",
            [get(r, "baseline_ovn_stock", k, "rate") for r in runs], "projects/s")  # fmt: skip
        ratios = []
        for r in runs:
            rate = get(r, "burst", k, "rate")
            ovn_rate = get(r, "baseline_ovn", k, "rate")
            js_rate = get(r, "baseline_jetstream", "publish_consume_rate")
            slower = min((x for x in (ovn_rate, js_rate) if x), default=None)
            if rate is not None and slower:
                ratios.append(rate / slower)
        add(f"burst {n}: ratio to slower baseline", ratios, "x", ">= 0.5" if n >= 1000 else "")
        stock = [
            get(r, "burst", k, "rate") / get(r, "baseline_ovn_stock", k, "rate")
            for r in runs
            if get(r, "burst", k, "rate") and get(r, "baseline_ovn_stock", k, "rate")
        ]
        add(f"burst {n}: ratio to stock ovsdbapp", stock, "x")
        for svc in commands.SERVICES:
            rss = [get(r, "burst", k, "memory_kib", svc, "VmRSS") for r in runs]
            add(f"burst {n}: RSS {svc}", [v / 1024 for v in rss if v is not None], "MiB")
            add(f"burst {n}: reconciles/project {svc}",
                [get(r, "burst", k, "reconciles_per_project", svc) for r in runs], "")  # fmt: skip
            add(f"burst {n}: no-record peer statuses/project {svc}",
                [get(r, "burst", k, "unknown_per_project", svc) for r in runs], "")  # fmt: skip
            for way, what in (("in", "sent"), ("out", "got")):
                sent = [get(r, "burst", k, "messages_per_project", svc, way) for r in runs]
                add(f"burst {n}: NATS messages {what}/project {svc}", sent, "")
        add(f"delete {n}: all Deleted", [get(r, "delete", k, "seconds") for r in runs], "s")
        add(f"delete {n}: rate", [get(r, "delete", k, "rate") for r in runs], "projects/s")
        add(f"delete {n}: p99", [get(r, "delete", k, "p99_ms") for r in runs], "ms")
        add(f"delete {n}: statuses gone", [get(r, "delete", k, "gone_seconds") for r in runs],
            "s")  # fmt: skip
    add("steady: p50", [get(r, "steady", "p50_ms") for r in runs], "ms")
    add("steady: p99", [get(r, "steady", "p99_ms") for r in runs], "ms", "<= 300")
    add("restart: ovn-northd caught up first",
        [get(r, "restart", "settle_seconds") for r in runs], "s")  # fmt: skip
    add("restart: all services answer PING", [get(r, "restart", "all_up_seconds") for r in runs],
        "s")  # fmt: skip
    add("restart: new project Ready", [get(r, "restart", "new_ready_seconds") for r in runs], "s",
        "<= 5")  # fmt: skip
    add("restart: start-up resync complete",
        [get(r, "restart", "all_resynced_seconds") for r in runs], "s")  # fmt: skip
    add("restart: quiet (no reconcile for 2 s)",
        [get(r, "restart", "quiet_seconds") for r in runs], "s")  # fmt: skip
    add("raw JetStream: publish+consume",
        [get(r, "baseline_jetstream", "publish_consume_rate") for r in runs], "msgs/s")  # fmt: skip
    add("raw JetStream: async publish",
        [get(r, "baseline_jetstream", "publish_rate") for r in runs], "msgs/s")  # fmt: skip
    add("raw JetStream: sync publish",
        [get(r, "baseline_jetstream", "sync_publish_rate") for r in runs], "msgs/s")  # fmt: skip
    return rows


def verdict(row: dict[str, Any]) -> str:
    target = str(row.get("target") or "")
    if not target:
        return ""
    op, _, num = target.partition(" ")
    value = float(row["median"])
    ok = value <= float(num) if op == "<=" else value >= float(num)
    return "ok" if ok else "MISS"


def print_table(rows: dict[str, Any]) -> None:
    width = max(len(k) for k in rows) if rows else 10
    head = f"{'metric':<{width}}  {'median':>10}  {'min..max':>21}  {'unit':<11} {'target':<8} "
    print(head)
    print("-" * len(head))
    for name, row in rows.items():
        rng = f"{row['min']:g}..{row['max']:g}"
        print(
            f"{name:<{width}}  {row['median']:>10g}  {rng:>21}  {row['unit']:<11} "
            f"{row['target']:<8} {verdict(row)}"
        )


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        except OSError:
            return ""
        return out.splitlines()[0].strip() if out else ""

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return ""

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", "")
        if hasattr(platform, "freedesktop_os_release")
        else "",
        "python": platform.python_version(),
        "nats_server": version([natsd.binary(), "--version"]),
        "ovn": version(["ovn-nbctl", "--version"]),
        "ovs": version(["ovsdb-server", "--version"]),
        "nats_py": dist("nats-py"),
        "ovsdbapp": dist("ovsdbapp"),
        "ovs_python": dist("ovs"),
        "pydantic": dist("pydantic"),
    }


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--sizes", default="100,1000", help="burst sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="sizes 100, 1 repeat, short steady")
    p.add_argument("--full", action="store_true", help="add the 5,000-project burst")
    p.add_argument("--steady-rate", type=float, default=10.0)
    p.add_argument("--steady-seconds", type=float, default=20.0)
    p.add_argument("--js-messages", type=int, default=20_000)
    p.add_argument("--timeout", type=float, default=120.0,
                   help="per phase, seconds (a burst of N gets at least N/10 s)")  # fmt: skip
    p.add_argument(
        "--no-northd",
        action="store_true",
        help="diagnostic: stop ovn-northd (NB only; isolates the services' cost)",
    )
    p.add_argument("--profile", type=Path, help="py-spy each service in the largest burst")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra service environment, e.g. VPCBUS_WORKERS=32")  # fmt: skip
    p.add_argument("--out", type=Path, help="results JSON (default bench/results-<ts>.json)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated phases to leave out: ovn,jetstream,steady,restart,delete",
    )
    p.add_argument("--raw-ovn", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    p.add_argument("--raw-stock", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    repeats = args.repeats
    steady_seconds = args.steady_seconds
    js_messages = args.js_messages
    if args.quick:
        sizes, repeats, steady_seconds, js_messages = [100], 1, 5.0, 5_000
    if args.full and 5000 not in sizes:
        sizes.append(5000)
    env = dict(kv.split("=", 1) for kv in args.env)
    cfg = Config(
        sizes=sorted(set(sizes)),
        repeats=repeats,
        steady_rate=args.steady_rate,
        steady_seconds=steady_seconds,
        js_messages=js_messages,
        timeout=args.timeout,
        profile=args.profile,
        env=env,
        keep=args.keep,
        northd=not args.no_northd,
        skip=frozenset(x.strip() for x in args.skip.split(",") if x.strip()),
        profile_rate=args.profile_rate,
    )
    return args, cfg


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    if args.raw_ovn:
        root_dir, count = args.raw_ovn
        result = raw_ovn(Path(root_dir), int(count), northd=cfg.northd, tuned=not args.raw_stock)
        print(json.dumps(result))
        return 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_path = args.out or BENCH_DIR / f"results-{stamp}.json"
    root = Path(tempfile.mkdtemp(prefix="vpcbus-bench-"))
    print(f"vpcbus bench: sizes {cfg.sizes}, {cfg.repeats} repeat(s), workdir {root}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    runs: list[dict[str, Any]] = []
    interrupted = False
    try:
        for rep in range(cfg.repeats):
            runs.append({})
            asyncio.run(run_repeat(cfg, rep, root / f"rep{rep}", runs[-1]))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the figures taken so far", flush=True)
    except Exception as exc:
        interrupted = True
        runs[-1]["error"] = repr(exc)
        print(f"\nfailed ({exc!r}): writing the figures taken so far", flush=True)
    finally:
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = summarise(runs, cfg.sizes)
    result = {
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "wall_seconds": round(time.time() - started, 1),
        "command": [Path(sys.executable).name, *sys.argv],
        "interrupted": interrupted,
        "config": {
            "sizes": cfg.sizes,
            "repeats": cfg.repeats,
            "steady_rate": cfg.steady_rate,
            "steady_seconds": cfg.steady_seconds,
            "js_messages": cfg.js_messages,
            "timeout": cfg.timeout,
            "northd": cfg.northd,
            "skipped": sorted(cfg.skip),
            "service_env": {**SERVICE_ENV, **cfg.env},
            "profiled": cfg.profile is not None,
        },
        "machine": machine(),
        "targets": TARGETS,
        "summary": rows,
        "runs": runs,
    }
    out_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print()
    print_table(rows)
    print(f"\nwall {result['wall_seconds']} s; results: {out_path}")
    if cfg.profile is not None:
        for rep_run in runs:
            for n, burst in rep_run.get("burst", {}).items():
                for svc, prof in (burst.get("profile") or {}).items():
                    print(f"\n-- profile {svc} (burst {n}, {prof['samples']} samples), own time:")
                    for frame, share in prof["own"][:10]:
                        print(f"   {share:6.1%}  {frame}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
