"""One service's slice of a project as Kubernetes objects, for the Kube-OVN backends.

A service's objects carry labels that say who manages them, which service owns them and
which project they belong to; that is how they are found again (``owned_keys``, pruning,
teardown, the doctor's audit), so a service only ever touches its own slice. Applying is
server-side apply with the service's field manager, then pruning what the desired slice no
longer has; teardown deletes kind by kind in deletion order and waits while a kind is still
there (a finalizer), so an object never goes before what holds it. A slice that spans API
groups (Kube-OVN kinds and core or Multus kinds) is a :class:`SliceGroup`.

The audit's default drift rule is :func:`covers` on ``spec``: the stored object must have
every field we set, with our value; fields the API server or Kube-OVN's controller add
(defaults such as a Subnet's ``enableLb`` or ``gatewayType``) are not drift, as they are not
ours under server-side apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from vpcbus_proto.doctor import Finding, Kind
from vpcbus_runtime.kube import KubeClient, Object
from vpcbus_runtime.reconciling import Result

log = structlog.get_logger()


@dataclass(frozen=True)
class Applied:
    """What :meth:`Slice.apply` did: the stored objects, as the server returned them, and the
    pruned ones still terminating (``Kind/name``), which later kinds wait for."""

    stored: list[Object]
    terminating: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Slice:
    kube: KubeClient
    service: str
    api_version: str
    #: The kinds of the slice, in deletion order (listed even when none is desired).
    kinds: tuple[str, ...]
    #: The labels every object of the slice carries (managed-by, owner).
    labels: Mapping[str, str]
    #: The label naming the project (``<org>.<project>``).
    project_label: str
    field_manager: str
    #: How soon a project waiting on Kubernetes (a finalizer) is looked at again.
    requeue_after: float = 2.0
    #: The audit's drift rule (stored, desired) -> differs; the default: ``spec`` not covered.
    differs: Callable[[Object, Object], bool] | None = None

    def selector(self, key: str | None = None) -> str:
        terms = [f"{name}={value}" for name, value in self.labels.items()]
        if key is not None:
            terms.append(f"{self.project_label}={key}")
        return ",".join(terms)

    async def listed(self, kind: str, key: str | None = None) -> list[Object]:
        items, _ = await self.kube.list(self.api_version, kind, label_selector=self.selector(key))
        return items

    async def owned_keys(self) -> list[str]:
        keys: set[str] = set()
        for kind in self.kinds:
            for obj in await self.listed(kind):
                key = (obj["metadata"].get("labels") or {}).get(self.project_label)
                if key:
                    keys.add(key)
        return sorted(keys)

    async def apply(self, key: str, want: Sequence[Object]) -> Applied:
        """Apply ``want`` (in order) and delete the project's objects of the slice that it no
        longer has, kind by kind in deletion order: a kind whose deleted objects are still
        there (a finalizer: Kube-OVN refuses to delete an OvnEip a rule still uses) holds the
        later kinds back until the next reconcile."""
        stored = [await self.kube.apply(m, field_manager=self.field_manager) for m in want]
        keep = {(m["kind"], m["metadata"]["name"]) for m in want}
        for kind in self.kinds:
            stale = [o for o in await self.listed(kind, key)
                     if (kind, o["metadata"]["name"]) not in keep]  # fmt: skip
            for obj in stale:
                name = obj["metadata"]["name"]
                await self.kube.delete(self.api_version, kind, name, _namespace(obj))
                log.info("pruned", kind=kind, name=name, project=key)
            if stale:
                left = [o for o in await self.listed(kind, key)
                        if (kind, o["metadata"]["name"]) not in keep]  # fmt: skip
                if left:
                    return Applied(stored, [f"{kind}/{o['metadata']['name']}" for o in left])
        return Applied(stored)

    def outcome(
        self,
        applied: Applied,
        objects: Sequence[str],
        not_ready: Callable[[Object], str | None],
        message: str,
    ) -> Result:
        """``Ready`` with ``message`` once every stored object is ready by its kind's own rule
        (``not_ready`` says why one is not) and nothing pruned is still terminating;
        ``Pending`` with a requeue until then: waiting for the controller is not an error."""
        if applied.terminating:
            return Result(
                "Pending", "WaitingForDeletion",
                f"{', '.join(applied.terminating)} still terminating",
                requeue_after=self.requeue_after, objects=objects,
            )  # fmt: skip
        waiting = [why for obj in applied.stored if (why := not_ready(obj)) is not None]
        if waiting:
            return Result(
                "Pending", "WaitingForKubeOvn", "; ".join(waiting),
                requeue_after=self.requeue_after, objects=objects,
            )  # fmt: skip
        return Result("Ready", "Reconciled", message, objects=objects)

    def blocked(self, key: str, detail: str) -> list[Finding]:
        """The audit's answer for a project it cannot check yet."""
        return [Finding(service=self.service, project=key, kind="blocked",
                        object=f"project/{key}", detail=detail)]  # fmt: skip

    async def teardown(self, key: str) -> Result:
        """Delete kind by kind in deletion order; ``Pending`` while a kind is still there
        after its delete, ``Deleted`` once nothing is left ("already gone" is success)."""
        for kind in self.kinds:
            for obj in await self.listed(kind, key):
                name = obj["metadata"]["name"]
                await self.kube.delete(self.api_version, kind, name, _namespace(obj))
            left = await self.listed(kind, key)
            if left:
                names = ", ".join(o["metadata"]["name"] for o in left)
                return Result(
                    "Pending", "WaitingForDeletion", f"{kind} {names} still terminating",
                    requeue_after=self.requeue_after,
                )  # fmt: skip
        log.info(f"{self.service} torn down", project=key)
        return Result("Deleted", "TornDown")

    async def audit(self, key: str, want: Sequence[Object] | None) -> list[Finding]:
        """The project's objects against ``want`` (None: the project is gone, so every object
        is an orphan): missing, drifted (spec differs) and extra ones. Writes nothing."""

        def finding(kind: Kind, obj: str, detail: str = "") -> Finding:
            return Finding(service=self.service, project=key, kind=kind, object=obj,
                           detail=detail)  # fmt: skip

        have: dict[tuple[str, str], Object] = {}
        for k in self.kinds:
            have.update({(k, o["metadata"]["name"]): o for o in await self.listed(k, key)})
        if want is None:
            return [finding("orphan", f"{k}/{n}") for k, n in have]
        out = []
        for m in want:
            ident = (m["kind"], m["metadata"]["name"])
            found = have.pop(ident, None)
            if found is None:
                out.append(finding("missing", "/".join(ident)))
            elif (self.differs or _spec_differs)(found, m):
                out.append(finding("drifted", "/".join(ident), "spec differs"))
        out += [finding("extra", f"{k}/{n}") for k, n in have]
        return out


