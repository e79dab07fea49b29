"""How far the services are with one project: :func:`behind`. Pure.

Both the Project status (:mod:`.statuses`: all Ready at the generation the bridge published)
and the finalizer (:mod:`.teardown`: all Deleted at the generation of ``project.deleted``) ask
the same question of the services' statuses, so it is answered once, here, with the first
service that holds the answer back and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from vpcbus_proto.status import ServiceStatus, State

#: Why a service is behind: it never reported, reported for an older generation, or reports
#: another state at (at least) the generation.
Why = Literal["absent", "generation", "state"]


@dataclass(frozen=True)
class Behind:
    """The first service that does not report the state at the generation, and why."""

    service: str
    why: Why
    status: ServiceStatus | None  # None when ``why`` is ``absent``


def behind(
    statuses: Mapping[str, ServiceStatus],
    state: State,
    generation: int,
    services: Iterable[str] | None = None,
) -> Behind | None:
    """The first of ``services`` (default: those that reported, so an absent one is not
    waited for) not reporting ``state`` at ``generation`` or later; None when all do."""
    for service in statuses if services is None else services:
        status = statuses.get(service)
        if status is None:
            return Behind(service, "absent", None)
        if status.generation < generation:
            return Behind(service, "generation", status)
        if status.state != state:
            return Behind(service, "state", status)
    return None
