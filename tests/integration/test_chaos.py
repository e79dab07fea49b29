"""Chaos (issue 6): a burst of project, NIC, EIP, FIP and LoadBalancer events against the
stack ``vpcbus up`` supervises, while the stack is hurt, and then the invariants.

The stack is the embedded one, started with the CLI as a user starts it (``vpcbus up
--no-chassis``, its own home and port) with a short resync (:data:`RESYNC`): its supervisor
restarts every service it loses. The burst (seeded; the seed is printed) has creates,
updates (a project's CIDR grows and shrinks, a service changes its ports), deletes and
re-creates, each entity's events carrying increasing generations but published only
roughly in order (neighbours swapped), duplicates (re-published with ``Nats-Msg-Id``, which
the stream drops, and without, which the services see twice), member events of projects
that never exist, deletes of things never created or already gone, and a public project
(refused: public projects are disabled). Meanwhile:

* ``kill -9`` of a random service at random moments; the supervisor must restart each;
* a nats-server ``kill -9`` and restart on the same port and store (JetStream on disk):
  services and publisher reconnect and carry on;
* the OVN NB ``ovsdb-server`` restarted (its data kept).

Then, once every consumer has caught up (what a killed process had in flight comes back
after the 30 s ack wait): every project is at the generation of its last event in all four
statuses (Ready, or for the public one IPAM's Error with the others Pending), every member
of it at its last generation (Ready, or the FIP on a detached VM in Error); the members of
the projects that never existed wait with ``ProjectNotFound``; IPAM's address bucket holds
no duplicate, exactly one address per live NIC and per live EIP and nothing for what is
gone; the NB rows of every project are exactly what the statuses say
(:func:`invariants.nb_problems`: router, switch, ports with IPAM's addresses, route,
SNAT and FIP rules, load balancers, DNS zone) and deleted projects have none.

Drift: in three converged projects NB rows are deleted, changed by hand, or all of the
project's rows wiped; each must be repaired within :data:`DRIFT_BOUND` (the documented
bound: a resync period to be noticed, one more for a dependent service that converges after
its peer, plus slack for a loaded machine). Last, everything is deleted: the NB, the KV
buckets and the status stream then hold nothing of the org (after the tombstone time).

The test logs in as the stack's ``admin`` (it reads every bucket, as an operator would).
It runs in about 100 s (the tombstone time, :data:`TOMBSTONE`, is most of the last part);
the figures (events, faults by kind, redeliveries, durations) are printed (``-s``), and
``VPCBUS_CHAOS_SEED=<seed>`` replays a printed plan and schedule (the faults' moments vary).

The module's last test is the regression test of a bug the chaos run found.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from pydantic import BaseModel

from tests.conftest import ServiceProcs
from tests.integration import helpers, invariants
from vpcbus import auth, stack
from vpcbus.client import Client, Statuses, member_at
from vpcbus.embedded import procs
from vpcbus.embedded.natsd import NatsServer, free_port
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_ipam.reconciler import eip_holder, fip_holder, gateway_holder, service_holder
from vpcbus_proto import events, names, permissions, subjects
from vpcbus_proto.members import (
    EipRef,
    EipSpec,
    FipRef,
    FipSpec,
    LbServiceRef,
    LbServiceSpec,
    ServicePort,
    VmTarget,
    WorkloadRef,
    WorkloadSpec,
)
from vpcbus_proto.projects import EgressNetworkType, ProjectRef, ProjectSpec
from vpcbus_proto.status import ServiceStatus

pytestmark = [pytest.mark.connected]

ORG = "chaos"
PROJECTS = tuple(f"p{i}" for i in range(8))
PUBLIC = "pub"  # egressNetworkType public: IPAM refuses it (public projects are disabled)
GHOSTS = ("ghost0", "ghost1")  # never created: ghost0 gets NICs and an EIP, ghost1 deletes
CIDRS = ("10.0.0.0/24", "10.0.0.0/23")
#: Service settings of the run. The tombstone time must outlive a redelivery (ack wait
#: 30 s) of an older event of a deleted entity, or that event would bring it back.
RESYNC = 3.0
TOMBSTONE = 45.0
QUARANTINE = 1.0
#: Drift is repaired within this (seconds): see the module docstring.
DRIFT_BOUND = 2 * RESYNC + 10.0
#: Redelivery of what a killed service had in flight waits for the 30 s ack wait; an address
#: a killed IPAM left claimed but unbound is swept after 60 s.
SETTLE_TIMEOUT = 120.0
CLEAN_TIMEOUT = TOMBSTONE + 60.0
MIN_KILLS = 8
#: Pods per project beside the named NICs: load, so that faults hit work in flight.
BULK = 20
CHUNK = 60
CHASSIS = stack.CHASSIS_NAME


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    subject: str
    data: BaseModel
    entity: str  # "<project>" or "<project>/<member key>"
    generation: int


@dataclass
class Plan:
    events: list[Event] = field(default_factory=list)

    def add(self, subject: str, data: BaseModel, entity: str) -> None:
        generation = 1 + sum(1 for e in self.events if e.entity == entity)
        self.events.append(Event(subject, data, entity, generation))

    def last(self) -> dict[str, Event]:
        """Each entity's event with the highest generation: what it must end as."""
        out: dict[str, Event] = {}
        for ev in self.events:
            if ev.entity not in out or ev.generation > out[ev.entity].generation:
                out[ev.entity] = ev
        return out


