"""Hostile input (issue 6): thousands of malformed, oversized, wrong-typed and boundary-value
events on every lifecycle subject the services consume, against the real stack (real
nats-server, real OVN NB/SB + northd, the four services as processes).

Each hypothesis example is a batch of bad messages: valid events of every family (built
from the contract models) mutated field by field (a field of the envelope, of ``data`` or
of a nested port or VM target set to a wrong-typed or boundary value, dropped, or joined by
an unknown one), sent on the wrong subject or with the wrong ``type``, padded around the
size limits, or replaced by bytes that are not JSON, empty, NUL-ridden or nested too deep.
Lifecycle subjects carry no org or project token (the identity is in ``data``), so the
"wrong org/project tokens" are in the body: wildcards, dots, upper case and the like, which
must never leak into an error subject.

``intake.decode`` (what the services run) is the oracle of what a message is: a mutation
that is still a valid event is not sent (it would be a legitimate change). Every message
sent must then be answered, by every service that consumes its family, with an error event
on ``vpcbus.error.<svc>.<org>.<project>`` carrying the documented reason, its stream
sequence and its identity (``_`` when it has none); a message the bus itself refuses (too
big for the stream or for NATS, a subject no stream captures) must fail at the publisher.
In every batch valid traffic is interleaved (a NIC attached and one detached in a live
project, now and then a new project), and after it: every service process is the one that
started (same pid) and answers ``$SRV.PING``, the valid traffic converged with correct
addresses (NB rows checked against IPAM's status), and the two victim projects, at which
most bad events are aimed, kept every NB row (``_version`` included) and every status.

``test_boundary_values_get_their_documented_verdict`` pins the edges one by one (CIDR /0,
/8, /29, /31, /32, labels of 63 and 64 characters, generation 0 and 2^53, payloads of
exactly the limit and one byte over, ...), valid ones included, with their exact verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from pydantic import BaseModel

from tests.conftest import ServiceProcs
from tests.integration import helpers, invariants
from vpcbus.client import Client, Published, member_at, member_gone, ready_at
from vpcbus.embedded.natsd import NatsServer
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import events, names, subjects
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.events import EVENT_MODELS, MAX_EVENT_BYTES
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
from vpcbus_proto.projects import ProjectRef, ProjectSpec
from vpcbus_proto.status import ServiceStatus
from vpcbus_runtime import intake

pytestmark = [pytest.mark.connected, pytest.mark.slow]

T = TypeVar("T")

ORG = "fuzz"
VICTIMS = ("victim-a", "victim-b")
LIVE = "live"
CIDR = "10.0.0.0/24"
#: Hypothesis examples (batches) and their size: about 80 x 40 messages, ~70 s in all.
EXAMPLES = 80
BATCH = (25, 60)
#: The stream's and the server's limits (bus.stream_configs; nats-server's max_payload).
STREAM_MAX_MSG = 256 * 1024
NATS_MAX_PAYLOAD = 1024 * 1024
#: Under load (2 cores, other suites running) a batch's answers may take a while.
ANSWER_TIMEOUT = 60.0
#: Which services consume which family (IpamReconciler.consumes; the others: projects).
CONSUMERS = {
    "project": subjects.SERVICES,
    **dict.fromkeys(("workload", "eip", "fip", "service"), ("ipam",)),
}


# -- an event loop beside hypothesis ---------------------------------------------------------


class Portal:
    """An asyncio loop on a thread of its own: hypothesis drives a synchronous test, the
    NATS client (and its subscriptions) live on this loop between examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# -- the bad messages --------------------------------------------------------------------------


class Case:
    """One message to send, and how it was made (shown, shortened, when an example fails)."""

    __slots__ = ("data", "how", "subject")

    def __init__(self, subject: str, data: bytes, how: str) -> None:
        self.subject = subject
        self.data = data
        self.how = how

    def __repr__(self) -> str:
        return f"Case({self.subject!r}, {len(self.data)} bytes, {self.how}: {self.data[:160]!r})"


#: Sentinels replaced in the serialized text by what ``json.dumps`` cannot produce.
BIG_INT = "\x01big-int\x01"
DEEP = "\x01deep\x01"
RAW = {
    json.dumps(BIG_INT): "1" + "0" * 5000,  # more digits than Python's int parser takes
    json.dumps(DEEP): "[" * 5000 + "]" * 5000,  # deeper than the JSON parser recurses
}

NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64,
    1.0, 1.5, -0.0, float("nan"), float("inf"), BIG_INT, DEEP,
    "", " ", "0", "1", "a" * 63, "a" * 64, "a" * 5000, "A", "-a", "a-", "a.b", "*", ">", "_",
    "é", "ü-x", "\x00", "a\x00b", "\u202e", "\ud800", "\U0001d518", "abc\n",
    "io.vpcbus.project.created",
    "0.0.0.0/0", "10.0.0.0/32", "10.0.0.0/31", "10.0.0.0/30", "10.0.0.1/24", "10.0.0.0",
    "255.255.255.255", "10.0.0.256", "::1", "::/0", "100.65.0.0/16", "\uff11\uff10.0.0.0/24",
    "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00", "0A:58:0A:00:00:05x",
    [], {}, [1, 2], [None], {"a": {"b": None}}, [[[[[[[[[[[]]]]]]]]]]],
    {"port": 0, "targetPort": 65536}, {"vmName": "A"},
]  # fmt: skip

