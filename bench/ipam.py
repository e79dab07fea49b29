"""IPAM benchmark: durable allocations per second end to end (issue 3).

Run by hand, from the repository root::

    .venv/bin/python bench/ipam.py                         # replicas 1 and 3, 20,000 NICs
    .venv/bin/python bench/ipam.py --replicas 3 --events 5000
    .venv/bin/python bench/ipam.py --profile bench/profile-ipam   # py-spy on every replica

Per replica count R (``--replicas 1,3``), on a fresh nats-server
(:class:`vpcbus.embedded.natsd.NatsServer`, JetStream on disk) in a temporary directory:

1. **raw KV compare-and-set** on that server, from Python (nats-py), before anything else
   runs: ``kv.create`` of fresh keys in a file bucket with history 1 (what the address book
   writes), sequentially (one round trip at a time) and pipelined (``--kv-inflight`` creates
   in flight, ``asyncio.gather``).
2. **end to end**: R IPAM processes (``python -m vpcbus_ipam``, distinct ``VPCBUS_INSTANCE``,
   one shared durable consumer). ``--projects`` projects are created first (``/16`` each) and
   their IPAM status awaited; then a burst of ``--events`` ``workload.attached`` events,
   round-robin over the projects, is published pipelined (``js.publish_async``). The clock runs
   from the first publish until IPAM's statuses (a core-NATS subscription to
   ``vpcbus.status.ipam.>``) have listed every NIC as a ``Ready`` member. A member is Ready in
   a status only after its address and its binding were created in KV with compare-and-set,
   so this is "event in, allocation durable, status out". Latency per NIC: publish -> first
   status that lists it Ready (p50 / p99). CPU seconds per process over the burst.
3. **verification** (a wrong result makes the figure worthless): every NIC has exactly one
   binding in ``vpcbus-ipam-addresses``, the address key of each binding is held by that NIC,
   no address is bound twice within a project, no other address is held, and the last status
   of each project lists its NICs with distinct addresses.

Once per run, **the pure allocator** (``SpaceView.choose`` + ``apply`` in a loop over a ``/16``,
no I/O): the in-memory, non-durable rate comparable to Kube-OVN's ~53,000/s.

Results: ``bench/results-ipam.json`` (``--out``) and a table with the ratios e2e / raw KV CAS,
e2e / pure allocator, 3 replicas / 1 replica, and e2e against the 10,000/s target.
Nothing here asserts, except that a run whose verification fails is reported as invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

import bench
from vpcbus.embedded import commands
from vpcbus.embedded.natsd import NatsServer
from vpcbus_ipam.allocator import Slot, SpaceView
from vpcbus_ipam.pools import project_subnet
from vpcbus_proto import events, subjects
from vpcbus_proto.members import WorkloadSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_runtime import bus

BENCH_DIR = Path(__file__).resolve().parent
ORG = "ipb"
TARGET_RATE = 10_000.0
KUBE_OVN_RATE = 53_000.0
SERVICE_ENV = {"VPCBUS_LOG_FORMAT": "json", "VPCBUS_LOG_LEVEL": "info"}

now = bench.now


# -- baselines ------------------------------------------------------------------------------


def pure_allocator(n: int) -> dict[str, Any]:
    """``SpaceView.choose`` + ``apply`` for ``n`` holders in one /16: no I/O, no durability."""
    space = project_subnet("bench.pure", IPv4Network("10.0.0.0/16"), IPv4Address("10.0.0.1"))
    view = SpaceView(space)
    holders = [f"pod/p{i}/default" for i in range(n)]
    at = time.time()
    start = now()
    for revision, holder in enumerate(holders, 1):
        ip = view.choose(holder, static=None, now=at, quarantine=60.0)
        view.apply(ip, Slot(holder, True, at, revision))
    seconds = now() - start
    assert len(view.holders()) == n and len(set(view.holders().values())) == n
    return {"n": n, "seconds": round(seconds, 3), "rate": round(n / seconds, 1)}


async def raw_kv_cas(
    js: JetStreamContext, sequential: int, pipelined: int, inflight: int
) -> dict[str, Any]:
    """``kv.create`` of fresh keys (compare-and-set on "no such key") in a file bucket."""
    bucket = f"bench-cas-{uuid.uuid4().hex[:6]}"
    kv = await js.create_key_value(
        api.KeyValueConfig(bucket=bucket, history=1, storage=api.StorageType.FILE)
    )
    value = b'{"holder":"pod/p0000000/default","held":true,"at":1760000000.123456}'
    try:
        start = now()
        for i in range(sequential):
            await kv.create(f"seq.10.0.{i // 250}.{i % 250}", value)
        seq_seconds = now() - start
        gate = asyncio.Semaphore(inflight)

        async def create(i: int) -> None:
            async with gate:
                await kv.create(f"pipe.10.{i // 65536}.{i // 256 % 256}.{i % 256}", value)

        start = now()
        await asyncio.gather(*(create(i) for i in range(pipelined)))
        pipe_seconds = now() - start
        conflicts = await _conflicts(kv, value)
    finally:
        await js.delete_key_value(bucket)
    return {
        "sequential": {"n": sequential, "rate": round(sequential / seq_seconds, 1)},
        "pipelined": {
            "n": pipelined,
            "inflight": inflight,
            "rate": round(pipelined / pipe_seconds, 1),
        },
        "second_create_refused": conflicts,
    }


async def _conflicts(kv: KeyValue, value: bytes) -> bool:
    """The store really compares: creating an existing key again must fail."""
    try:
        await kv.create("seq.10.0.0.0", value)
    except nats.js.errors.KeyWrongLastSequenceError:
        return True
    return False


# -- the replicas ---------------------------------------------------------------------------


class Replicas:
    """R IPAM processes against one nats-server."""

    def __init__(self, root: Path, url: str, count: int, extra_env: dict[str, str]) -> None:
        self.root = root
        self.url = url
        self.count = count
        self.extra_env = extra_env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            env = {
                **os.environ,
                **SERVICE_ENV,
                **self.extra_env,
                "NATS_URL": self.url,
                "VPCBUS_INSTANCE": f"bench-ipam-{i}",
            }
            with (self.root / f"ipam-{i}.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        commands.service_argv("ipam", python=sys.executable),
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=commands.OWN_SESSION,
                    )
                )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def pids(self) -> dict[str, int]:
        return {f"ipam-{i}": p.pid for i, p in enumerate(self.procs)}

    def dead(self) -> list[str]:
        return [f"ipam-{i}" for i, p in enumerate(self.procs) if p.poll() is not None]


async def gather_replies(nc: Nats, subject: str, count: int, wait: float) -> list[bytes]:
    """The replies to one request (one per replica): ``count`` of them, or what came within
    ``wait`` seconds."""
    inbox = nc.new_inbox()
    replies: list[bytes] = []
    enough = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        replies.append(msg.data)
        if len(replies) >= count:
            enough.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(subject, b"", reply=inbox)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(enough.wait(), wait)
    await sub.unsubscribe()
    return replies


async def wait_replicas(nc: Nats, count: int, timeout: float) -> float:
    start = now()
    while len(await gather_replies(nc, "$SRV.PING.vpcbus-ipam", count, 0.1)) < count:
        if now() - start > timeout:
            raise TimeoutError(f"{count} IPAM replicas not up after {timeout} s")
    return now() - start


async def replica_stats(nc: Nats, count: int) -> list[dict[str, Any]]:
    out = []
    for raw in await gather_replies(nc, "$SRV.STATS.vpcbus-ipam", count, 10.0):
        for endpoint in json.loads(raw).get("endpoints") or []:
            if isinstance(endpoint.get("data"), dict):
                out.append(endpoint["data"])
    return out


# -- watching IPAM's statuses ---------------------------------------------------------------


@dataclass
class Watch:
    """When each NIC was first listed Ready in an IPAM status, and which projects are up."""

    published: dict[str, float] = field(default_factory=dict)  # "<project>/<member>" -> t
    ready: dict[str, float] = field(default_factory=dict)
    projects_ready: set[str] = field(default_factory=set)
    target: int = 0  # NICs to wait for (set before the burst)
    statuses: int = 0
    status_bytes: int = 0
    errors: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_status(self, msg: Msg) -> None:
        at = now()
        if not msg.data:
            return
        self.statuses += 1
        self.status_bytes += len(msg.data)
        body = json.loads(msg.data)
        project = body["project"]
        if body["state"] == "Ready":
            self.projects_ready.add(project)
        for member in body.get("members") or ():
            if member["state"] == "Ready":
                self.ready.setdefault(f"{project}/{member['member']}", at)
        if self.target and len(self.ready) >= self.target:
            self.done.set()

    async def on_error(self, _msg: Msg) -> None:
        self.errors += 1

    async def until(self, predicate: Any, timeout: float, what: str) -> bool:
        deadline = now() + timeout
        last_print = now()
        while not predicate():
            if now() > deadline:
                return False
            if now() - last_print > 10:
                print(f"    ... {what}: {len(self.ready)}/{len(self.published)}", flush=True)
                last_print = now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.2)
        return True


def project_names(count: int) -> list[str]:
    return [f"p{i}" for i in range(count)]


def nic(i: int, projects: list[str]) -> WorkloadSpec:
    return WorkloadSpec(
        organization=ORG,
        project=projects[i % len(projects)],
        kind="pod" if i % 2 else "vm",
        name=f"w{i}",
    )


async def create_projects(js: JetStreamContext, watch: Watch, projects: list[str]) -> float:
    start = now()
    for i, name in enumerate(projects):
        spec = ProjectSpec(
            organization=ORG, name=name, cidr_block=f"10.{i}.0.0/16", egress_network_type="cloud"
        )
        body = events.new_event(subjects.PROJECT_CREATED, spec)
        await js.publish(
            subjects.PROJECT_CREATED,
            json.dumps(body).encode(),
            headers={"Nats-Msg-Id": str(body["id"])},
        )
    ok = await watch.until(lambda: watch.projects_ready >= set(projects), 60, "projects")
    if not ok:
        raise TimeoutError(f"projects not Ready: {sorted(set(projects) - watch.projects_ready)}")
    return now() - start


async def burst(
    js: JetStreamContext, watch: Watch, nics: list[WorkloadSpec], timeout: float
) -> dict[str, Any]:
    bodies = []
    for spec in nics:
        body = events.new_event(subjects.WORKLOAD_ATTACHED, spec)
        bodies.append((f"{spec.project}/{spec.member}", str(body["id"]), json.dumps(body).encode()))
    watch.target = len(nics)
    start = now()
    for key, event_id, data in bodies:
        watch.published[key] = now()
        await js.publish_async(subjects.WORKLOAD_ATTACHED, data, headers={"Nats-Msg-Id": event_id})
    await js.publish_async_completed()
    published = now()
    complete = await watch.until(lambda: len(watch.ready) >= len(nics), timeout, "Ready NICs")
    end = max(watch.ready.values()) if complete else now()
    lat = [(watch.ready[k] - t) * 1000 for k, t in watch.published.items() if k in watch.ready]
    seconds = end - start
    return {
        "events": len(nics),
        "complete": complete,
        "ready": len(lat),
        "publish_seconds": round(published - start, 3),
        "seconds": round(seconds, 3),
        "rate": round(len(lat) / seconds, 1),
        "p50_ms": bench.percentile(lat, 50),
        "p99_ms": bench.percentile(lat, 99),
        "max_ms": round(max(lat), 1) if lat else None,
    }


# -- verification ---------------------------------------------------------------------------


async def kv_values(js: JetStreamContext, bucket: str, keys: str) -> dict[str, bytes]:
    kv = await js.key_value(bucket)
    out: dict[str, bytes] = {}
    watcher = await kv.watch(keys, ignore_deletes=True)
    async for entry in watcher:
        if entry is None:
            break
        if entry.value:
            out[entry.key] = entry.value
    await watcher.stop()  # type: ignore[no-untyped-call]
    return out


async def verify(
    js: JetStreamContext, nics: list[WorkloadSpec], projects: list[str]
) -> dict[str, Any]:
    """Check KV and the final statuses against the NICs that were attached."""
    # Bindings first: an address is claimed before its binding is written, so every binding
    # read here has its address in the second read even if an allocation is still running.
    values = await kv_values(js, subjects.IPAM_ADDRESSES_BUCKET, f"bind.subnet.{ORG}.>")
    values.update(await kv_values(js, subjects.IPAM_ADDRESSES_BUCKET, f"subnet.{ORG}.>"))
    want = {(n.project, n.holder) for n in nics}
    bound: dict[tuple[str, str], str] = {}
    held: dict[tuple[str, str], str] = {}  # (project, ip) -> holder
    for key, raw in values.items():
        body = json.loads(raw)
        if key.startswith("bind.subnet."):
            _, _, _, project, holder = key.split(".", 4)
            bound[(project, holder)] = body["ip"]
        elif key.startswith("subnet.") and body["held"]:
            project, ip = key.split(".", 3)[2], key.split(".", 3)[3]
            held[(project, ip)] = body["holder"]
    problems: Counter[str] = Counter()
    for (project, holder), ip in bound.items():
        if (project, holder) not in want:
            problems["binding of an unknown holder"] += 1
        if held.get((project, ip)) != holder:
            problems["binding whose address is not held by its holder"] += 1
    problems["NIC without a binding"] = len(want - set(bound))
    ips = Counter((p, ip) for (p, _h), ip in bound.items())
    problems["address bound twice"] = sum(1 for c in ips.values() if c > 1)
    problems["held address without a binding"] = len(set(held) - set(ips))
    listed = 0
    for project in projects:
        msg = await js.get_last_msg(
            subjects.STATUS_STREAM, subjects.status_subject("ipam", ORG, project), direct=True
        )
        status = json.loads(msg.data or b"{}")
        addrs = [w["ipAddress"] for w in status["addresses"]["workloads"]]
        listed += len(addrs)
        problems["address listed twice in a status"] += len(addrs) - len(set(addrs))
        for w in status["addresses"]["workloads"]:
            holder = f"{w['kind']}/{w['name']}/{w['interface']}"
            if bound.get((project, holder)) != w["ipAddress"]:
                problems["status address differs from KV"] += 1
    found = {k: v for k, v in problems.items() if v}
    return {
        "valid": not found,
        "bindings": len(bound),
        "held": len(held),
        "listed_in_statuses": listed,
        "problems": found,
    }


# -- one replica count ----------------------------------------------------------------------


@dataclass
class Config:
    replicas: list[int]
    projects: int
    events: int
    kv_sequential: int
    kv_pipelined: int
    kv_inflight: int
    allocations: int
    timeout: float
    env: dict[str, str]
    profile: Path | None
    keep: bool


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out = {k: v for k, p in pids.items() if (v := bench.cpu_seconds(p)) is not None}
    out["bench"] = bench.self_cpu_seconds()
    out["system"] = bench.system_busy_seconds()
    return out


async def run_replicas(cfg: Config, count: int, root: Path) -> dict[str, Any]:
    server = NatsServer(root / "nats")
    server.start()
    replicas = Replicas(root / "logs", server.url, count, cfg.env)
    nc = await nats.connect(server.url, name="vpcbus-bench-ipam")
    out: dict[str, Any] = {"replicas": count}
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        await bus.ensure_streams(js)
        print(f"[{count}] raw KV compare-and-set ...", flush=True)
        out["kv_cas"] = kv = await raw_kv_cas(
            js, cfg.kv_sequential, cfg.kv_pipelined, cfg.kv_inflight
        )
        print(
            f"    sequential {kv['sequential']['rate']}/s, pipelined {kv['pipelined']['rate']}/s",
            flush=True,
        )
        replicas.start()
        out["start_seconds"] = round(await wait_replicas(nc, count, 60), 3)
        watch = Watch()
        await nc.subscribe("vpcbus.status.ipam.>", cb=watch.on_status)
        await nc.subscribe("vpcbus.error.ipam.>", cb=watch.on_error)
        await nc.subscribe("vpcbus.dlq.ipam.>", cb=watch.on_error)
        projects = project_names(cfg.projects)
        out["projects_seconds"] = round(await create_projects(js, watch, projects), 3)
        nics = [nic(i, projects) for i in range(cfg.events)]
        stats_before = await replica_stats(nc, count)
        pids = {**replicas.pids(), "nats-server": server.proc.pid if server.proc else 0}
        cpu_before = cpu_of(pids)
        profiler = bench.Profiler(cfg.profile) if cfg.profile is not None else None
        if profiler is not None:
            profiler.start(replicas.pids(), f"ipam-r{count}")
        print(f"[{count}] burst of {cfg.events} workload.attached ...", flush=True)
        out["e2e"] = e2e = await burst(js, watch, nics, cfg.timeout)
        if profiler is not None:
            out["profile"] = profiler.stop()
        out["cpu_seconds"] = bench.cpu_delta(cpu_before, cpu_of(pids))
        stats_after = await replica_stats(nc, count)
        out["reconciles"] = sum(s["reconciles"] for s in stats_after) - sum(
            s["reconciles"] for s in stats_before
        )
        out["status_messages"] = watch.statuses
        out["status_mib"] = round(watch.status_bytes / 2**20, 1)
        out["errors_seen"] = watch.errors
        print(
            f"    {e2e['ready']}/{e2e['events']} Ready in {e2e['seconds']} s: {e2e['rate']}/s, "
            f"p50 {e2e['p50_ms'] or 0:.0f} ms p99 {e2e['p99_ms'] or 0:.0f} ms, "
            f"cpu {out['cpu_seconds']}",
            flush=True,
        )
        await asyncio.sleep(1.0)  # let the last reconciles publish their final status
        out["verify"] = v = await verify(js, nics, projects)
        print(f"    verify: {'ok' if v['valid'] else 'INVALID'} {v}", flush=True)
        out["dead"] = replicas.dead()
    finally:
        replicas.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)
        server.stop()
    return out


# -- summary --------------------------------------------------------------------------------


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    pure = result["pure_allocator"]["rate"]
    runs = {r["replicas"]: r for r in result["runs"] if "e2e" in r}
    out: dict[str, float | None] = {}

    def rate(r: dict[str, Any]) -> float:
        return float(r["e2e"]["rate"]) if r["verify"]["valid"] else 0.0

    for n, r in runs.items():
        out[f"e2e/raw KV CAS pipelined, {n} replica(s)"] = round(
            rate(r) / r["kv_cas"]["pipelined"]["rate"], 3
        )
        out[f"e2e/raw KV CAS sequential, {n} replica(s)"] = round(
            rate(r) / r["kv_cas"]["sequential"]["rate"], 3
        )
        out[f"e2e/pure allocator, {n} replica(s)"] = round(rate(r) / pure, 4)
        out[f"e2e/target 10,000/s, {n} replica(s)"] = round(rate(r) / TARGET_RATE, 3)
    if 1 in runs and 3 in runs and rate(runs[1]):
        out["3 replicas / 1 replica"] = round(rate(runs[3]) / rate(runs[1]), 3)
    out["pure allocator / Kube-OVN 53,000/s"] = round(pure / KUBE_OVN_RATE, 3)
    return out


def print_table(result: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    rows.append(
        ("pure allocator (in memory, no I/O)", f"{result['pure_allocator']['rate']:,.0f}/s")
    )
    for r in result["runs"]:
        n = r["replicas"]
        if "kv_cas" in r:
            kv = r["kv_cas"]
            rows.append((f"[{n}] raw KV CAS sequential", f"{kv['sequential']['rate']:,.0f}/s"))
            rows.append(
                (
                    f"[{n}] raw KV CAS pipelined ({kv['pipelined']['inflight']} in flight)",
                    f"{kv['pipelined']['rate']:,.0f}/s",
                )
            )
        if "e2e" in r:
            e = r["e2e"]
            valid = "valid" if r["verify"]["valid"] else "INVALID"
            rows.append(
                (
                    f"[{n}] e2e {e['ready']}/{e['events']} NICs Ready ({valid})",
                    f"{e['rate']:,.0f}/s in {e['seconds']} s",
                )
            )
            rows.append(
                (
                    f"[{n}] e2e latency p50 / p99",
                    f"{e['p50_ms'] or 0:,.0f} / {e['p99_ms'] or 0:,.0f} ms",
                )
            )
            rows.append(
                (
                    f"[{n}] reconciles / status messages ({r['status_mib']} MiB)",
                    f"{r['reconciles']} / {r['status_messages']}",
                )
            )
            cpu = r["cpu_seconds"]
            rows.append(
                (
                    f"[{n}] CPU s: " + ", ".join(sorted(cpu)),
                    " ".join(f"{cpu[k]:g}" for k in sorted(cpu)),
                )
            )
        if "error" in r:
            rows.append((f"[{n}] failed", r["error"]))
    for name, value in result["ratios"].items():
        verdict = ""
        if name.startswith("e2e/target") and value is not None:
            verdict = "  ok" if value >= 1 else "  MISS"
        rows.append((name, f"{value}{verdict}"))
    width = max(len(k) for k, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--replicas", default="1,3", help="IPAM replica counts, comma-separated")
    p.add_argument("--projects", type=int, default=20)
    p.add_argument("--events", type=int, default=20_000, help="workload.attached in the burst")
    p.add_argument("--kv-sequential", type=int, default=2_000)
    p.add_argument("--kv-pipelined", type=int, default=20_000)
    p.add_argument("--kv-inflight", type=int, default=256)
    p.add_argument("--allocations", type=int, default=60_000, help="pure allocator loop")
    p.add_argument("--timeout", type=float, default=300.0, help="per burst, seconds")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra IPAM environment, e.g. VPCBUS_WORKERS=32",
    )
    p.add_argument("--profile", type=Path, help="py-spy every replica during the burst")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results-ipam.json")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    cfg = Config(
        replicas=[int(x) for x in args.replicas.split(",") if x.strip()],
        projects=args.projects,
        events=args.events,
        kv_sequential=args.kv_sequential,
        kv_pipelined=args.kv_pipelined,
        kv_inflight=args.kv_inflight,
        allocations=args.allocations,
        timeout=args.timeout,
        env=dict(kv.split("=", 1) for kv in args.env),
        profile=args.profile,
        keep=args.keep,
    )
    return args, cfg


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="vpcbus-bench-ipam-"))
    started = time.time()
    print(
        f"vpcbus IPAM bench: replicas {cfg.replicas}, {cfg.events} NICs over "
        f"{cfg.projects} projects, workdir {root}",
        flush=True,
    )
    result: dict[str, Any] = {
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "command": [Path(sys.executable).name, *sys.argv],
        "config": {
            **vars(args),
            "out": str(args.out),
            "profile": str(args.profile or ""),
            "service_env": {**SERVICE_ENV, **cfg.env},
        },
        "machine": bench.machine(),
        "targets": {"e2e_3_replicas_min": TARGET_RATE, "kube_ovn_in_memory": KUBE_OVN_RATE},
        "runs": [],
    }
    interrupted = False
    try:
        print(f"pure allocator, {cfg.allocations} allocations ...", flush=True)
        result["pure_allocator"] = pure_allocator(cfg.allocations)
        for count in cfg.replicas:
            try:
                result["runs"].append(asyncio.run(run_replicas(cfg, count, root / f"r{count}")))
            except Exception as exc:
                print(f"    failed: {exc!r}", flush=True)
                result["runs"].append({"replicas": count, "error": repr(exc)})
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["interrupted"] = interrupted
    result["wall_seconds"] = round(time.time() - started, 1)
    if "pure_allocator" in result:
        result["ratios"] = ratios(result)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print()
    if "ratios" in result:
        print_table(result)
    print(f"\nwall {result['wall_seconds']} s; results: {args.out}")
    for run in result["runs"]:
        for name, prof in (run.get("profile") or {}).items():
            print(f"\n-- profile {name} ({prof['samples']} samples), own time:")
            for frame, share in prof["own"][:12]:
                print(f"   {share:6.1%}  {frame}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
