"""Lifecycle events as CloudEvents 1.0 (structured JSON mode).

A publisher sends the envelope as the message body on the lifecycle subject and the event
``id`` as the ``Nats-Msg-Id`` header, so JetStream drops a duplicate publish. ``generation``
is a CloudEvents extension attribute: when present it orders events of one project; when
absent, the stream sequence does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from vpcbus_proto import subjects
from vpcbus_proto.members import (
    EipRef,
    EipSpec,
    FipRef,
    FipSpec,
    LbServiceRef,
    LbServiceSpec,
    WorkloadRef,
    WorkloadSpec,
)
from vpcbus_proto.projects import ProjectRef, ProjectSpec

DataT = TypeVar("DataT", bound=BaseModel)

#: Largest accepted event body; bigger messages are rejected before parsing.
MAX_EVENT_BYTES = 64 * 1024


class CloudEvent(BaseModel, Generic[DataT]):
    """CloudEvents 1.0 envelope; unknown extension attributes are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=256, description="Unique event id.")
    source: str = Field(min_length=1, max_length=1024, description="Who published it.")
    type: str = Field(min_length=1, max_length=256, description="io.vpcbus.<subject>")
    time: datetime | None = None
    subject: str | None = Field(default=None, max_length=1024)
    datacontenttype: Literal["application/json"] | None = "application/json"
    generation: int | None = Field(
        default=None,
        strict=True,  # "1" or true is not a generation: the schema says integer, so do we
        ge=1,
        le=2**53,
        description="Per-project generation; higher wins. Absent: stream order decides.",
    )
    data: DataT


class ProjectUpserted(CloudEvent[ProjectSpec]):
    """``project.created`` and ``project.updated``: the full desired spec."""


class ProjectDeleted(CloudEvent[ProjectRef]):
    """``project.deleted``: only the identity."""


class WorkloadAttached(CloudEvent[WorkloadSpec]):
    """``workload.attached``: a VM or pod NIC joins its project's network.

    Re-publishing it with a changed static ``ip`` or ``mac`` (and a higher generation)
    changes the NIC; ``generation`` orders events of one NIC.
    """


class WorkloadDetached(CloudEvent[WorkloadRef]):
    """``workload.detached``: the NIC is gone; its address is quarantined, then reused."""


class EipCreated(CloudEvent[EipSpec]):
    """``eip.created``: a user EIP (Kube-DC ``EIp``); ``generation`` orders one EIP's events."""


class EipDeleted(CloudEvent[EipRef]):
    """``eip.deleted``: the EIP's address goes back to its pool (after quarantine)."""


class FipCreated(CloudEvent[FipSpec]):
    """``fip.created``: a floating IP (Kube-DC ``FIp``); re-published with a higher
    ``generation`` it changes the FIP (a new target; its EIP source is immutable)."""


class FipDeleted(CloudEvent[FipRef]):
    """``fip.deleted``: the NAT rule goes; an EIP the FIP allocated goes back to its pool."""


class ServiceUpserted(CloudEvent[LbServiceSpec]):
    """``service.created`` / ``service.updated``: a LoadBalancer service (ports, endpoints,
    EIP binding); ``generation`` orders one service's events."""


class ServiceDeleted(CloudEvent[LbServiceRef]):
    """``service.deleted``: its load balancer goes; an EIP it allocated goes back to its pool."""


#: The message model of each lifecycle subject: what the services validate (runtime's intake),
#: what the schemas and the AsyncAPI document describe.
EVENT_MODELS: Final[dict[str, type[CloudEvent[Any]]]] = {
    subjects.PROJECT_CREATED: ProjectUpserted,
    subjects.PROJECT_UPDATED: ProjectUpserted,
    subjects.PROJECT_DELETED: ProjectDeleted,
    subjects.WORKLOAD_ATTACHED: WorkloadAttached,
    subjects.WORKLOAD_DETACHED: WorkloadDetached,
    subjects.EIP_CREATED: EipCreated,
    subjects.EIP_DELETED: EipDeleted,
    subjects.FIP_CREATED: FipCreated,
    subjects.FIP_DELETED: FipDeleted,
    subjects.SERVICE_CREATED: ServiceUpserted,
    subjects.SERVICE_UPDATED: ServiceUpserted,
    subjects.SERVICE_DELETED: ServiceDeleted,
}


def new_event(
    subject: str,
    data: BaseModel,
    *,
    source: str = "/vpcbus/cli",
    generation: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Build a CloudEvent body for ``subject`` (used by the CLI, tests and the bench)."""
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": subjects.event_type(subject),
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        **({"generation": generation} if generation is not None else {}),
        "data": data.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