#: Identities a message names: the victims, a project that does not exist, and tokens that
#: must never reach a subject.
NAMED = [(ORG, VICTIMS[0]), (ORG, VICTIMS[1]), (ORG, "ghost")]
BAD_NAMES = [
    ("*", VICTIMS[0]), (ORG, ">"), ("fuzz.x", "a"), ("_", "_"), ("FUZZ", VICTIMS[0]),
    (ORG, VICTIMS[0] + "\n"), (ORG, VICTIMS[0] + " "), (ORG, ""), ("a" * 64, "b"),
    ("a" * 63, "b" * 63), ("ext", "cloud-x"),
]  # fmt: skip
#: Mostly the victims (so the bad events are about something that exists).
identities = st.sampled_from(NAMED[:2]) | st.sampled_from(NAMED) | st.sampled_from(BAD_NAMES)

labels = st.sampled_from(["web", "db", "a", "x" * 63, "n-1", "ssh"])
addresses = st.sampled_from(["10.0.0.50", "10.0.0.9", "10.0.0.254", "10.0.0.1", "10.9.0.9"])
# (lambdas: st.builds would read the models' signatures, which name fields by alias)
ports = st.builds(
    lambda port, target, protocol: ServicePort(port=port, target_port=target, protocol=protocol),
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.sampled_from(["TCP", "UDP"]),
)


def data_strategy(subject: str, org: str, project: str) -> st.SearchStrategy[BaseModel]:
    """A valid ``data`` for ``subject`` naming ``org``/``project`` (valid only when the
    identity is: an invalid one makes every event built on it invalid, which is the point)."""
    ident = {"organization": org}
    where = {"organization": org, "project": project}
    family, _, action = subject.partition(".")
    # Models are built unchecked (model_construct): the identity may be a bad one.
    build: Callable[..., st.SearchStrategy[BaseModel]] = st.builds
    if family == "project":
        if action == "deleted":
            return build(ProjectRef.model_construct, name=st.just(project), **_just(ident))
        return build(
            ProjectSpec.model_construct, name=st.just(project),
            cidr_block=st.just(CIDR), egress_network_type=st.just("cloud"),
            **_just(ident),
        )  # fmt: skip
    if family == "workload":
        nic = {"kind": st.sampled_from(["vm", "pod"]), "name": labels,
               "interface": st.sampled_from(["default", "net1"])}  # fmt: skip
        if action == "detached":
            return build(WorkloadRef.model_construct, **nic, **_just(where))
        return build(
            WorkloadSpec.model_construct, **nic, ip=st.none() | addresses,
            mac=st.none() | st.just("0a:58:0a:00:00:05"), **_just(where),
        )  # fmt: skip
    if family == "eip":
        if action == "deleted":
            return build(EipRef.model_construct, name=labels, **_just(where))
        network = st.none() | st.just("cloud")
        return build(EipSpec.model_construct, name=labels, external_network_type=network,
                     **_just(where))  # fmt: skip
    if family == "fip":
        if action == "deleted":
            return build(FipRef.model_construct, name=labels, **_just(where))
        target = st.one_of(
            st.fixed_dictionaries({"ip_address": addresses, "vm_target": st.none()}),
            st.fixed_dictionaries({
                "ip_address": st.none(),
                "vm_target": labels.map(lambda vm: VmTarget(vm_name=vm)),
            }),
        )  # fmt: skip
        return target.flatmap(
            lambda t: build(FipSpec.model_construct, name=labels, **_just({**where, **t}))
        )
    if action == "deleted":
        return build(LbServiceRef.model_construct, name=labels, **_just(where))
    return build(
        LbServiceSpec.model_construct, name=labels, ports=st.lists(ports, min_size=1, max_size=3),
        endpoints=st.lists(addresses, max_size=2, unique=True),
        bind_on_default_gw_eip=st.booleans(), **_just(where),
    )  # fmt: skip


