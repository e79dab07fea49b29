"""The reconcile contract between the edge and a service.

A service implements :class:`Reconciler`. The controller calls ``reconcile`` with the
project's recorded desired state and a view of its peers' status; the service reads the
actual state from its backend, converges it, and returns a :class:`Result`. "Waiting for
something" is a ``Pending`` result with ``requeue_after``, not an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard

from pydantic import BaseModel

from vpcbus_proto.doctor import Finding
from vpcbus_proto.status import AddressFacts, MemberStatus, Resolver, ServiceStatus, State
from vpcbus_proto.subjects import EventFamily, ServiceName
from vpcbus_runtime.members import MemberRecord
from vpcbus_runtime.records import ProjectRecord


class Peers(Protocol):
    """Read access to other services' latest status for a project."""

    async def status(self, service: ServiceName, org: str, project: str) -> ServiceStatus | None:
        """The peer's last published status, or None when it never reported."""
        ...


@dataclass(frozen=True)
class Context:
    """Everything a reconcile run gets: the key, the record (None: never heard of it)."""

    key: str
    organization: str
    project: str
    record: ProjectRecord | None
    peers: Peers
    #: The project's members (NICs, EIPs) by member key, tombstones included; empty for
    #: services that consume no member events.
    members: Mapping[str, MemberRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """The outcome of one reconcile, published as the service's status."""

    state: State
    reason: str
    message: str = ""
    requeue_after: float | None = None
    addresses: AddressFacts | None = None
    objects: Sequence[str] = field(default_factory=tuple)
    #: Per-member outcome. A member event whose member ends in ``Error`` is answered with an
    #: error event; a removed member is forgotten once it is absent here or ``Deleted``.
    members: Sequence[MemberStatus] = field(default_factory=tuple)
    #: How the project's workloads resolve names (DNS only).
    resolver: Resolver | None = None
    #: The one peer a ``Pending`` result waits for, to be Ready. Until the project's next
    #: reconcile the controller does not run it for the other peers' status changes, nor for
    #: this peer's ``Pending`` ones: they cannot change the result (the named peer's next
    #: other status, an own event or the resync run it again). A bench burst ran NAT and DNS
    #: ~2 times per project for statuses that changed nothing. Set it only when a ``Pending``
    #: status of the peer would give this same result (see :func:`waiting_for_peer`).
    waiting_for: ServiceName | None = None


def ready_at(status: ServiceStatus | None, generation: int) -> TypeGuard[ServiceStatus]:
    """A peer's ``status`` says Ready for the project's ``generation``."""
    return status is not None and status.generation == generation and status.state == "Ready"


def waiting_for_peer(peer: ServiceName, status: ServiceStatus | None) -> Result:
    """``Pending WaitingFor<Peer>`` while ``peer`` is not Ready at the project's generation.

    Nothing yet, ``Pending`` (whatever its reason) and Ready at another generation all read
    "not Ready yet", and wait for the peer alone (:attr:`Result.waiting_for`): its next
    ``Pending`` status would give the same result, so it does not run the project again (in a
    burst VPC reports Pending before Ready; NAT and DNS ran once more per project for it). Its
    own status says why the peer is not Ready. An ``Error`` or ``Deleted`` peer is named with
    its reason, and any status of it runs the project again (it may be on its way back)."""
    if status is None or status.state in ("Pending", "Ready"):
        return Result("Pending", f"WaitingFor{peer.capitalize()}", f"{peer}: not Ready yet",
                      waiting_for=peer)  # fmt: skip
    return Result("Pending", f"WaitingFor{peer.capitalize()}",
                  f"{peer}: {status.state} {status.reason}")  # fmt: skip


class Reconciler(Protocol):
    """What a service provides to :func:`vpcbus_runtime.service.run`.

    ``reconcile`` must write nothing but OVN NB rows through its ``NbSession`` (and return its
    result): the doctor (:mod:`vpcbus_runtime.doctoring`) runs it in a dry run to audit a
    project. A reconciler that writes anything else provides :class:`Auditor` instead.
    """

    #: Peers whose status changes should trigger a reconcile of the same project.
    watches: Sequence[ServiceName]
    #: Peers that must report Deleted (or nothing) before this service forgets a project.
    purge_after: Sequence[ServiceName]

    async def reconcile(self, ctx: Context) -> Result:
        """Converge the backend to ``ctx.record`` and say how it went."""
        ...

    async def owned_keys(self) -> Sequence[str]:
        """Project keys that have backend objects owned by this service (for orphan GC)."""
        ...


class MemberConsumer(Protocol):
    """Optional for a :class:`Reconciler`: the event families it consumes besides projects.

    Without it a service consumes ``project.*`` only. With ``("project", "workload")`` its
    events consumer also takes ``workload.*``; member events are recorded per member and
    handed to ``reconcile`` in :attr:`Context.members`.
    """

    consumes: Sequence[EventFamily]


class PeerFilter(Protocol):
    """Optional for a :class:`Reconciler`: which peer statuses are worth a reconcile.

    Without it every status change of a watched peer re-runs the project. A reconciler that
    reads a peer only for some of its states (e.g. waits for it to report ``Deleted``) says
    so here, and the controller acks the other statuses without re-running (issue 9).
    """

    def wants_peer(self, status: ServiceStatus) -> bool:
        """True when ``status`` (a watched peer's latest) may change this service's result."""
        ...


class FirstBuild(Protocol):
    """Optional for a :class:`Reconciler`: the peer a new project's build needs first.

    A reconciler whose result is ``Pending`` until ``builds_on`` has reported on the project
    (VPC needs IPAM's addresses; NAT and DNS need VPC's router and switch) says so here. The
    first run of a project just created then waits until that peer reports on it, as long
    as the peer keeps reporting on other projects (``first_wait_seconds``; at most
    :data:`~vpcbus_runtime.controller.FIRST_WAIT_CAP`), instead of reporting ``Pending`` at
    once and running again for the peer's status. In a bench burst of 1,000, VPC ran twice
    and NAT and DNS ~2.2 times per project; with the wait, once each.
    """

    builds_on: ServiceName


#: A per-project read endpoint: the project's context in, a model (the JSON reply) out.
ProjectEndpoint = Callable[[Context], Awaitable[BaseModel]]


class EndpointProvider(Protocol):
    """Optional for a :class:`Reconciler`: read-only request/reply endpoints of its own.

    Each ``name`` is served on ``vpcbus.svc.<service>.<name>`` like the status endpoint: the
    request is ``{organization, project}``, the handler gets the context a reconcile would
    get (record, peers, members) and its model is the reply. It must not write anything.
    """

    endpoints: Mapping[str, ProjectEndpoint]


class Auditor(Protocol):
    """Optional for a :class:`Reconciler` whose reconcile writes more than NB rows (IPAM: its
    address book in KV): the doctor calls ``audit`` instead of a dry-run reconcile."""

    async def audit(self, ctx: Context) -> Sequence[Finding]:
        """What is wrong with the project's backend state; writes nothing."""
        ...

    def will_repair(self, key: str) -> None:
        """The doctor is about to queue ``key`` to repair it: let that run do all its checks
        (no shortcut a memo of earlier runs allows)."""
        ...
