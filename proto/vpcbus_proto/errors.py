"""Error and dead-letter records (``vpcbus.error.>`` and ``vpcbus.dlq.>``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from vpcbus_proto.subjects import ServiceName

#: How much of an offending payload an error record carries.
MAX_PAYLOAD_ECHO = 4096


class ErrorEvent(BaseModel):
    """Why a service rejected or gave up on an event; the original payload is echoed."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    service: ServiceName
    kind: Literal["rejected", "dead-letter"]
    reason: str = Field(description="CamelCase reason, e.g. InvalidEvent, InvalidSpec.")
    message: str
    subject: str = Field(description="Subject the offending event arrived on.")
    event_id: str | None = None
    stream_sequence: int | None = None
    deliveries: int = 1
    organization: str | None = None
    project: str | None = None
    payload: str = Field(default="", description=f"First {MAX_PAYLOAD_ECHO} bytes, as text.")
    time: datetime