def _just(values: dict[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
    return {k: st.just(v) for k, v in values.items()}


def body_of(subject: str, data: BaseModel, generation: int | None) -> dict[str, Any]:
    """The CloudEvent a publisher would send (``data`` built unchecked: it may be bad)."""
    return events.new_event(subject, data, source="/tests/fuzz", generation=generation)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, the document itself excepted."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict | list):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            out.append((*prefix, k))
            out += paths(v, (*prefix, k))
    return out


def model_fields(subject: str) -> list[str]:
    """The wire names of the data model's fields (present or not in a given event)."""
    model = EVENT_MODELS[subject].model_fields["data"].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return [f.alias or n for n, f in model.model_fields.items()]


ENVELOPE = [f.alias or n for n, f in EVENT_MODELS[subjects.PROJECT_CREATED].model_fields.items()]


def put(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def drop(doc: Any, path: tuple[Any, ...]) -> None:
    for step in path[:-1]:
        doc = doc[step]
    del doc[path[-1]]


def serialize(body: Any) -> bytes:
    text = json.dumps(body)
    for token, raw in RAW.items():
        text = text.replace(token, raw)
    return text.encode("utf-8", errors="surrogatepass")


#: A nasty value, copied: a later mutation may write into a list or dict drawn before, and
#: must not change NASTY itself (hypothesis requires generation to be repeatable).
nasty = st.sampled_from(NASTY).map(copy.deepcopy)


@st.composite
def mutated(draw: st.DrawFn) -> Case:
    """A valid event of a random subject, then 1-3 mutations of its fields or framing."""
    subject = origin = draw(st.sampled_from(sorted(EVENT_MODELS)))
    org, project = draw(identities)
    data = draw(data_strategy(subject, org, project))
    body = body_of(subject, data, draw(st.none() | st.integers(1, 2**53)))
    how = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "add", "drop", "extra", "type", "on"]))
        if kind == "set":  # a field present, to a wrong-typed or boundary value; mostly data's
            inside = [p for p in paths(body) if p[0] == "data" and len(p) > 1]
            where = draw(st.sampled_from(inside or paths(body)) | st.sampled_from(paths(body)))
            value = draw(nasty)
            put(body, where, value)
            how.append(f"{'.'.join(map(str, where))}={value!r:.40}")
        elif kind == "add" and isinstance(body.get("data"), dict):  # a model field, maybe absent
            name = draw(st.sampled_from(model_fields(origin) + ENVELOPE))
            target = body["data"] if name in model_fields(origin) else body
            target[name] = draw(nasty)
            how.append(f"+{name}={target[name]!r:.40}")
        elif kind == "drop":
            where = draw(st.sampled_from(paths(body)))
            try:
                drop(body, where)
            except (KeyError, IndexError, TypeError):
                continue  # dropped with its parent already
            how.append(f"-{'.'.join(map(str, where))}")
        elif kind == "extra" and isinstance(body.get("data"), dict):
            body["data"][draw(st.sampled_from(["x", "cidr", "Name", "ip_address", ""]))] = 1
            how.append("data+unknown")
        elif kind == "type":
            types = [subjects.event_type(s) for s in EVENT_MODELS] + ["io.vpcbus.project", ""]
            body["type"] = draw(st.sampled_from(types))
            how.append(f"type={body['type']}")
        elif kind == "on":  # the body on another subject, captured by the stream or not
            subject = draw(
                st.sampled_from(sorted(EVENT_MODELS))
                | st.sampled_from(["project.bogus", "workload.x", "eip.renamed", "fip.created2",
                                   "service.deleted_", "project.created.x", "project",
                                   "workload.attached.fuzz.victim-a"])
            )  # fmt: skip
            how.append(f"on {subject}")
    return Case(subject, serialize(body), "; ".join(how) or "as built")


@st.composite
def framed(draw: st.DrawFn) -> Case:
    """Bytes that are not an event at all, or an event around the size limits."""
    subject = draw(st.sampled_from(sorted(EVENT_MODELS)) | st.just("project.bogus"))
    kind = draw(st.sampled_from(["binary", "json", "truncated", "deep", "empty", "nul",
                                 "latin1", "limit", "stream-limit", "nats-limit"]))  # fmt: skip
    org, project = draw(st.sampled_from(NAMED))
    shape = subject if subject in EVENT_MODELS else subjects.PROJECT_CREATED
    body = body_of(shape, draw(data_strategy(shape, org, project)), None)
    text = serialize(body)
    if kind == "binary":
        data = draw(st.binary(max_size=300))
    elif kind == "json":
        data = serialize(draw(json_values))
    elif kind == "truncated":
        data = text[: draw(st.integers(0, len(text) - 1))]
    elif kind == "deep":
        depth = draw(st.sampled_from([64, 1000, 2000, 20000]))
        data = b'{"data":' * depth + b"1" + b"}" * depth
    elif kind == "empty":
        data = draw(st.sampled_from([b"", b" ", b"\n", b"null", b"{}", b"[]", b'""', b"0"]))
    elif kind == "nul":
        data = text.replace(b'"', b'"\x00', 1) if draw(st.booleans()) else b"\x00" * 64
    elif kind == "latin1":
        data = text.replace(b"cloud", "clöud".encode("latin-1")).replace(b'"id": "', b'"id": "\xff')
    else:  # padded with an unknown envelope attribute to just below / above a limit, and
        # made invalid on the way (a valid one of the same size is a boundary case below)
        limit = {"limit": MAX_EVENT_BYTES, "stream-limit": STREAM_MAX_MSG,
                 "nats-limit": NATS_MAX_PAYLOAD}[kind]  # fmt: skip
        # (not within a header's length under the bus limits: those count headers too)
        offsets = [-1, 0, 1, 100] if limit == MAX_EVENT_BYTES else [-500, 1, 100]
        size = limit + draw(st.sampled_from(offsets))
        body["generation"] = 0
        pad = size - len(serialize({**body, "xpad": ""}))
        data = serialize({**body, "xpad": "p" * max(pad, 0)})
    return Case(subject, data, kind)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

