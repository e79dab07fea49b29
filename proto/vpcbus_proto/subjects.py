"""Subjects, streams and buckets: the catalogue users publish and subscribe by.

Lifecycle events (users publish; stream ``VPCBUS_EVENTS``)::

    project.created | project.updated | project.deleted
    workload.attached | workload.detached        (a VM or pod NIC in a project)
    eip.created | eip.deleted                    (a user EIP in a project)
    fip.created | fip.deleted                    (a floating IP in a project)
    service.created | service.updated | service.deleted   (a LoadBalancer service)

Status (services publish; stream ``VPCBUS_STATUS`` keeps the last message per subject)::

    vpcbus.status.<service>.<org>.<project>
    vpcbus.usage.pool.<pool>                      (IPAM: external pool accounting)

Errors and dead letters (services publish; stream ``VPCBUS_ERRORS``)::

    vpcbus.error.<service>.<org>.<project>   an event was rejected (invalid, conflicting)
    vpcbus.dlq.<service>.<org>.<project>     an event kept failing and was given up

``_`` stands for the org or project token when the event was too malformed to name one.
"""

from __future__ import annotations

from typing import Final, Literal

ServiceName = Literal["ipam", "vpc", "nat", "dns"]
SERVICES: Final[tuple[ServiceName, ...]] = ("ipam", "vpc", "nat", "dns")

EVENTS_STREAM: Final = "VPCBUS_EVENTS"
STATUS_STREAM: Final = "VPCBUS_STATUS"
ERRORS_STREAM: Final = "VPCBUS_ERRORS"

PROJECT_CREATED: Final = "project.created"
PROJECT_UPDATED: Final = "project.updated"
PROJECT_DELETED: Final = "project.deleted"
PROJECT_EVENTS: Final = (PROJECT_CREATED, PROJECT_UPDATED, PROJECT_DELETED)
WORKLOAD_ATTACHED: Final = "workload.attached"
WORKLOAD_DETACHED: Final = "workload.detached"
EIP_CREATED: Final = "eip.created"
EIP_DELETED: Final = "eip.deleted"
FIP_CREATED: Final = "fip.created"
FIP_DELETED: Final = "fip.deleted"
SERVICE_CREATED: Final = "service.created"
SERVICE_UPDATED: Final = "service.updated"
SERVICE_DELETED: Final = "service.deleted"
#: Member events: things inside a project, each with its own lifecycle.
MEMBER_EVENTS: Final = (
    WORKLOAD_ATTACHED, WORKLOAD_DETACHED, EIP_CREATED, EIP_DELETED, FIP_CREATED, FIP_DELETED,
    SERVICE_CREATED, SERVICE_UPDATED, SERVICE_DELETED,
)  # fmt: skip
#: Member events that remove the member.
MEMBER_REMOVALS: Final = (WORKLOAD_DETACHED, EIP_DELETED, FIP_DELETED, SERVICE_DELETED)

#: Event families a service may consume; each is ``<family>.*`` on the events stream.
EventFamily = Literal["project", "workload", "eip", "fip", "service"]

#: Subjects captured by the events stream.
EVENT_SUBJECTS: Final = ["project.*", "workload.*", "eip.*", "fip.*", "service.*"]
STATUS_SUBJECTS: Final = ["vpcbus.status.>", "vpcbus.usage.>"]
ERROR_SUBJECTS: Final = ["vpcbus.error.>", "vpcbus.dlq.>"]

UNKNOWN: Final = "_"

#: CloudEvents ``type`` for each lifecycle subject.
EVENT_TYPE_PREFIX: Final = "io.vpcbus."


def event_type(subject: str) -> str:
    """The CloudEvents type that goes with a lifecycle subject (``io.vpcbus.project.created``)."""
    return EVENT_TYPE_PREFIX + subject


def status_subject(service: str, org: str, project: str) -> str:
    return f"vpcbus.status.{service}.{org}.{project}"


def status_filter(service: str = "*", org: str = "*", project: str = "*") -> str:
    """A subscription filter over status subjects; ``*`` leaves a token open."""
    return f"vpcbus.status.{service}.{org}.{project}"


def pool_usage_subject(pool: str) -> str:
    """IPAM's accounting of one external pool (last message kept)."""
    return f"vpcbus.usage.pool.{pool}"


def error_subject(service: str, org: str | None, project: str | None) -> str:
    return f"vpcbus.error.{service}.{org or UNKNOWN}.{project or UNKNOWN}"


def dlq_subject(service: str, org: str | None, project: str | None) -> str:
    return f"vpcbus.dlq.{service}.{org or UNKNOWN}.{project or UNKNOWN}"


def kv_bucket(service: str) -> str:
    """The service's own state bucket (its recorded desired state per project)."""
    return f"vpcbus-{service}"


#: IPAM's address bucket: one key per allocated address, created with compare-and-set.
IPAM_ADDRESSES_BUCKET: Final = "vpcbus-ipam-addresses"
