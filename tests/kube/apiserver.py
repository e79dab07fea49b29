"""A fake Kubernetes API server in the test process, for the real ``kubernetes`` client.

It speaks what :mod:`vpcbus_runtime.kube` uses, at explicit paths (no discovery): get, list
(``labelSelector``), server-side apply (``PATCH application/apply-patch+yaml`` with
``fieldManager``) on an object and on its ``status``, delete, and watch (``?watch=true``,
chunked JSON lines, ``resourceVersion`` to resume, a 410 ``ERROR`` event for one older than
the kept history, bookmarks). Every write gets the next resourceVersion of one global
counter, as etcd's revision; ``metadata.generation`` grows when anything but metadata and
status changes. Requests need ``Authorization: Bearer <token>``.

Apply is simplified but keeps the SSA rule that matters to a reconciler: each field manager
owns what it last applied, and the object is the merge of every manager's applied
configuration (maps merge, lists are replaced), so a field a manager stops applying goes
away; ``metadata.finalizers`` and ``metadata.ownerReferences`` are sets across managers, as
in Kubernetes. Finalizers are honoured: deleting an object that has some sets
``deletionTimestamp`` (and bumps ``generation``) and keeps it until the last finalizer is
applied away; none may be added meanwhile. There are no conflicts between managers, no
validation against CRD schemas, no garbage collection of ownerReferences and no namespace
existence checks. Objects sit in a dict, so tests assert on state
(:meth:`FakeApiServer.object`, :meth:`FakeApiServer.objects`).
"""

from __future__ import annotations

import bisect
import copy
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

Obj = dict[str, Any]
#: (group/version, plural, namespace or "", name)
Key = tuple[str, str, str, str]

APPLY = "application/apply-patch+yaml"


@dataclass
class _Stored:
    obj: Obj
    intents: dict[str, Obj] = field(default_factory=dict)  # manager -> applied object
    status_intents: dict[str, Obj] = field(default_factory=dict)  # manager -> applied status


@dataclass(frozen=True)
class _Event:
    rv: int
    type: str
    key: Key
    obj: Obj