bad_messages = st.one_of(mutated(), mutated(), mutated(), framed())


# -- the bus side ------------------------------------------------------------------------------


@dataclass
class Figures:
    sent: int = 0  # messages stored by the stream, each answered by its consumers
    refused: Counter[str] = field(default_factory=Counter)  # refused at publish, by error
    skipped: int = 0  # mutations that were still valid events: not sent
    errors: int = 0  # error events checked
    reasons: Counter[str] = field(default_factory=Counter)
    valid: int = 0  # valid events interleaved
    batches: int = 0


class Fuzz:
    """The test's side of the bus, on the portal's loop."""

    def __init__(self, client: Client, ovn: OvnCentral, services: ServiceProcs) -> None:
        self.client = client
        self.ovn = ovn
        self.services = services
        self.pids = {name: p.pid for name, p in services.procs.items()}
        #: (service, stream sequence) -> [(subject it came on, the error event)]
        self.answers: dict[tuple[str, int], list[tuple[str, ErrorEvent]]] = {}
        self.garbage: list[str] = []  # error messages that are not ErrorEvents
        self.arrived = asyncio.Event()
        self.snapshot: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.figures = Figures()
        self.nics: list[WorkloadSpec] = []  # attached to the live project, in order
        self.projects = 0

    async def _answer(self, msg: Msg) -> None:
        try:
            ev = ErrorEvent.model_validate_json(msg.data)
        except ValueError:
            self.garbage.append(f"{msg.subject}: {msg.data[:200]!r}")
            return
        if ev.stream_sequence is not None:
            self.answers.setdefault((ev.service, ev.stream_sequence), []).append((msg.subject, ev))
        self.arrived.set()

    async def start(self) -> None:
        nc = self.client.nc
        for subject in ("vpcbus.error.>", "vpcbus.dlq.>"):
            await nc.subscribe(subject, cb=self._answer, pending_msgs_limit=1_000_000,
                               pending_bytes_limit=1 << 30)  # fmt: skip
        await nc.flush()
        await self._build_victims()

    async def _build_victims(self) -> None:
        """victim-a with two NICs, a user EIP, a FIP and a load balancer; victim-b bare; the
        live project for the valid traffic."""
        a = helpers.spec(ORG, VICTIMS[0])
        await asyncio.gather(*(helpers.create_ready(self.client, s, timeout=60) for s in (
            a, helpers.spec(ORG, VICTIMS[1]), helpers.spec(ORG, LIVE))))  # fmt: skip
        c = self.client
        web = WorkloadSpec(organization=ORG, project=a.name, kind="vm", name="web")
        db = WorkloadSpec(organization=ORG, project=a.name, kind="vm", name="db", ip="10.0.0.50")
        eip = EipSpec(organization=ORG, project=a.name, name="pub")
        fip = FipSpec(organization=ORG, project=a.name, name="ssh",
                      vm_target=VmTarget(vm_name="web"))  # fmt: skip
        svc = LbServiceSpec(organization=ORG, project=a.name, name="web",
                            ports=[ServicePort(port=80, target_port=8080)],
                            endpoints=["10.0.0.50"], bind_on_default_gw_eip=True)  # fmt: skip
        members = [
            (web.member, await c.attach(web)),
            (db.member, await c.attach(db)),
            (eip.member, await c.create_eip(eip)),
            (f"fip.{fip.name}", await c.create_fip(fip)),
            (f"service.{svc.name}", await c.upsert_service(svc)),
        ]
        await self.settle(VICTIMS[0], members)
        await self.settle(VICTIMS[1], [])
        await self.settle(LIVE, [])
        dump = invariants.nb_dump(self.ovn.nb_db)
        for victim in VICTIMS:
            self.snapshot[victim] = invariants.owned(dump, names.project_key(ORG, victim))
            self.statuses[victim] = await self.status_view(victim)
        assert self.snapshot[VICTIMS[0]]["NAT"] and self.snapshot[VICTIMS[0]]["Load_Balancer"]

    async def status_view(self, project: str) -> dict[str, Any]:
        statuses = await self.client.statuses(ORG, project)
        return {s: st.model_dump(exclude={"observed_at"}) for s, st in statuses.items()}

    async def settle(
        self, project: str, members: list[tuple[str, Published]], gone: tuple[str, ...] = ()
    ) -> None:
        """Until the project is Ready everywhere, each member settled in IPAM (and a NIC in
        VPC) at its event, each of ``gone`` no longer listed (or Deleted), and its NB rows
        are exactly what IPAM's status says."""
        key = names.project_key(ORG, project)
        last: list[str] = []

        async def done() -> bool:
            nonlocal last
            statuses = await self.client.statuses(ORG, project)
            generation = max((s.generation for s in statuses.values()), default=0)
            if not ready_at(generation)(statuses) or generation == 0:
                last = [f"not ready: {[(s, st.state, st.reason) for s, st in statuses.items()]}"]
                return False
            for member, published in members:
                if member.startswith("workload."):
                    settled = member_at(member, published.generation, services=("ipam", "vpc"))
                else:
                    settled = member_at(member, published.generation)
                if not settled(statuses):
                    last = [f"{member} not settled at {published.generation}"]
                    return False
                state = statuses["ipam"].member(member)
                if state is not None and state.state == "Error":
                    last = [f"{member}: {state.reason} {state.message}"]
                    return False
            for member in gone:
                if not member_gone(member, services=("ipam", "vpc"))(statuses):
                    last = [f"{member} is still listed"]
                    return False
            dump = invariants.nb_dump(self.ovn.nb_db)
            last = invariants.nb_problems(dump, key, statuses["ipam"], chassis=CHASSIS)
            return not last

        assert await helpers.eventually(done, timeout=ANSWER_TIMEOUT, interval=0.3), last

    # -- one batch -----------------------------------------------------------------------

    async def publish(self, case: Case) -> int | str:
        """The stream sequence it was stored at, or the publisher's error."""
        try:
            ack = await self.client.js.publish(case.subject, case.data, timeout=10,
                                               stream=subjects.EVENTS_STREAM)  # fmt: skip
        except nats.errors.MaxPayloadError:
            return "MaxPayloadError"
        except nats.js.errors.NoStreamResponseError:
            return "NoStream"
        except nats.js.errors.APIError as exc:
            return f"APIError {exc.err_code}: {exc.description}"
        return ack.seq

    async def run(self, batch: list[Case]) -> None:
        self.figures.batches += 1
        expected: dict[tuple[str, int], tuple[Case, intake.Rejected]] = {}
        valid_at = len(batch) // 2
        attached: tuple[str, Published] | None = None
        detached: str | None = None
        for i, case in enumerate(batch):
            if i == valid_at:
                attached, detached = await self.valid_traffic()
            family, dot, action = case.subject.partition(".")
            stored = bool(family in CONSUMERS and dot and action and "." not in action)
            verdict = intake.decode(case.subject, case.data) if stored else None
            if isinstance(verdict, intake.Accepted | intake.AcceptedMember):
                self.figures.skipped += 1  # a valid event: not this test's business
                continue
            outcome = await self.publish(case)
            if len(case.data) > NATS_MAX_PAYLOAD:
                assert outcome == "MaxPayloadError", (case, outcome)
            elif len(case.data) > STREAM_MAX_MSG:
                assert isinstance(outcome, str) and "10054" in outcome, (case, outcome)
            elif not stored:
                assert outcome == "NoStream", (case, outcome)
            else:
                assert isinstance(outcome, int), (case, outcome)
                assert isinstance(verdict, intake.Rejected)
                for service in CONSUMERS[family]:
                    expected[(service, outcome)] = (case, verdict)
            if isinstance(outcome, int):
                self.figures.sent += 1
            else:
                self.figures.refused[outcome.split(":")[0]] += 1
        await self.check_answers(expected)
        await self.check_alive()
        assert attached is not None
        await self.settle(LIVE, [attached], (detached,) if detached else ())
        await self.check_live_addresses()
        await self.check_victims()

    async def valid_traffic(self) -> tuple[tuple[str, Published], str | None]:
        """A NIC attached to the live project, the oldest one detached once there are four;
        every eighth batch also a new project that must become Ready."""
        n = self.figures.batches
        nic = WorkloadSpec(organization=ORG, project=LIVE, kind="vm", name=f"n{n}",
                           ip="10.0.0.200" if n % 5 == 0 else None)  # fmt: skip
        self.nics.append(nic)
        attached = (nic.member, await self.client.attach(nic))
        self.figures.valid += 1
        detached = None
        if len(self.nics) > 4:
            old = self.nics.pop(0)
            await self.client.detach(old)
            detached = old.member
            self.figures.valid += 1
        if n % 8 == 0:
            self.projects += 1
            await helpers.create_ready(self.client, helpers.spec(ORG, f"new-{self.projects}"),
                                       timeout=ANSWER_TIMEOUT)  # fmt: skip
            self.figures.valid += 1
        return attached, detached

    async def check_answers(self, expected: dict[tuple[str, int], tuple[Case, Any]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_TIMEOUT
        while set(expected) - set(self.answers) and loop.time() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout=1.0)
        missing = sorted(set(expected) - set(self.answers))
        assert not missing, [(k, expected[k][0]) for k in missing[:5]]
        assert not self.garbage, self.garbage[:5]
        for key, (case, rejected) in expected.items():
            service = key[0]
            for nats_subject, ev in self.answers[key]:
                where = (case, ev)
                assert ev.kind == "rejected" and ev.service == service, where
                assert ev.reason == rejected.reason and ev.message, where
                assert ev.subject == case.subject and ev.deliveries >= 1, where
                assert (ev.organization, ev.project) == (rejected.organization, rejected.name), (
                    where
                )
                assert ev.event_id == rejected.event_id, where
                assert nats_subject == subjects.error_subject(service, ev.organization,
                                                              ev.project), where  # fmt: skip
                tokens = nats_subject.split(".")
                assert len(tokens) == 5 and all(
                    names.is_label(t) or t == subjects.UNKNOWN for t in tokens[3:]
                ), where
                assert ev.payload == case.data[:4096].decode("utf-8", errors="replace"), where
            self.figures.errors += 1
            self.figures.reasons[rejected.reason] += 1
        # Nobody else answered: member events reach IPAM only, nothing was dead-lettered.
        sequences = {seq for _, seq in expected}
        others = [k for k in self.answers if k[1] in sequences and k not in expected]
        assert not others, others

    async def check_alive(self) -> None:
        assert {n: p.pid for n, p in self.services.procs.items()} == self.pids
        assert all(self.services.alive().values()), self.services.alive()
        for service in subjects.SERVICES:
            reply = await self.client.nc.request(f"$SRV.PING.vpcbus-{service}", b"", timeout=10)
            assert json.loads(reply.data)["name"] == f"vpcbus-{service}"

    async def check_live_addresses(self) -> None:
        """Every NIC of the live project has its own usable address; the static one its own."""
        st = await self.client.status("ipam", ORG, LIVE)
        assert st is not None and st.addresses is not None
        ips = [w.ip_address for w in st.addresses.workloads]
        assert len(ips) == len(set(ips)) == len(self.nics), (ips, self.nics)
        assert all(invariants.usable(ip, CIDR, "10.0.0.1") for ip in ips), ips
        for nic in self.nics:
            got = next(w for w in st.addresses.workloads if w.member == nic.member)
            assert nic.ip is None or got.ip_address == nic.ip, (nic, got)

    async def check_victims(self) -> None:
        dump = invariants.nb_dump(self.ovn.nb_db)
        for victim in VICTIMS:
            now = invariants.owned(dump, names.project_key(ORG, victim))
            assert now == self.snapshot[victim], f"NB rows of {victim} changed"
            assert await self.status_view(victim) == self.statuses[victim], victim


CHASSIS = "vpcbus-chassis-1"  # VPCBUS_GATEWAY_CHASSIS's default


@pytest.fixture(scope="module")
def portal() -> Iterator[Portal]:
    p = Portal()
    yield p
    p.close()


@pytest.fixture(scope="module")
def fuzz(
    services: ServiceProcs, nats_server: NatsServer, ovn: OvnCentral, portal: Portal
) -> Iterator[Fuzz]:
    async def open_() -> Fuzz:
        client = await Client.connect(nats_server.url, name="vpcbus-fuzz")
        await client.ensure_streams()
        f = Fuzz(client, ovn, services)
        await f.start()
        return f

    f = portal.call(open_())
    yield f
    fig = f.figures
    print(
        f"\nfuzz: {fig.batches} batches, {fig.sent} bad messages stored and answered "
        f"({fig.errors} error events checked), {sum(fig.refused.values())} refused at publish "
        f"{dict(fig.refused)}, {fig.skipped} mutations still valid (not sent), {fig.valid} "
        f"valid events interleaved; reasons {dict(fig.reasons)}"
    )
    portal.call(f.client.close())


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # No shrinking: each try is seconds against the live stack; the failing batch is
    # reported as generated (each message with how it was made).
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(batch=st.lists(bad_messages, min_size=BATCH[0], max_size=BATCH[1]))
def test_bad_events_are_rejected_and_nothing_built_changes(
    fuzz: Fuzz, portal: Portal, batch: list[Case]
) -> None:
    portal.call(fuzz.run(batch))


def test_boundary_values_get_their_documented_verdict(fuzz: Fuzz, portal: Portal) -> None:
    portal.call(boundaries(fuzz))


# -- the edges, one by one ---------------------------------------------------------------------


EDGE = "edge"


def project_body(name: str, org: str = EDGE, **changes: Any) -> dict[str, Any]:
    spec = ProjectSpec.model_construct(organization=org, name=name, cidr_block=CIDR,
                                       egress_network_type="cloud")  # fmt: skip
    body = body_of(subjects.PROJECT_CREATED, spec, changes.pop("generation", None))
    for path, value in changes.items():
        put(body, tuple(path.split("__")), value)
    return body


def padded(body: dict[str, Any], size: int) -> bytes:
    pad = size - len(serialize({**body, "xpad": ""}))
    data = serialize({**body, "xpad": "p" * pad})
    assert len(data) == size
    return data


def cases() -> list[tuple[str, str, bytes, str]]:
    """(what, subject, bytes, verdict): ``Ready``, ``Error:<reason>`` (an accepted event
    the reconcile refuses, with an error event and an Error status), ``rejected:<reason>``,
    or ``refused:<publisher's error>``."""
    out: list[tuple[str, str, bytes, str]] = []

    def add(what: str, body: dict[str, Any] | bytes, verdict: str,
            subject: str = subjects.PROJECT_CREATED) -> None:  # fmt: skip
        out.append((what, subject, body if isinstance(body, bytes) else serialize(body), verdict))

    for cidr, verdict in [("0.0.0.0/0", "rejected:InvalidSpec"),
                          ("10.0.0.0/32", "rejected:InvalidSpec"),
                          ("10.0.0.0/31", "rejected:InvalidSpec"),
                          ("10.0.0.0/30", "rejected:InvalidSpec"),
                          ("10.0.0.0/29", "Ready"), ("10.0.0.0/8", "Ready"),
                          ("10.0.0.0/7", "rejected:InvalidSpec"),
                          ("100.64.0.0/10", "Error:CidrOverlapsExternalNetwork")]:  # fmt: skip
        name = "cidr-" + cidr.replace(".", "-").replace("/", "-")
        add(f"cidrBlock {cidr}", project_body(name, data__cidrBlock=cidr), verdict)
    add("63-char namespace", project_body("p" * 31, "o" * 31), "Ready")
    add("64-char namespace", project_body("p" * 32, "o" * 31), "rejected:InvalidSpec")
    add("64-char org", project_body("p", "o" * 64), "rejected:InvalidEvent")
    add("63-char org", project_body("p", "o" * 63), "rejected:InvalidSpec")  # namespace 65
    add("reserved namespace", project_body("cloud-x", "ext"), "Error:NamespaceReserved")
    add("public egress", project_body("pub", data__egressNetworkType="public"),
        "Error:PublicProjectsDisabled")  # fmt: skip
    generations: list[tuple[str, object, str]] = [
        ("gen-zero", 0, "rejected:InvalidEvent"),
        ("gen-minus", -1, "rejected:InvalidEvent"),
        ("gen-max", 2**53, "Ready"),
        ("gen-max-plus", 2**53 + 1, "rejected:InvalidEvent"),
        ("gen-int64", 2**63, "rejected:InvalidEvent"),
        ("gen-text", "1", "rejected:InvalidEvent"),
        ("gen-bool", True, "rejected:InvalidEvent"),
        ("gen-float", 1.0, "rejected:InvalidEvent"),
    ]
    for name, gen, verdict in generations:
        add(f"generation {gen!r}", project_body(name, generation=gen), verdict)
    add("unicode name", project_body("é"), "rejected:InvalidEvent")
    add("NUL in name", project_body("a\x00b"), "rejected:InvalidEvent")
    add("empty body", b"", "rejected:InvalidEvent")
    add("not JSON", b"project please", "rejected:InvalidEvent")
    add("JSON nested 30,000 deep", b"[" * 30000 + b"]" * 30000, "rejected:InvalidEvent")
    exact = project_body("exactly-at-limit")
    add("exactly MAX_EVENT_BYTES, valid", padded(exact, MAX_EVENT_BYTES), "Ready")
    over = project_body("one-byte-over")
    add("MAX_EVENT_BYTES + 1", padded(over, MAX_EVENT_BYTES + 1), "rejected:EventTooLarge")
    add("stream limit + 1", padded(project_body("x"), STREAM_MAX_MSG + 1), "refused:10054")
    add("NATS max_payload + 1", padded(project_body("x"), NATS_MAX_PAYLOAD + 1),
        "refused:MaxPayloadError")  # fmt: skip
    return out


def member_cases() -> list[tuple[str, str, BaseModel, str]]:
    """Member events on project ``edge/members`` (Ready first): (what, subject, data,
    verdict) with the member's verdict: ``Ready`` or ``Error:<reason>`` in IPAM's status,
    or ``rejected:<reason>``."""
    where = {"organization": EDGE, "project": "members"}
    nic = dict(kind="vm", **where)
    zero = [ServicePort.model_construct(port=0, target_port=80, protocol="TCP")]
    port_zero = LbServiceSpec.model_construct(
        organization=EDGE, project="members", name="zero", ports=zero, endpoints=[]
    )
    return [
        ("63-char VM name", subjects.WORKLOAD_ATTACHED,
         WorkloadSpec(name="v" * 63, **nic), "Ready"),
        ("static network address", subjects.WORKLOAD_ATTACHED,
         WorkloadSpec(name="net", ip="10.0.0.0", **nic), "Error:IPReserved"),
        ("static gateway address", subjects.WORKLOAD_ATTACHED,
         WorkloadSpec(name="gw", ip="10.0.0.1", **nic), "Error:IPReserved"),
        ("static broadcast address", subjects.WORKLOAD_ATTACHED,
         WorkloadSpec(name="bc", ip="10.0.0.255", **nic), "Error:IPReserved"),
        ("static address outside", subjects.WORKLOAD_ATTACHED,
         WorkloadSpec(name="out", ip="10.0.1.5", **nic), "Error:IPOutOfRange"),
        ("port 65535", subjects.SERVICE_CREATED,
         LbServiceSpec(name="top", ports=[ServicePort(port=65535, target_port=1)],
                       endpoints=["10.0.0.9"], bind_on_default_gw_eip=True, **where), "Ready"),
        ("port 0", subjects.SERVICE_CREATED, port_zero, "rejected:InvalidSpec"),
        ("detach of a NIC never attached", subjects.WORKLOAD_DETACHED,
         WorkloadRef(name="never", **nic), "Deleted"),
        ("EIP on an unknown network", subjects.EIP_CREATED,
         EipSpec(name="mars", external_network_type="mars", **where), "Error:UnknownNetwork"),
        ("NIC of a project that does not exist", subjects.WORKLOAD_ATTACHED,
         WorkloadSpec(organization=EDGE, project="nowhere", kind="vm", name="lost"),
         "Error:ProjectNotFound"),
    ]  # fmt: skip


async def boundaries(f: Fuzz) -> None:
    c = f.client
    watches = {}
    verdicts: dict[str, str] = {}
    for what, subject, data, verdict in cases():
        raw = json.loads(data) if data[:1] == b"{" and len(data) < MAX_EVENT_BYTES * 2 else None
        ident = raw.get("data", {}) if isinstance(raw, dict) else {}
        org, name = ident.get("organization"), ident.get("name")
        named = isinstance(org, str) and isinstance(name, str)
        if named and names.is_label(str(org)) and names.is_label(str(name)):
            watches[what] = await c.watch(str(org), str(name))
        outcome = await f.publish(Case(subject, data, what))
        if verdict.startswith("refused:"):
            assert isinstance(outcome, str) and verdict.split(":")[1] in outcome, (what, outcome)
            verdicts[what] = verdict
            continue
        assert isinstance(outcome, int), (what, outcome)
        decoded = intake.decode(subject, data)
        kind, _, reason = verdict.partition(":")
        if kind == "rejected":
            assert isinstance(decoded, intake.Rejected) and decoded.reason == reason, (
                what, decoded)  # fmt: skip
            await f.check_answers({(s, outcome): (Case(subject, data, what), decoded)
                                   for s in subjects.SERVICES})  # fmt: skip
            verdicts[what] = verdict
            continue
        assert isinstance(decoded, intake.Accepted), (what, decoded)
        watch = watches[what]
        generation = decoded.generation or outcome
        if kind == "Ready":
            await watch.until(ready_at(generation), timeout=ANSWER_TIMEOUT)
        else:

            def refused(statuses: dict[str, ServiceStatus], gen: int = generation,
                        w: Any = watch, why: str = reason) -> bool:  # fmt: skip
                ipam = statuses.get("ipam")
                answered = any(e.reason == why and e.service == "ipam" for e in w.errors)
                return (
                    ipam is not None
                    and ipam.generation >= gen
                    and ipam.state == "Error"
                    and (answered)
                )

            await watch.until(refused, timeout=ANSWER_TIMEOUT)
            assert watch.statuses["ipam"].reason == reason, (what, watch.statuses["ipam"])
        verdicts[what] = verdict
    for watch in watches.values():
        await watch.stop()
    await f.check_alive()

    # Members, in a Ready project of their own.
    await helpers.create_ready(c, helpers.spec(EDGE, "members"), timeout=ANSWER_TIMEOUT)
    for what, subject, model, verdict in member_cases():
        project = getattr(model, "project", "members")
        watch = await c.watch(EDGE, project)
        body = body_of(subject, model, None)
        member = intake.decode(subject, serialize(body))
        kind, _, reason = verdict.partition(":")
        published = await c.publish_body(subject, body)
        if kind == "rejected":
            assert isinstance(member, intake.Rejected) and member.reason == reason, what
            case = Case(subject, serialize(body), what)
            await f.check_answers({("ipam", published.sequence): (case, member)})
            verdicts[what] = verdict
            await watch.stop()
            continue
        assert isinstance(member, intake.AcceptedMember), (what, member)
        key = member.member
        if kind == "Deleted":
            await watch.until(member_gone(key), timeout=ANSWER_TIMEOUT)
        else:
            await watch.until(member_at(key, published.generation), timeout=ANSWER_TIMEOUT)
            state = watch.statuses["ipam"].member(key)
            assert state is not None and state.state == kind, (what, state)
            if kind == "Error":
                assert state.reason == reason, (what, state)

                def answered(_st: object, w: Any = watch, why: str = reason) -> bool:
                    return any(e.reason == why for e in w.errors)

                await watch.until(answered, timeout=ANSWER_TIMEOUT)
        verdicts[what] = verdict
        await watch.stop()
    await f.check_alive()
    await f.check_victims()
    print(f"\nboundaries: {len(verdicts)} cases: " + "; ".join(
        f"{w} -> {v}" for w, v in verdicts.items()))  # fmt: skip