def covers(stored: Any, want: Any) -> bool:
    """Whether ``stored`` has every field of ``want`` (maps: recursively; lists: the same
    length, item by item; anything else: equal), so fields others add are no drift."""
    if isinstance(want, dict):
        return isinstance(stored, dict) and all(
            k in stored and covers(stored[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(want)
            and all(covers(s, w) for s, w in zip(stored, want, strict=True))
        )
    return bool(stored == want)


def _spec_differs(stored: Object, want: Object) -> bool:
    return not covers(stored.get("spec"), want["spec"])


@dataclass(frozen=True)
class SliceGroup:
    """One service's slice over several API groups: a :class:`Slice` per group, listed in
    deletion order (applied in the reverse order: what the later parts refer to first)."""

    parts: tuple[Slice, ...]

    def _mine(self, part: Slice, want: Sequence[Object]) -> list[Object]:
        return [m for m in want if m["apiVersion"] == part.api_version]

    async def owned_keys(self) -> list[str]:
        keys: set[str] = set()
        for part in self.parts:
            keys |= set(await part.owned_keys())
        return sorted(keys)

    async def apply(self, key: str, want: Sequence[Object]) -> Applied:
        """Each part's objects of ``want`` applied (and its stale ones pruned), the last part
        first."""
        stored: list[Object] = []
        terminating: list[str] = []
        for part in reversed(self.parts):
            applied = await part.apply(key, self._mine(part, want))
            stored += applied.stored
            terminating += applied.terminating
        return Applied(stored, terminating)

    async def teardown(self, key: str) -> Result:
        """Part by part in deletion order; the first that is not gone yet answers."""
        for part in self.parts:
            result = await part.teardown(key)
            if result.state != "Deleted":
                return result
        return Result("Deleted", "TornDown")

    async def audit(self, key: str, want: Sequence[Object] | None) -> list[Finding]:
        out: list[Finding] = []
        for part in self.parts:
            out += await part.audit(key, None if want is None else self._mine(part, want))
        return out

    @property
    def outcome(self) -> Callable[..., Result]:
        """:meth:`Slice.outcome` (of the first part: readiness is the objects' own rule)."""
        return self.parts[0].outcome

    @property
    def blocked(self) -> Callable[[str, str], list[Finding]]:
        """:meth:`Slice.blocked`, as the first part answers it."""
        return self.parts[0].blocked


def _namespace(obj: Object) -> str | None:
    """A namespaced object's namespace (None for a cluster-scoped one)."""
    ns: str | None = obj["metadata"].get("namespace")
    return ns