class HttpError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def merge(base: Obj, over: Obj) -> Obj:
    """``over`` on top of ``base``: maps merge recursively, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _selector(text: str) -> list[tuple[str, str, set[str]]]:
    """``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` as (key, op, values) terms."""
    terms = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
        part = part.strip()
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part):
            terms.append((m[1], m[2], {v.strip() for v in m[3].split(",")}))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", part):
            terms.append((m[1], "notin" if m[2] == "!=" else "in", {m[3]}))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", part):
            terms.append((m[2], "absent" if m[1] else "exists", set()))
        elif part:
            raise HttpError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return terms


def _matches(obj: Obj, terms: list[tuple[str, str, set[str]]]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, values in terms:
        ok = {
            "in": key in labels and labels[key] in values,
            "notin": key not in labels or labels[key] not in values,
            "exists": key in labels,
            "absent": key not in labels,
        }[op]
        if not ok:
            return False
    return True


#: Metadata the server owns; labels and annotations come from the managers' applies.
_SYSTEM_META = ("name", "namespace", "uid", "generation", "creationTimestamp", "resourceVersion",
                "deletionTimestamp", "deletionGracePeriodSeconds")  # fmt: skip
_NO_NEW_FINALIZERS = (
    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"
)
#: Metadata lists that are sets across managers (their union), keyed by what identifies an item.
_SET_META: dict[str, Callable[[Any], Any]] = {
    "finalizers": str,
    "ownerReferences": lambda ref: ref.get("uid") or ref.get("name"),
}


def _spec(obj: Obj) -> Obj:
    """What ``generation`` counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """The objects and the event history; one lock, one condition for watchers."""

    def __init__(self, history: int) -> None:
        self.cond = threading.Condition()
        self.objects: dict[Key, _Stored] = {}
        self.events: list[_Event] = []
        self.rv = 0
        self.compacted = 0  # events up to here are forgotten
        self.history = history
        self.stopping = False
        #: As a real API server: a namespaced object is refused in a namespace that does not
        #: exist (off by default: most tests do not create their namespaces).
        self.require_namespaces = False

    def _record(self, kind: str, key: Key, obj: Obj) -> None:
        self.events.append(_Event(self.rv, kind, key, copy.deepcopy(obj)))
        if len(self.events) > self.history:
            dropped, self.events = self.events[: -self.history], self.events[-self.history :]
            self.compacted = dropped[-1].rv
        self.cond.notify_all()

    def apply(self, key: Key, body: Obj, manager: str, *, status: bool) -> Obj:
        gv, _plural, ns, name = key
        meta = body.get("metadata") or {}
        if body.get("apiVersion") != gv or not body.get("kind"):
            raise HttpError(422, "Invalid", f"apiVersion must be {gv!r} and kind set")
        if meta.get("name") != name or (meta.get("namespace") or "") != ns:
            raise HttpError(422, "Invalid", "metadata.name/namespace do not match the path")
        with self.cond:
            stored = self.objects.get(key)
            if stored is None and status:
                raise HttpError(404, "NotFound", f"{key[1]} {name!r} not found")
            namespace_gone = ("v1", "namespaces", "", ns) not in self.objects
            if stored is None and ns and self.require_namespaces and namespace_gone:
                raise HttpError(404, "NotFound", f'namespaces "{ns}" not found')
            if stored is None:
                head = {"name": name, "namespace": ns, "uid": str(uuid.uuid4()),
                        "generation": 1, "creationTimestamp": _now()}  # fmt: skip
                if not ns:
                    del head["namespace"]
                stored = _Stored({"apiVersion": gv, "kind": body["kind"], "metadata": head})
            if stored.obj["kind"] != body["kind"]:
                raise HttpError(422, "Invalid", f"kind {body['kind']!r} != {stored.obj['kind']!r}")
            previous = stored.intents.get(manager)
            if status:
                stored.status_intents[manager] = copy.deepcopy(body.get("status") or {})
            else:
                intent = {k: v for k, v in body.items() if k not in ("status", "apiVersion")}
                kept = ("labels", "annotations", *_SET_META)
                intent["metadata"] = {k: meta[k] for k in kept if k in meta}
                stored.intents[manager] = copy.deepcopy(intent)
            new = self._compose(stored)
            old_finalizers = stored.obj["metadata"].get("finalizers") or []
            added = set(new["metadata"].get("finalizers") or []) - set(old_finalizers)
            if stored.obj["metadata"].get("deletionTimestamp") and added:
                if not status:  # the apply is refused: the manager's intent stays as it was
                    if previous is None:
                        del stored.intents[manager]
                    else:
                        stored.intents[manager] = previous
                raise HttpError(422, "Invalid", _NO_NEW_FINALIZERS)
            if new == stored.obj and key in self.objects:
                return copy.deepcopy(stored.obj)  # a no-op apply changes nothing, as in k8s
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                stored.obj = new  # the last finalizer is gone: the deletion completes
                return self._remove(key)
            if key in self.objects and _spec(new) != _spec(stored.obj):
                new["metadata"]["generation"] += 1
            self.rv += 1
            new["metadata"]["resourceVersion"] = str(self.rv)
            event = "MODIFIED" if key in self.objects else "ADDED"
            stored.obj = new
            self.objects[key] = stored
            self._record(event, key, new)
            return copy.deepcopy(new)

    @staticmethod
    def _compose(stored: _Stored) -> Obj:
        body: Obj = {}
        for intent in stored.intents.values():
            body = merge(body, intent)
        status: Obj = {}
        for applied in stored.status_intents.values():
            status = merge(status, applied)
        old = stored.obj["metadata"]
        meta = {k: old[k] for k in _SYSTEM_META if k in old}
        meta.update({k: v for k, v in (body.pop("metadata", None) or {}).items() if v})
        for name, identity in _SET_META.items():
            union: dict[Any, Any] = {}
            for intent in stored.intents.values():
                for item in (intent.get("metadata") or {}).get(name) or []:
                    union.setdefault(identity(item), item)
            meta.pop(name, None)
            if union:
                meta[name] = list(union.values())
        meta["managedFields"] = [
            {"manager": m, "operation": "Apply", "fieldsType": "FieldsV1", "subresource": sub}
            for sub, managers in (("", stored.intents), ("status", stored.status_intents))
            for m in managers
        ]
        out = {"apiVersion": stored.obj["apiVersion"], "kind": stored.obj["kind"], **body}
        out["metadata"] = meta
        if status:
            out["status"] = status
        return out

    def delete(self, key: Key) -> tuple[Obj, bool]:
        """The object and whether it is gone; one with finalizers is only marked (its
        ``deletionTimestamp`` set, once) and stays until they are applied away."""
        with self.cond:
            stored = self.objects.get(key)
            if stored is None:
                raise HttpError(404, "NotFound", f"{key[1]} {key[3]!r} not found")
            meta = stored.obj["metadata"]
            if not meta.get("finalizers"):
                return self._remove(key), True
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"], meta["deletionGracePeriodSeconds"] = _now(), 0
                meta["generation"] += 1
                self.rv += 1
                meta["resourceVersion"] = str(self.rv)
                self._record("MODIFIED", key, stored.obj)
            return copy.deepcopy(stored.obj), False

    def _remove(self, key: Key) -> Obj:
        stored = self.objects.pop(key)
        self.rv += 1
        stored.obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record("DELETED", key, stored.obj)
        return copy.deepcopy(stored.obj)

    def select(self, gv: str, plural: str, ns: str | None, terms: list[Any]) -> list[Obj]:
        return [
            copy.deepcopy(s.obj)
            for (g, p, n, _), s in sorted(self.objects.items())
            if g == gv and p == plural and (ns is None or n == ns) and _matches(s.obj, terms)
        ]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not every request."""

    def _route(self) -> tuple[str, str, str | None, str | None, str, dict[str, list[str]]]:
        """(group/version, plural, namespace, name, subresource, query) of the request."""
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 3:
            gv, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise HttpError(404, "NotFound", f"no such path {url.path}")
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2:] != ["status"]:
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3 or (len(rest) == 3 and rest[2] != "status"):
            raise HttpError(404, "NotFound", f"no such path {url.path}")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        return gv, rest[0], ns, name, sub, parse_qs(url.query)

    def _serve(self, method: str) -> None:
        try:
            self._check()
            gv, plural, ns, name, sub, query = self._route()
            if method == "GET" and name is None and query.get("watch", [""])[0] in ("true", "1"):
                self._watch(gv, plural, ns, query)
            else:
                self._json(
                    200, self._answer(method, (gv, plural, ns or "", name or ""), sub, query)
                )
        except HttpError as exc:
            self._json(
                exc.code,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": exc.message,
                    "reason": exc.reason,
                    "code": exc.code,
                },
            )

    def _answer(self, method: str, key: Key, sub: str, query: dict[str, list[str]]) -> Obj:
        store = self.server.store
        gv, plural, ns, name = key
        if method == "GET" and not name:
            terms = _selector(query.get("labelSelector", [""])[0])
            with store.cond:
                items, rv = store.select(gv, plural, ns or None, terms), store.rv
            return {
                "kind": "List",
                "apiVersion": gv,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
        if not name:
            raise HttpError(405, "MethodNotAllowed", f"{method} needs an object name")
        if method == "GET":
            with store.cond:
                stored = store.objects.get(key)
                if stored is None:
                    raise HttpError(404, "NotFound", f"{plural} {name!r} not found")
                return copy.deepcopy(stored.obj)
        if method == "PATCH":
            return self._apply(key, sub, query)
        if method == "DELETE":
            self._body()
            gone, removed = store.delete(key)
            if not removed:
                return gone  # kept for its finalizers: the object, as Kubernetes answers
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Success",
                "details": {"name": name, "uid": gone["metadata"]["uid"]},
            }
        self._body()
        raise HttpError(405, "MethodNotAllowed", f"{method} is not supported")

    def _check(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._body()
            raise HttpError(401, "Unauthorized", "Unauthorized")
        with self.server.lock:
            failure = self.server.failures.pop(0) if self.server.failures else None
        if failure is not None:
            self._body()
            raise HttpError(failure, "Injected", f"injected failure {failure}")

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _apply(self, key: Key, sub: str, query: dict[str, list[str]]) -> Obj:
        raw = self._body()
        if self.headers.get("Content-Type", "").split(";")[0] != APPLY:
            raise HttpError(415, "UnsupportedMediaType", "only server-side apply is supported")
        manager = query.get("fieldManager", [""])[0]
        if not manager:
            raise HttpError(400, "BadRequest", "fieldManager is required for apply requests")
        if sub not in ("", "status"):
            raise HttpError(404, "NotFound", f"no subresource {sub!r}")
        try:
            body = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise HttpError(400, "BadRequest", f"error decoding YAML: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "BadRequest", "the body is not an object")
        return self.server.store.apply(key, body, manager, status=sub == "status")

    def _json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, gv: str, plural: str, ns: str | None, query: dict[str, list[str]]) -> None:
        store = self.server.store
        terms = _selector(query.get("labelSelector", [""])[0])
        since = query.get("resourceVersion", [""])[0]
        deadline = time.monotonic() + float(query.get("timeoutSeconds", ["1800"])[0])
        bookmarks = query.get("allowWatchBookmarks", [""])[0] == "true"
        if not re.fullmatch(r"\d*", since):
            raise HttpError(400, "BadRequest", f"invalid resourceVersion {since!r}")

        def wanted(e: _Event) -> bool:
            g, p, n, _ = e.key
            return g == gv and p == plural and (ns is None or n == ns) and _matches(e.obj, terms)

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with store.cond:
            if since in ("", "0"):
                batch = [("ADDED", o) for o in store.select(gv, plural, ns, terms)]
                cursor = store.rv
            else:
                batch, cursor = [], int(since)
        try:
            while True:
                for kind, obj in batch:
                    self._chunk({"type": kind, "object": obj})
                with store.cond:
                    if store.rv <= cursor and not store.stopping:
                        store.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                    expired = cursor < store.compacted
                    rvs = [e.rv for e in store.events]
                    fresh = store.events[bisect.bisect_right(rvs, cursor) :]
                    batch = [(e.type, copy.deepcopy(e.obj)) for e in fresh if wanted(e)]
                    cursor = max(cursor, store.rv)
                    done = store.stopping or time.monotonic() >= deadline
                if expired:
                    self._chunk(
                        {
                            "type": "ERROR",
                            "object": {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "code": 410,
                                "reason": "Expired",
                                "message": "too old resource version",
                            },
                        }
                    )
                    return
                if (done or self._client_gone()) and not batch:
                    if bookmarks:
                        meta = {"resourceVersion": str(cursor)}
                        self._chunk(
                            {"type": "BOOKMARK", "object": {"kind": "Bookmark", "metadata": meta}}
                        )
                    return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if not self.close_connection:
                try:
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    self.close_connection = True

    def _chunk(self, event: Obj) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        """The client closed its end (readable with nothing to read)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return peeked == b""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: Store
    token: str
    failures: list[int]
    lock: threading.Lock


class FakeApiServer:
    """Start with :meth:`start`, point a client at :attr:`url` (:meth:`write_kubeconfig`)."""

    def __init__(self, *, token: str = "vpcbus-test-token", history: int = 10_000) -> None:
        self.store = Store(history)
        self.token = token
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.store, self._server.token = self.store, token
        self._server.failures, self._server.lock = [], threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.store.cond:
            self.store.stopping = True
            self.store.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def write_kubeconfig(self, path: Path, *, token: str | None = None) -> Path:
        """A kubeconfig for this server (with ``token`` instead of the right one)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- what tests look at and do -------------------------------------------------------

    def object(self, gv: str, plural: str, name: str, namespace: str = "") -> Obj | None:
        with self.store.cond:
            stored = self.store.objects.get((gv, plural, namespace, name))
            return copy.deepcopy(stored.obj) if stored else None

    def objects(self, gv: str, plural: str, namespace: str | None = None) -> list[Obj]:
        with self.store.cond:
            return self.store.select(gv, plural, namespace, [])

    @property
    def resource_version(self) -> int:
        with self.store.cond:
            return self.store.rv

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410."""
        with self.store.cond:
            self.store.events.clear()
            self.store.compacted = self.store.rv

    def fail_next(self, *codes: int) -> None:
        """The next requests answer these HTTP statuses (one request each)."""
        with self._server.lock:
            self._server.failures.extend(codes)
