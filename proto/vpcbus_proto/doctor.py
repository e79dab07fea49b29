"""The doctor: what ``vpcbus.svc.<service>.doctor`` answers and ``vpcbus doctor`` prints.

Each service audits the projects it knows (its records, the projects it owns backend state
for, and those its members name) against its backend, writing nothing: VPC, NAT and DNS run
their own reconcile in a dry run against OVN NB (what it would insert, change or delete is
what is wrong), IPAM checks its address book in KV. ``fix`` then runs the normal reconcile
of every project with a finding and audits those projects again.

A :class:`Finding` names one thing: a row (``Logical_Switch_Port/web.acme-shop``), a KV key
(``subnet.acme.shop.10.0.0.7``) or an address; ``kind`` says what is wrong with it.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from vpcbus_proto import names
from vpcbus_proto.status import _Model
from vpcbus_proto.subjects import ServiceName

#: The endpoint's subject (``{service}``: the service's name); every service answers it.
DOCTOR_ENDPOINT = "vpcbus.svc.{service}.doctor"
#: At most this many findings in one reply (NATS caps a message's size); ``truncated`` says so.
MAX_FINDINGS = 1000

Kind = Literal[
    "missing",  # a row the desired state has and the backend lacks
    "drifted",  # a row whose columns differ from the desired state
    "extra",  # a row of a live project that its desired state does not have
    "orphan",  # a row or key of a project that has no live record (never created, deleted)
    "blocked",  # the project could not be checked: what its check needs is missing
    "leak",  # an address held for a holder no live member names (IPAM)
    "duplicate",  # a holder with two addresses; an IP or MAC used twice on one switch
    "dangling",  # a binding whose holder does not hold its address (IPAM)
    "unbound",  # an address held without its holder's binding (IPAM)
    "outside",  # an address outside its subnet or pool (IPAM)
    "mismatch",  # OVN NB disagrees with IPAM's allocation (the CLI's cross-check)
]


class Finding(_Model):
    """One thing that is wrong."""

    service: str = Field(description="Who found it: a service, or `cross-check` (the CLI).")
    project: str = Field(description="The project key, `<organization>.<project>`; `-`: none.")
    kind: Kind
    object: str = Field(description="What: `<NB table>/<name>`, a KV key, an address.")
    detail: str = Field(default="", description="Why, e.g. `addresses: [a] -> [b]`.")


class DoctorRequest(_Model):
    """Audit every project the service knows, or one; ``fix``: repair what is found."""

    organization: str | None = Field(default=None, description="With `project`: only this one.")
    project: str | None = None
    fix: bool = Field(
        default=False, description="Reconcile every project with a finding, then audit again."
    )

    @model_validator(mode="after")
    def _one_or_all(self) -> Self:
        if (self.organization is None) != (self.project is None):
            raise ValueError("name both organization and project, or neither")
        for value in (self.organization, self.project):
            if value is not None and not names.is_label(value):
                raise ValueError(f"{value!r} is not a DNS label")
        return self

    @property
    def key(self) -> str | None:
        if self.organization is None or self.project is None:
            return None
        return names.project_key(self.organization, self.project)


class DoctorReply(_Model):
    """What one service found (and, with ``fix``, repaired)."""

    service: ServiceName
    projects: int = Field(ge=0, description="How many projects were audited.")
    findings: list[Finding] = Field(
        default_factory=list, description="What is wrong now (after the repair, with `fix`)."
    )
    fixed: list[Finding] = Field(
        default_factory=list, description="Found, then gone after the repair (`fix` only)."
    )
    truncated: bool = Field(
        default=False, description=f"More than {MAX_FINDINGS} findings: the rest is left out."
    )