REMOVALS = (*subjects.MEMBER_REMOVALS, subjects.PROJECT_DELETED)


def member_of(data: BaseModel) -> str:
    member = getattr(data, "member", None)
    assert isinstance(member, str)
    return member


def project_spec(project: str, cidr: str, egress: EgressNetworkType = "cloud") -> ProjectSpec:
    return ProjectSpec(organization=ORG, name=project, cidr_block=cidr, egress_network_type=egress)


def toggle(plan: Plan, entity: str, times: int, up: Sequence[tuple[str, BaseModel]],
           down: tuple[str, BaseModel]) -> None:  # fmt: skip
    """``times`` events alternating up (created/attached: ``up[i]`` in turn) and down."""
    for i in range(times):
        subject, data = up[(i // 2) % len(up)] if i % 2 == 0 else down
        plan.add(subject, data, entity)


#: The named NICs of a project (kind, name, interface, static address).
NICS = [
    ("vm", "vm-0", "default", None),
    ("vm", "vm-0", "net1", None),
    ("vm", "vm-1", "default", None),
    ("vm", "vm-2", "default", "10.0.0.200"),
    ("pod", "pod-0", "default", None),
    ("pod", "pod-1", "default", None),
    ("pod", "pod-2", "default", None),
    ("vm", "vm-3", "default", "10.0.0.201"),
]


def project_events(plan: Plan, rng: random.Random, index: int, project: str) -> None:
    """Created, then updates (the CIDR grows or shrinks), deletes and re-creates."""
    ref = ProjectRef(organization=ORG, name=project)
    plan.add(subjects.PROJECT_CREATED, project_spec(project, CIDRS[0]), project)
    alive = True
    for _ in range(rng.randint(0, 3)):
        if alive and rng.random() < 0.7:
            plan.add(subjects.PROJECT_UPDATED, project_spec(project, rng.choice(CIDRS)), project)
        elif alive:
            plan.add(subjects.PROJECT_DELETED, ref, project)
            alive = False
        else:
            plan.add(subjects.PROJECT_CREATED, project_spec(project, CIDRS[0]), project)
            alive = True
    if index in (3, 6):  # a project deleted twice (two events)
        plan.add(subjects.PROJECT_DELETED, ref, project)
        plan.add(subjects.PROJECT_DELETED, ref, project)
    elif index in (1, 2, 4) and not alive:  # these end live (drift needs three)
        plan.add(subjects.PROJECT_CREATED, project_spec(project, CIDRS[1]), project)


def member_events(plan: Plan, rng: random.Random, project: str) -> None:
    """NICs attached and detached, EIPs and FIPs created and deleted, LoadBalancer services
    created, updated and deleted; and deletes of things that never existed."""
    where = {"organization": ORG, "project": project}
    nics = NICS + [("pod", f"bulk-{i}", "default", None) for i in range(BULK)]
    for kind, name, iface, ip in nics:
        nic = WorkloadSpec(kind=kind, name=name, interface=iface, ip=ip, **where)
        detach = WorkloadRef(kind=kind, name=name, interface=iface, **where)
        up = [(subjects.WORKLOAD_ATTACHED, nic)]
        toggle(plan, f"{project}/{nic.member}", rng.randint(1, 4), up,
               (subjects.WORKLOAD_DETACHED, detach))  # fmt: skip
    for name in ("e0", "e1"):
        eip = EipSpec(name=name, **where)
        down = (subjects.EIP_DELETED, EipRef(name=name, **where))
        toggle(plan, f"{project}/{eip.member}", rng.randint(1, 3), [(subjects.EIP_CREATED, eip)],
               down)  # fmt: skip
    # f-ip's target moves when it is created again; f-vm is Ready only while vm-0 is attached.
    targets = [FipSpec(name="f-ip", ip_address=ip, **where) for ip in ("10.0.0.150", "10.0.0.151")]
    fips = {
        "f-ip": [(subjects.FIP_CREATED, f) for f in targets],
        "f-vm": [(subjects.FIP_CREATED,
                  FipSpec(name="f-vm", vm_target=VmTarget(vm_name="vm-0"), **where))],
    }  # fmt: skip
    for name, creates in fips.items():
        toggle(plan, f"{project}/fip.{name}", rng.randint(1, 3), creates,
               (subjects.FIP_DELETED, FipRef(name=name, **where)))  # fmt: skip
    for name in ("s-gw", "s-own"):
        entity = f"{project}/service.{name}"
        present = False
        for t in range(rng.randint(1, 3)):
            if present and rng.random() < 0.4:
                plan.add(subjects.SERVICE_DELETED, LbServiceRef(name=name, **where), entity)
                present = False
            else:
                subject = subjects.SERVICE_UPDATED if present else subjects.SERVICE_CREATED
                plan.add(subject, lb_service(name, t, where), entity)
                present = True
    never = WorkloadRef(kind="vm", name="never", **where)
    plan.add(subjects.WORKLOAD_DETACHED, never, f"{project}/{never.member}")
    plan.add(subjects.EIP_DELETED, EipRef(name="never", **where), f"{project}/eip.never")


def lb_service(name: str, version: int, where: dict[str, str]) -> LbServiceSpec:
    """``s-gw`` on the default-gw EIP, ``s-own`` on its own; updates move the target ports."""
    if name == "s-gw":
        ports = [ServicePort(port=8000, target_port=80 + version)]
        return LbServiceSpec(name=name, ports=ports, endpoints=["10.0.0.160"],
                             bind_on_default_gw_eip=True, **where)  # fmt: skip
    ports = [ServicePort(port=2222, target_port=22 + version),
             ServicePort(port=53, target_port=5353 + version, protocol="UDP")]  # fmt: skip
    return LbServiceSpec(name=name, ports=ports, endpoints=["10.0.0.161", "10.0.0.162"], **where)


def make_plan(rng: random.Random) -> Plan:
    plan = Plan()
    for index, project in enumerate(PROJECTS):
        project_events(plan, rng, index, project)
        member_events(plan, rng, project)
    plan.add(subjects.PROJECT_CREATED, project_spec(PUBLIC, CIDRS[0], "public"), PUBLIC)
    plan.add(subjects.PROJECT_UPDATED, project_spec(PUBLIC, CIDRS[1], "public"), PUBLIC)
    ghost = {"organization": ORG, "project": GHOSTS[0]}
    for name in ("lost-0", "lost-1"):
        nic = WorkloadSpec(kind="vm", name=name, **ghost)
        plan.add(subjects.WORKLOAD_ATTACHED, nic, f"{GHOSTS[0]}/{nic.member}")
    plan.add(subjects.EIP_CREATED, EipSpec(name="lost", **ghost), f"{GHOSTS[0]}/eip.lost")
    plan.add(subjects.PROJECT_DELETED, ProjectRef(organization=ORG, name=GHOSTS[1]), GHOSTS[1])
    gone = WorkloadRef(kind="pod", name="gone", organization=ORG, project=GHOSTS[1])
    plan.add(subjects.WORKLOAD_DETACHED, gone, f"{GHOSTS[1]}/{gone.member}")
    return plan


def schedule(plan: Plan, rng: random.Random) -> list[Event]:
    """Every event at a random moment, each entity's in order; then 3% of neighbours
    swapped, which sometimes publishes an entity's later event first."""
    by_entity: dict[str, list[Event]] = {}
    for ev in plan.events:
        by_entity.setdefault(ev.entity, []).append(ev)
    timed = [
        (moment, ev)
        for evs in by_entity.values()
        for ev, moment in zip(evs, sorted(rng.random() for _ in evs), strict=True)
    ]
    out = [ev for _, ev in sorted(timed, key=lambda t: t[0])]
    for i in rng.sample(range(len(out) - 1), len(out) * 3 // 100):
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


# -- the stack and its faults ------------------------------------------------------------------


class Stack:
    """``vpcbus up`` in a home of its own, and the faults the test does to it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.nats: NatsServer | None = None  # the replacement after a nats-server restart
        self.faults: Counter[str] = Counter()
        self.killed: Counter[str] = Counter()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "vpcbus", "--home", str(self.home), *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=180)

    @property
    def state(self) -> stack.StackState:
        state = stack.load_state(self.home)
        assert state is not None, self.log_tail()
        return state

    @property
    def ovn(self) -> OvnCentral:
        return OvnCentral(self.home / "ovn")  # the supervisor's OVN: same directory

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for path in sorted((self.home / "logs").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def kill_service(self, name: str) -> bool:
        """SIGKILL the service's process, unless it is between a death and its restart."""
        pid = self.state.services.get(name)
        if pid is None or f"vpcbus_{name}" not in procs.cmdline(pid):
            return False
        os.kill(pid, signal.SIGKILL)
        self.faults[f"kill -9 {name}"] += 1
        self.killed[name] += 1
        return True

    def _nats_pid(self) -> int:
        store = str(self.home / "nats" / "jetstream")
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                argv = procs.cmdline(int(entry.name))
                if argv and argv[0].endswith("nats-server") and store in argv:
                    return int(entry.name)
        raise AssertionError(f"no nats-server with store {store}")

    def restart_nats(self) -> None:
        """SIGKILL the supervisor's nats-server, then start one on the same port and store."""
        port = int(self.state.nats_url.rsplit(":", 1)[1])
        pid = self._nats_pid()
        os.kill(pid, signal.SIGKILL)
        procs.wait_until(lambda: not procs.cmdline(pid), timeout=10)
        time.sleep(1.0)  # the bus is down for a moment
        config = self.home / auth.AUTH_DIR / auth.SERVER_DIR / auth.SERVER_CONFIG
        self.nats = NatsServer(self.home / "nats", port=port, config=config)
        self.nats.start(timeout=30)
        self.faults["nats-server kill -9 + restart"] += 1

    def restart_nb(self) -> None:
        self.ovn.restart_nb()
        self.faults["OVN NB ovsdb-server restart"] += 1


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("chaos-home")
    env = {
        **os.environ,
        "VPCBUS_RESYNC_SECONDS": str(RESYNC),
        "VPCBUS_TOMBSTONE_SECONDS": str(TOMBSTONE),
        "VPCBUS_IP_QUARANTINE_SECONDS": str(QUARANTINE),
        "VPCBUS_LOG_FORMAT": "json",
        "VPCBUS_LOG_LEVEL": "info",
    }
    for var in ("NATS_URL", "OVN_NB_DB", "OVN_SB_DB", "VPCBUS_HOME"):
        env.pop(var, None)
    s = Stack(home, env)
    up = s.cli("up", "--no-chassis", "--nats-port", str(free_port()))
    assert up.returncode == 0, up.stdout + up.stderr + s.log_tail()
    try:
        yield s
    finally:
        down = s.cli("down")
        if s.nats is not None:
            s.nats.stop()
        assert down.returncode == 0, down.stdout + down.stderr


async def connect(s: Stack) -> Client:
    """The operator's client (the stack's ``admin`` user: it reads every bucket), which like
    the services reconnects forever (the test restarts nats)."""
    login = auth.login(s.home / auth.AUTH_DIR, permissions.ADMIN)

    async def quiet(_exc: Exception) -> None:
        """Connection errors are expected here: no traceback per attempt."""

    nc = await asyncio.wait_for(
        nats.connect(s.state.nats_url, name="vpcbus-chaos", max_reconnect_attempts=-1,
                     reconnect_time_wait=0.2, connect_timeout=2, error_cb=quiet,
                     **login.options()),
        timeout=30,
    )  # fmt: skip
    client = Client(nc)
    await client.ensure_streams()
    return client


# -- publishing through the faults -------------------------------------------------------------


@dataclass
class Figures:
    published: int = 0
    duplicates: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    swapped: int = 0


async def retrying(what: Callable[[], Awaitable[Any]], figures: Figures) -> Any:
    """Publish through a nats-server restart: the same Nats-Msg-Id again, so once only."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        try:
            return await what()
        except (nats.errors.Error, TimeoutError, OSError):
            if loop.time() > deadline:
                raise
            figures.retries += 1
            await asyncio.sleep(0.3)


async def publish(
    client: Client, burst: list[Event], rng: random.Random, f: Figures, chunk: asyncio.Event
) -> None:
    """The burst in chunks sent at once (so only roughly in order), with pauses; ``chunk``
    is set after each."""
    for start in range(0, len(burst), CHUNK):
        jobs = []
        for ev in burst[start : start + CHUNK]:
            body = events.new_event(ev.subject, ev.data, source="/tests/chaos",
                                    generation=ev.generation)  # fmt: skip
            send = functools.partial(client.publish_body, ev.subject, body)
            jobs.append(retrying(send, f))
            f.published += 1
            if rng.random() < 0.03:  # the same event again, deduplicated by the stream
                jobs.append(retrying(send, f))
                f.duplicates["with Nats-Msg-Id"] += 1
            elif rng.random() < 0.03:  # ... or not: the services see it twice
                raw = json.dumps(body).encode()
                again = functools.partial(
                    client.js.publish, ev.subject, raw, stream=subjects.EVENTS_STREAM
                )
                jobs.append(retrying(again, f))
                f.duplicates["without"] += 1
        await asyncio.gather(*jobs)
        chunk.set()
        await asyncio.sleep(rng.uniform(0.5, 1.5))


async def inject(
    s: Stack, rng: random.Random, chunk: asyncio.Event, burst_done: asyncio.Event
) -> None:
    """Kill a random service shortly after a chunk went out (while the services chew on it),
    until the burst is out and at least MIN_KILLS were done; restart nats-server after the
    third kill and the NB after the sixth, while events keep coming. Gives up a minute
    after the burst when no service is there to kill (the supervisor restarts none)."""
    kills = 0
    loop = asyncio.get_running_loop()
    give_up = math.inf
    while kills < MIN_KILLS or not burst_done.is_set():
        if burst_done.is_set():
            give_up = min(give_up, loop.time() + 60)
            if loop.time() > give_up:
                return
            await asyncio.sleep(rng.uniform(0.5, 2.0))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(chunk.wait(), timeout=5)
            chunk.clear()
            await asyncio.sleep(rng.uniform(0.0, 0.6))
        name = rng.choice(subjects.SERVICES)
        if not await asyncio.to_thread(s.kill_service, name):
            continue  # between its death and its restart by the supervisor
        kills += 1
        if kills == 3:
            await asyncio.to_thread(s.restart_nats)
        if kills == 6:
            await asyncio.to_thread(s.restart_nb)


async def redeliveries(client: Client) -> dict[str, int]:
    """Events each service's current process got more than once (``$SRV.STATS``): what the
    kills and the nats restart had left in flight, redelivered."""
    out: dict[str, int] = {}
    for name in subjects.SERVICES:
        reply = await client.nc.request(f"$SRV.STATS.vpcbus-{name}", b"", timeout=5)
        stats = json.loads(reply.data)
        out[name] = sum(int((e.get("data") or {}).get("redelivered", 0))
                        for e in stats.get("endpoints", []))  # fmt: skip
    return out


async def wait_services(client: Client, s: Stack, timeout: float = 90.0) -> None:
    """Every service runs again (the supervisor restarted the killed ones) and answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(subjects.SERVICES)
    while pending:
        for name in sorted(pending):
            try:
                await client.nc.request(f"$SRV.PING.vpcbus-{name}", b"", timeout=1)
                pending.discard(name)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
        assert loop.time() < deadline or not pending, f"not serving: {pending}\n{s.log_tail()}"
        await asyncio.sleep(0.3)


# -- the invariants ----------------------------------------------------------------------------


@dataclass
class Expected:
    """What the plan's last events ask for."""

    live: dict[str, ProjectSpec]  # cloud projects that end created
    refused: dict[str, int]  # the public project: its last generation
    deleted: dict[str, int]  # projects that end deleted (or were only ever deleted)
    generation: dict[str, int]  # last generation of each project
    members: dict[str, dict[str, Event]]  # project -> member -> its last event (present only)
    gone: dict[str, dict[str, int]]  # project -> removed member -> its last generation


def expected(plan: Plan) -> Expected:
    last = plan.last()
    out = Expected({}, {}, {}, {}, {}, {})
    for entity, ev in last.items():
        project, _, member = entity.partition("/")
        if not member:
            out.generation[project] = ev.generation
            if ev.subject == subjects.PROJECT_DELETED:
                out.deleted[project] = ev.generation
            elif isinstance(ev.data, ProjectSpec) and ev.data.egress_network_type == "public":
                out.refused[project] = ev.generation
            else:
                assert isinstance(ev.data, ProjectSpec)
                out.live[project] = ev.data
        elif ev.subject in REMOVALS:
            out.gone.setdefault(project, {})[member] = ev.generation
        else:
            out.members.setdefault(project, {})[member] = ev
    return out


def member_problems(st: ServiceStatus, want: Expected, project: str) -> list[str]:
    """IPAM's member states against the plan, and its facts against the member specs."""
    problems = []
    facts = st.addresses
    members = want.members.get(project, {})
    nic_present = {m for m in members if m.startswith("workload.")}
    for member, ev in members.items():
        state = st.member(member)
        must = "Ready"
        if member == "fip.f-vm" and "workload.vm.vm-0.default" not in nic_present:
            must = "Error"
        if state is None or state.generation != ev.generation or state.state != must:
            problems.append(f"{project}: {member} at {ev.generation} want {must}, is {state}")
    for member, generation in want.gone.get(project, {}).items():
        state = st.member(member)
        if state is not None and (state.state != "Deleted" or state.generation != generation):
            problems.append(f"{project}: {member} removed at {generation}, is {state}")
    if facts is None:
        return [*problems, f"{project}: IPAM reports no addresses"]
    spec = want.live[project]
    if facts.cidr_block != spec.cidr_block:
        problems.append(f"{project}: cidr {facts.cidr_block}, want {spec.cidr_block}")
    listed = {w.member: w for w in facts.workloads}
    if set(listed) != nic_present:
        problems.append(f"{project}: NICs {sorted(listed)}, want {sorted(nic_present)}")
    for member in nic_present & set(listed):
        data = members[member].data
        assert isinstance(data, WorkloadSpec)
        w = listed[member]
        if data.ip is not None and (w.ip_address != data.ip or not w.static):
            problems.append(f"{project}: {member} asked for {data.ip}, has {w.ip_address}")
        if not invariants.usable(w.ip_address, spec.cidr_block, facts.gateway_ip):
            problems.append(f"{project}: {member} has {w.ip_address}")
    ips = [w.ip_address for w in facts.workloads]
    if len(ips) != len(set(ips)):
        problems.append(f"{project}: duplicate NIC addresses {sorted(ips)}")
    eips = {e.name for e in facts.eips}
    want_eips = {"default-gw"} | {m.split(".", 1)[1] for m in members if m.startswith("eip.")}
    key = names.project_key(ORG, project)
    want_eips |= {
        names.fip_eip_name(key, m.split(".", 1)[1]) for m in members if m.startswith("fip.")
    }
    if "service.s-own" in members:
        want_eips.add(names.service_eip_name(key, "s-own"))
    if eips != want_eips:
        problems.append(f"{project}: EIPs {sorted(eips)}, want {sorted(want_eips)}")
    for svc in facts.services:
        asked = members.get(f"service.{svc.name}")
        if asked is None or not isinstance(asked.data, LbServiceSpec):
            problems.append(f"{project}: service {svc.name} should be gone")
            continue
        want_ports = sorted((p.port, p.target_port, p.protocol) for p in asked.data.ports)
        got_ports = sorted((p.port, p.target_port, p.protocol) for p in svc.ports)
        if got_ports != want_ports or not svc.ready:
            problems.append(f"{project}: service {svc.name} {got_ports} ready={svc.ready}")
    return problems


def status_problems(all_statuses: dict[str, Statuses], want: Expected) -> list[str]:
    problems = []
    for project, spec in want.live.items():
        statuses = all_statuses.get(names.project_key(ORG, project), {})
        gen = want.generation[project]
        states = {s: (st.state, st.generation) for s, st in statuses.items()}
        if states != dict.fromkeys(subjects.SERVICES, ("Ready", gen)):
            problems.append(f"{project}: {states}, want Ready at {gen} ({spec.cidr_block})")
            continue
        problems += member_problems(statuses["ipam"], want, project)
        vpc = statuses["vpc"]
        nics = {m: ev for m, ev in want.members.get(project, {}).items() if m.startswith("wor")}
        ports = {m.member: (m.state, m.generation) for m in vpc.members}
        if ports != {m: ("Ready", ev.generation) for m, ev in nics.items()}:
            problems.append(f"{project}: VPC ports {ports}")
    for project, gen in want.refused.items():
        statuses = all_statuses.get(names.project_key(ORG, project), {})
        got = {s: (st.state, st.reason, st.generation) for s, st in statuses.items()}
        if got.get("ipam") != ("Error", "PublicProjectsDisabled", gen) or any(
            got.get(s, ("",))[0] != "Pending" or got[s][2] != gen for s in ("vpc", "nat", "dns")
        ):
            problems.append(f"{project}: {got}, want IPAM's Error at {gen}, others Pending")
    for project, gen in want.deleted.items():
        statuses = all_statuses.get(names.project_key(ORG, project), {})
        bad = {s: (st.state, st.generation) for s, st in statuses.items()
               if st.state != "Deleted" or st.generation < gen}  # fmt: skip
        if bad:
            problems.append(f"{project}: deleted at {gen}, statuses {bad}")
    ghost = all_statuses.get(names.project_key(ORG, GHOSTS[0]), {})
    ipam = ghost.get("ipam")
    waiting = {m: ev.generation for m, ev in want.members.get(GHOSTS[0], {}).items()}
    if (
        ipam is None
        or ipam.state != "Pending"
        or ipam.reason != "WaitingForProject"
        or {m.member: (m.state, m.reason, m.generation) for m in ipam.members}
        != {m: ("Error", "ProjectNotFound", g) for m, g in waiting.items()}
    ):
        problems.append(f"{GHOSTS[0]}: {ipam}")
    if set(ghost) - {"ipam"}:
        problems.append(f"{GHOSTS[0]}: statuses of {sorted(ghost)}")
    return problems


def address_audit(bucket: dict[str, dict[str, Any]], want: Expected) -> list[str]:
    """No duplicates; each live NIC holds one address of its project, each live EIP (the
    gateways, user EIPs, FIPs' and services' own) one of the pool; nothing else of the org."""
    problems = invariants.address_problems(bucket)
    want_pool: set[str] = set()
    for project, members in want.members.items():
        if project not in want.live:
            continue
        key = names.project_key(ORG, project)
        nics = {ev.data.holder for ev in members.values() if isinstance(ev.data, WorkloadSpec)}
        held = invariants.holders(bucket, f"subnet.{key}")
        if set(held) != nics:
            problems.append(f"{project}: subnet holders {sorted(held)}, want {sorted(nics)}")
        for member in members:
            kind, _, name = member.partition(".")
            holder = {"eip": eip_holder, "fip": fip_holder}.get(kind)
            if holder is not None:
                want_pool.add(holder(key, name))
            if member == "service.s-own":
                want_pool.add(service_holder(key, name))
    want_pool |= {gateway_holder(names.project_key(ORG, p)) for p in want.live}
    pool = {h for h in invariants.holders(bucket, "pool.cloud") if h.startswith(f"project/{ORG}.")}
    if pool != want_pool:
        problems.append(f"pool holders differ by {sorted(pool ^ want_pool)}")
    for project in want.deleted:
        leftover = [k for k in bucket if k.startswith(f"subnet.{ORG}.{project}.")]
        if leftover:
            problems.append(f"{project}: deleted, subnet keys {leftover[:4]}")
    return problems


def nb_audit(dump: invariants.Dump, statuses: dict[str, Statuses], want: Expected) -> list[str]:
    problems = []
    for project in want.live:
        key = names.project_key(ORG, project)
        problems += invariants.nb_problems(
            dump, key, statuses.get(key, {}).get("ipam"), chassis=CHASSIS
        )
    for project in [*want.deleted, *want.refused, *GHOSTS]:
        problems += invariants.nb_problems(dump, names.project_key(ORG, project), None,
                                           chassis=CHASSIS)  # fmt: skip
    strangers = invariants.projects_in(dump) - {names.project_key(ORG, p) for p in want.live}
    if strangers:
        problems.append(f"NB rows of {sorted(strangers)}")
    return problems


async def consumers_idle(client: Client) -> list[str]:
    """Every service's durable consumer has delivered everything and nothing waits for an
    ack (the ephemeral ones of readers such as ``all_statuses`` are not the services')."""
    busy = []
    for stream in (subjects.EVENTS_STREAM, subjects.STATUS_STREAM):
        for info in await client.js.consumers_info(stream):
            durable = info.config.durable_name
            if durable and (info.num_pending or info.num_ack_pending):
                busy.append(
                    f"{durable}: {info.num_pending} pending, {info.num_ack_pending} unacked"
                )
    return busy


async def audit(client: Client, nb_db: str, want: Expected) -> list[str]:
    statuses = await client.all_statuses()
    problems = await consumers_idle(client)
    problems += status_problems(statuses, want)
    problems += address_audit(await invariants.read_addresses(client.js), want)
    problems += nb_audit(invariants.nb_dump(nb_db), statuses, want)
    return problems


async def eventually_clean(check: Callable[[], Awaitable[list[str]]], timeout: float) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    problems = await check()
    while problems and loop.time() < deadline:
        await asyncio.sleep(1.0)
        problems = await check()
    return problems


def doctor_reports_clean(s: Stack) -> None:
    """``vpcbus doctor`` against the stack exits 0: every service's dry run and audit and
    the CLI's cross-checks find nothing (it compares KV, NB and IPAM's allocations itself)."""
    done = s.cli("doctor", "--timeout", "60")
    assert done.returncode == 0, f"doctor: {done.returncode}\n{done.stdout}\n{done.stderr}"


# -- drift ------------------------------------------------------------------------------------


def drift(ovn: OvnCentral, dump: invariants.Dump, projects: list[str]) -> list[str]:
    """Break three converged projects by hand; returns what was done."""
    done = []
    deleted, changed, wiped = projects[:3]
    ns = names.namespace(ORG, deleted)
    rows = invariants.owned(dump, names.project_key(ORG, deleted))
    workloads = [p["name"] for p in rows["Logical_Switch_Port"]
                 if p["external_ids"].get("vpcbus-role") == "workload"]  # fmt: skip
    for port in workloads[:2]:
        ovn.nbctl("lsp-del", port)
    ovn.nbctl("lr-route-del", ns, "0.0.0.0/0")
    for nat in rows["NAT"]:
        ovn.nbctl("remove", "Logical_Router", ns, "nat", str(nat["_uuid"]))
    for lb in rows.get("Load_Balancer", []):
        ovn.nbctl("lb-del", str(lb["name"]))
    lbs = len(rows.get("Load_Balancer", []))
    done.append(
        f"{deleted}: deleted {len(workloads[:2])} NIC ports, the route, "
        f"{len(rows['NAT'])} NAT rows, {lbs} LBs"
    )

    ns = names.namespace(ORG, changed)
    rows = invariants.owned(dump, names.project_key(ORG, changed))
    ovn.nbctl("set", "Logical_Router_Port", f"{ns}-{ns}-default", "networks=10.9.9.1/24")
    ovn.nbctl("remove", "Logical_Router", ns, "options", "chassis")
    for nat in rows["NAT"][:1]:
        ovn.nbctl("set", "NAT", str(nat["_uuid"]), "external_ip=100.65.255.254")
    for dns in rows["DNS"]:
        ovn.nbctl("set", "DNS", str(dns["_uuid"]), 'records:"gateway.evil"="6.6.6.6"')
    for port in [p for p in rows["Logical_Switch_Port"]
                 if p["external_ids"].get("vpcbus-role") == "workload"][:1]:  # fmt: skip
        ovn.nbctl("set", "Logical_Switch_Port", str(port["_uuid"]),
                  'port_security="02:00:00:00:00:01 10.0.0.99"')  # fmt: skip
    for lb in rows.get("Load_Balancer", [])[:1]:
        ovn.nbctl("set", "Load_Balancer", str(lb["_uuid"]), 'vips:"1.2.3.4:1"="10.0.0.9:1"')
    done.append(f"{changed}: changed the LAN port, router options, a NAT rule, the zone, "
                "a NIC's port security and a load balancer")  # fmt: skip

    ns = names.namespace(ORG, wiped)
    rows = invariants.owned(dump, names.project_key(ORG, wiped))
    ovn.nbctl("lr-del", ns)
    ovn.nbctl("ls-del", f"{ns}-default")
    ovn.nbctl("lsp-del", f"ext-cloud-{ns}")
    for lb in rows.get("Load_Balancer", []):
        ovn.nbctl("lb-del", str(lb["name"]))
    for dns in rows.get("DNS", []):  # a root table: it outlives the switch
        ovn.nbctl("destroy", "DNS", str(dns["_uuid"]))
    left = invariants.owned(invariants.nb_dump(ovn.nb_db), names.project_key(ORG, wiped))
    assert not left, left
    done.append(f"{wiped}: every NB row of the project wiped")
    return done


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_chaos_burst_with_kills_restarts_and_drift_loses_nothing(
    chaos_stack: Stack,
) -> None:
    s = chaos_stack
    seed = int(os.environ.get("VPCBUS_CHAOS_SEED") or random.randrange(2**32))
    print(f"\nchaos seed {seed}")  # VPCBUS_CHAOS_SEED=<seed> replays the plan and schedule
    rng = random.Random(seed)
    plan = make_plan(rng)
    want = expected(plan)
    burst = schedule(plan, rng)
    figures = Figures(swapped=len(burst) * 3 // 100)
    client = await connect(s)
    started = time.monotonic()
    try:
        await wait_services(client, s)
        pids = dict(s.state.services)

        burst_done, chunk = asyncio.Event(), asyncio.Event()
        chaos = asyncio.create_task(inject(s, random.Random(rng.random()), chunk, burst_done))
        try:
            await publish(client, burst, rng, figures, chunk)
        finally:
            burst_done.set()
            await chaos
        burst_seconds = time.monotonic() - started
        await wait_services(client, s)
        restarted = {n for n, pid in s.state.services.items() if pid != pids[n]}
        assert restarted == set(s.killed), (restarted, s.killed)
        log = (s.home / "logs" / "stack.log").read_text()
        assert log.count("exited (-9); restarting") == sum(s.killed.values()), log[-2000:]

        settle_started = time.monotonic()
        problems = await eventually_clean(lambda: audit(client, s.state.ovn_nb_db, want),
                                          SETTLE_TIMEOUT)  # fmt: skip
        assert problems == [], "\n".join(problems[:40]) + "\n" + s.log_tail(20)
        settle_seconds = time.monotonic() - settle_started
        redelivered = await redeliveries(client)
        doctor_reports_clean(s)

        # Drift, repaired by the periodic resync within the bound.
        live = sorted(want.live)
        assert len(live) >= 3, f"seed {seed} left {live} live; drift needs three"
        drift_started = time.monotonic()
        did = drift(s.ovn, invariants.nb_dump(s.state.ovn_nb_db), rng.sample(live, 3))
        s.faults["NB drift"] += len(did)
        problems = await eventually_clean(lambda: audit(client, s.state.ovn_nb_db, want),
                                          DRIFT_BOUND)  # fmt: skip
        drift_seconds = time.monotonic() - drift_started
        assert problems == [], "\n".join(did + problems[:40])

        # Delete everything: NB, KV and the status stream hold nothing of the org after.
        delete_started = time.monotonic()
        final = [  # every project deleted at its next generation (again, for deleted ones)
            Event(subjects.PROJECT_DELETED, ProjectRef(organization=ORG, name=project),
                  project, generation + 1)
            for project, generation in want.generation.items()
        ]  # fmt: skip
        for member, ev in want.members.get(GHOSTS[0], {}).items():  # their project never came
            down = WorkloadRef if member.startswith("workload.") else EipRef
            data = down.model_validate(ev.data.model_dump(include=set(down.model_fields)))
            subject = (subjects.WORKLOAD_DETACHED if member.startswith("workload.")
                       else subjects.EIP_DELETED)  # fmt: skip
            final.append(Event(subject, data, f"{GHOSTS[0]}/{member}", ev.generation + 1))
        for ev in final:
            body = events.new_event(ev.subject, ev.data, source="/tests/chaos",
                                    generation=ev.generation)  # fmt: skip
            await client.publish_body(ev.subject, body)
            figures.published += 1

        async def empty() -> list[str]:
            problems = [f"NB rows of {k}" for k in invariants.projects_in(
                invariants.nb_dump(s.state.ovn_nb_db)) if k.startswith(f"{ORG}.")]  # fmt: skip
            for service in subjects.SERVICES:
                keys = await invariants.bucket_keys(client.js, subjects.kv_bucket(service))
                problems += [f"{service} KV {k}" for k in keys if f".{ORG}." in k]
            bucket = await invariants.read_addresses(client.js)
            problems += [f"address KV {k}" for k in invariants.keys_of(bucket, ORG)]
            statuses = await client.all_statuses()
            problems += [f"status of {k}" for k in statuses if k.startswith(f"{ORG}.")]
            return problems

        problems = await eventually_clean(empty, CLEAN_TIMEOUT)
        assert problems == [], "\n".join(problems[:40]) + "\n" + s.log_tail(20)
        delete_seconds = time.monotonic() - delete_started
        doctor_reports_clean(s)
        errors = [e for e in await client.errors(limit=100_000) if e.organization == ORG]
        dead = Counter(f"{e.service} {e.reason}" for e in errors if e.kind == "dead-letter")
        rejected = Counter(f"{e.service} {e.reason}" for e in errors if e.kind == "rejected")
        info = await client.js.stream_info(subjects.EVENTS_STREAM)
    finally:
        await client.close()
    print(
        f"chaos: {figures.published} events published ({len(burst)} in the burst, "
        f"{figures.swapped} neighbour swaps, duplicates {dict(figures.duplicates)}, "
        f"{figures.retries} publish retries through the nats restart), "
        f"{info.state.messages} stored in {subjects.EVENTS_STREAM}; faults "
        f"{dict(s.faults)}; events redelivered to the restarted processes {redelivered}; "
        f"error events {dict(rejected)}, dead letters {dict(dead)}; "
        f"burst {burst_seconds:.0f} s, settled {settle_seconds:.0f} s after it, drift "
        f"repaired in {drift_seconds:.1f} s (bound {DRIFT_BOUND:g} s), everything deleted "
        f"and forgotten in {delete_seconds:.0f} s"
    )
    # An event that kept failing would be dead-lettered; none may be under these faults.
    assert not dead, dead


# -- regressions of bugs the chaos found -------------------------------------------------------


async def test_a_restarted_ipam_forgets_the_status_of_a_project_that_never_came(
    services: ServiceProcs, client: Client, nats_server: NatsServer
) -> None:
    """A NIC of a project that does not exist makes IPAM publish a status for it (Pending,
    the NIC in ProjectNotFound). IPAM is killed; the NIC is detached meanwhile. The new
    process never published that status itself, yet it must still remove it once the NIC is
    forgotten, or the project shows forever in every listing (the chaos run's last check)."""
    nic = WorkloadSpec(organization="orphan", project="never", kind="vm", name="lost")
    watch = await client.watch("orphan", "never")
    try:
        published = await client.attach(nic)
        await watch.until(member_at(nic.member, published.generation), timeout=30)
    finally:
        await watch.stop()
    ipam = await client.status("ipam", "orphan", "never")
    assert ipam is not None and ipam.reason == "WaitingForProject"

    services.stop("ipam", kill=True)
    await client.detach(nic)
    services.start("ipam")
    await asyncio.to_thread(services.wait_registered, nats_server.url, ("ipam",))

    async def forgotten() -> bool:
        return await client.status("ipam", "orphan", "never") is None

    assert await helpers.eventually(forgotten, timeout=30), await client.status(
        "ipam", "orphan", "never"
    )
