"""Three IPAM replicas serve a burst of NIC events while one of them is killed again and again.

Issue 3's durability claim with real processes and a real nats-server (this module's own;
no OVN: IPAM allocates without it). Four projects get 300 NICs attached, detached and
re-attached (about 1,500 events; each NIC's events carry increasing generations and a few
are published out of order), some with a static address. Meanwhile one replica at a time is
SIGKILLed at a random moment and restarted. Then the test waits until IPAM's statuses and
its address bucket settle, and checks the bucket itself, the source of truth: every attached
NIC has exactly one held address and one binding and they agree, no holder holds two
addresses and no address is bound twice, no detached NIC holds anything, static requests
were honoured, IPAM's status lists the same addresses and counts them right, no event
was rejected or dead-lettered, and no replica logged an error. It takes about 40 s: what a
killed replica had in flight is redelivered only after the consumers' 30 s ack wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import nats.errors
import pytest
from nats.aio.client import Client as Nats

from tests.conftest import SERVICE_ENV, ServiceProcs
from tests.integration import helpers
from vpcbus.client import Client, Published, Statuses, member_at, member_gone
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto import subjects
from vpcbus_proto.members import WorkloadSpec
from vpcbus_proto.status import ServiceStatus

pytestmark = [pytest.mark.connected, pytest.mark.slow]

REPLICAS = ("ipam-a", "ipam-b", "ipam-c")
ORG = "chaos"
PROJECTS = ("p0", "p1", "p2", "p3")
CIDR = IPv4Network("10.0.0.0/24")  # the same in every project: subnets are per project
NICS = 300
#: Events are published in chunks with pauses, so that kills land while events arrive.
CHUNK = 100
MIN_KILLS = 5
#: Redelivery of what a killed replica had in flight waits for the consumers' ack wait
#: (30 s); an address a crash left held but unbound is swept after 60 s.
SETTLE_TIMEOUT = 100.0


@dataclass(frozen=True)
class Nic:
    """One NIC of the plan and how many events it gets: attached at odd generations,
    detached at even ones, so its last generation says whether it ends attached."""

    spec: WorkloadSpec
    events: int

    @property
    def attached(self) -> bool:
        return self.events % 2 == 1


@pytest.fixture(scope="module")
def replicas(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcs]:
    env = {
        **os.environ,
        **SERVICE_ENV,
        "NATS_URL": nats_server.url,
        # Member tombstones must outlive a redelivery (ack wait 30 s) of an older event of
        # the same NIC, or that event would bring a detached NIC back: keep the default.
        "VPCBUS_TOMBSTONE_SECONDS": "300",
    }
    procs = ServiceProcs(env, tmp_path_factory.mktemp("ipam-replicas"))
    for name in REPLICAS:
        procs.start("ipam", instance=name)
    yield procs
    procs.stop_all()


def plan(rng: random.Random) -> list[Nic]:
    """NICs ``<kind>-<n>`` with interfaces ``default`` and ``net1``, spread over the projects;
    every eighth asks for a static address at the top of the subnet (dynamic ones are
    allocated lowest first, so the two never meet)."""
    nics = []
    for i in range(NICS):
        project = PROJECTS[i % len(PROJECTS)]
        j = i // len(PROJECTS)
        kind = "vm" if (j // 2) % 3 else "pod"
        static = str(CIDR[250 - j // 8]) if j % 8 == 3 else None
        spec = WorkloadSpec(
            organization=ORG, project=project, kind=kind, name=f"{kind}-{j // 2}",
            interface="default" if j % 2 == 0 else "net1", ip=static,
        )  # fmt: skip
        nics.append(Nic(spec, rng.randint(1, 9)))
    return nics


def schedule(nics: list[Nic], rng: random.Random) -> list[tuple[Nic, int]]:
    """Every (NIC, generation) at a random moment, each NIC's in order; then 2% of
    neighbours swapped, which sometimes publishes a NIC's later event first."""
    timed = [
        (moment, nic, generation)
        for nic in nics
        for generation, moment in enumerate(sorted(rng.random() for _ in range(nic.events)), 1)
    ]
    events = [(nic, generation) for _, nic, generation in sorted(timed, key=lambda t: t[0])]
    for i in rng.sample(range(len(events) - 1), len(events) // 50):
        events[i], events[i + 1] = events[i + 1], events[i]
    return events


def send(client: Client, nic: Nic, generation: int) -> Awaitable[Published]:
    if generation % 2:
        return client.attach(nic.spec, generation=generation)
    return client.detach(nic.spec, generation=generation)


async def publish(client: Client, events: list[tuple[Nic, int]], rng: random.Random) -> None:
    """The burst: chunks of events sent at once (so only roughly in order), with pauses."""
    for start in range(0, len(events), CHUNK):
        await asyncio.gather(*(send(client, *event) for event in events[start : start + CHUNK]))
        await asyncio.sleep(rng.uniform(0.1, 0.6))


async def kill_and_restart(
    replicas: ServiceProcs, rng: random.Random, burst_published: asyncio.Event
) -> int:
    """SIGKILL one replica at a random moment and restart it, until the burst is out."""
    kills = 0
    while kills < MIN_KILLS or not burst_published.is_set():
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        victim = rng.choice(REPLICAS)
        replicas.stop(victim, kill=True)
        kills += 1
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        replicas.start("ipam", instance=victim)
    return kills


async def wait_replicas(nc: Nats, count: int, timeout: float = 30.0) -> None:
    """Until ``count`` IPAM processes answer one ``$SRV.PING`` (each answers it once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING.vpcbus-ipam", b"", reply=inbox)
        seen = set()
        try:
            while True:
                msg = await sub.next_msg(timeout=0.3)
                if msg.data:  # else a "no responders" status
                    seen.add(json.loads(msg.data)["id"])
        except nats.errors.TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        if len(seen) >= count:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"{len(seen)} of {count} IPAM replicas answer")
        await asyncio.sleep(0.2)


def ipam_ready(generation: int) -> Callable[[Statuses], bool]:
    def check(statuses: Statuses) -> bool:
        st = statuses.get("ipam")
        return st is not None and st.state == "Ready" and st.generation >= generation

    return check


async def admit(client: Client, project: str) -> None:
    watch = await client.watch(ORG, project)
    try:
        published = await client.upsert(helpers.spec(ORG, project, str(CIDR)))
        await watch.until(ipam_ready(published.generation), timeout=30, event_id=published.event_id)
    finally:
        await watch.stop()


# -- the audit ------------------------------------------------------------------------------


async def read_bucket(client: Client) -> dict[str, dict[str, object]]:
    """Every live key of IPAM's address bucket with its JSON value (one watch replay)."""
    kv = await client.js.key_value(subjects.IPAM_ADDRESSES_BUCKET)
    watcher = await kv.watchall(ignore_deletes=True)
    out = {}
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value and entry.key.startswith(("subnet.", "bind.subnet.")):
                out[entry.key] = json.loads(entry.value)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return out


def audit_bucket(bucket: dict[str, dict[str, object]], project: str, nics: list[Nic]) -> list[str]:
    """Check one project's address and binding keys against the NICs that ended attached."""
    space = f"subnet.{ORG}.{project}."
    held: dict[str, list[str]] = {}  # holder -> every address key it holds
    binds: dict[str, dict[str, object]] = {}  # holder -> its binding
    for key, value in bucket.items():
        if key.startswith(space) and value["held"]:
            held.setdefault(str(value["holder"]), []).append(key.removeprefix(space))
        elif key.startswith(f"bind.{space}"):
            binds[key.removeprefix(f"bind.{space}")] = value
    live = {nic.spec.holder: nic for nic in nics if nic.attached}
    problems = [
        f"{project}: {h} is detached but holds {ips}" for h, ips in held.items() if h not in live
    ]
    problems += [
        f"{project}: {h} is detached but bound to {b}" for h, b in binds.items() if h not in live
    ]
    for holder, nic in sorted(live.items()):
        bound = binds.get(holder)
        ips = held.get(holder, [])
        if bound is None or ips != [bound["ip"]]:
            problems.append(f"{project}: {holder} holds {ips}, bound to {bound}")
            continue
        ip = IPv4Address(str(bound["ip"]))
        if ip not in CIDR or ip in (CIDR.network_address, CIDR[1], CIDR.broadcast_address):
            problems.append(f"{project}: {holder} got {ip}, not a usable address of {CIDR}")
        if nic.spec.ip is not None and (str(ip) != nic.spec.ip or bound["static"] is not True):
            problems.append(f"{project}: {holder} asked for {nic.spec.ip}, bound to {bound}")
    for field in ("ip", "mac"):
        twice = [v for v, n in Counter(b[field] for b in binds.values()).items() if n > 1]
        problems += [f"{project}: {field} {v} is bound to two holders" for v in twice]
    return problems


def audit_status(
    st: ServiceStatus | None, bucket: dict[str, dict[str, object]], project: str, nics: list[Nic]
) -> list[str]:
    """IPAM's status of one project: every NIC settled at its last generation (Ready or
    Deleted), the listed addresses are the bound ones, and the subnet counts them."""
    if st is None or st.state != "Ready" or st.addresses is None or st.addresses.subnet is None:
        return [f"{project}: IPAM status {st and (st.state, st.reason, st.message)}"]
    statuses = {"ipam": st}
    problems = []
    for nic in nics:
        member = nic.spec.member
        state = st.member(member)
        if nic.attached:
            settled = state is not None and state.state == "Ready"
        else:
            settled = member_gone(member)(statuses)
        if not (settled and member_at(member, nic.events)(statuses)):
            problems.append(f"{project}: {member} at {nic.events} is {state}")
    space = f"bind.subnet.{ORG}.{project}."
    bound = {
        nic.spec.member: str(bucket[space + nic.spec.holder]["ip"])
        for nic in nics
        if nic.attached and space + nic.spec.holder in bucket
    }
    listed = {w.member: w.ip_address for w in st.addresses.workloads}
    if listed != bound:
        differ = sorted(set(listed.items()) ^ set(bound.items()))[:5]
        problems.append(f"{project}: status and bucket differ on {differ}")
    live = sum(nic.attached for nic in nics)
    if st.addresses.subnet.in_use != live:
        problems.append(f"{project}: in_use {st.addresses.subnet.in_use}, {live} NICs attached")
    return problems


def logged_errors(replicas: ServiceProcs) -> list[str]:
    """The error lines of the replicas' JSON logs (a reconcile that raised, a dead letter):
    neither a kill nor a lost compare-and-set race may cause one."""
    out = []
    for path in sorted(replicas.logdir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line a SIGKILL cut short
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                why = str(entry.get("exception") or entry.get("error") or "")
                out.append(f"{path.stem}: {entry.get('event')}: {why[-300:]}")
    return out


async def audit(client: Client, nics: list[Nic]) -> list[str]:
    bucket = await read_bucket(client)
    problems = []
    for project in PROJECTS:
        mine = [nic for nic in nics if nic.spec.project == project]
        st = await client.status("ipam", ORG, project)
        problems += audit_status(st, bucket, project, mine)
        problems += audit_bucket(bucket, project, mine)
    return problems


# -- the test -------------------------------------------------------------------------------


async def test_replicas_killed_during_a_burst_leave_one_address_per_live_nic(
    replicas: ServiceProcs, client: Client
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")  # shown when the test fails: plan() and schedule() replay it
    rng = random.Random(seed)
    await wait_replicas(client.nc, len(REPLICAS))
    await asyncio.gather(*(admit(client, project) for project in PROJECTS))
    nics = plan(rng)
    events = schedule(nics, rng)

    started = time.monotonic()
    burst_published = asyncio.Event()
    chaos = asyncio.create_task(
        kill_and_restart(replicas, random.Random(rng.random()), burst_published)
    )
    try:
        await publish(client, events, rng)
    finally:
        burst_published.set()
        kills = await chaos
    print(f"{len(events)} events, {kills} kills in {time.monotonic() - started:.1f} s")
    assert replicas.alive() == dict.fromkeys(REPLICAS, True)
    await wait_replicas(client.nc, len(REPLICAS))

    problems: list[str] = []

    async def settled() -> bool:
        nonlocal problems
        problems = await audit(client, nics)
        return not problems

    await helpers.eventually(settled, timeout=SETTLE_TIMEOUT, interval=1.0)
    print(f"settled {time.monotonic() - started:.1f} s after the burst began")
    assert problems == [], "\n".join(problems[:40])
    assert replicas.alive() == dict.fromkeys(REPLICAS, True)  # nobody crashed by itself
    assert logged_errors(replicas) == []
    errors = [e for e in await client.errors(limit=10_000) if e.organization == ORG]
    assert errors == [], [f"{e.kind} {e.reason}: {e.message}" for e in errors[:10]]
