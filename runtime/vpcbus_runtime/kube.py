"""The Kubernetes API as vpcbus uses it: server-side apply, get, list, delete and watch of
plain dicts, with our two error types.

The only module that imports ``kubernetes`` (an import contract says so). The client is
synchronous, so every call runs in a thread (``asyncio.to_thread``); a watch streams its
lines from a thread of its own into the event loop. Paths come from a static table of the
kinds we use (:data:`RESOURCES`), so no discovery round trip is needed. Callers see only
:class:`~vpcbus_runtime.errors.TemporaryError` (retry: unreachable, 5xx, 409, 429),
:class:`ResourceExpiredError` (a 410: relist) and :class:`~vpcbus_runtime.errors.PermanentError`
(invalid request, forbidden, unknown resource).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from vpcbus_runtime.errors import PermanentError, ReconcileError, TemporaryError

Object: TypeAlias = dict[str, Any]
Objects: TypeAlias = list[Object]

APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"
#: Watch event types; an ``ERROR`` event is raised as an error, never yielded.
WATCH_TYPES: Final = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
#: The server ends a watch after this long; callers re-watch from the last resourceVersion.
WATCH_TIMEOUT: Final = 300
#: Connect and read timeouts of ordinary (non-watch) requests, in seconds.
REQUEST_TIMEOUT: Final = (5.0, 30.0)


@dataclass(frozen=True)
class Resource:
    """One kind's REST resource: ``/api/v1`` or ``/apis/<group>/<version>``, its plural and
    whether it lives in namespaces."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str = ""
    ) -> str:
        """``/apis/kube-dc.com/v1/namespaces/acme/projects/prod/status`` and the like; no
        namespace for a namespaced kind means every namespace (list and watch only: one
        object of a namespaced kind needs its namespace)."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        elif not self.namespaced and namespace:
            raise PermanentError("Invalid", f"{self.kind} is cluster-scoped: no namespace")
        elif self.namespaced and name is not None:
            raise PermanentError("Invalid", f"{self.kind} {name!r} needs a namespace")
        path = f"{base}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


def _table(*rows: tuple[str, str, str, bool]) -> dict[tuple[str, str], Resource]:
    return {(api, kind): Resource(api, kind, plural, ns) for api, kind, plural, ns in rows}


#: Every kind vpcbus reads or writes. Kube-OVN's kinds are all cluster-scoped.
RESOURCES: Final = _table(
    ("v1", "Namespace", "namespaces", False),
    ("v1", "Service", "services", True),
    ("v1", "Endpoints", "endpoints", True),
    ("v1", "Pod", "pods", True),
    ("kubeovn.io/v1", "Vpc", "vpcs", False),
    ("kubeovn.io/v1", "Subnet", "subnets", False),
    ("kubeovn.io/v1", "OvnEip", "ovn-eips", False),
    ("kubeovn.io/v1", "OvnSnatRule", "ovn-snat-rules", False),
    ("kubeovn.io/v1", "OvnFip", "ovn-fips", False),
    ("kubeovn.io/v1", "OvnDnatRule", "ovn-dnat-rules", False),
    ("kubeovn.io/v1", "VpcDns", "vpc-dnses", False),
    ("kubeovn.io/v1", "SwitchLBRule", "switch-lb-rules", False),
    ("kubeovn.io/v1", "IP", "ips", False),
    ("kube-dc.com/v1", "Project", "projects", True),
    ("kube-dc.com/v1", "EIp", "eips", True),
    ("kube-dc.com/v1", "FIp", "fips", True),
    ("kubevirt.io/v1", "VirtualMachineInstance", "virtualmachineinstances", True),
    ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "network-attachment-definitions", True),
)


def resource(api_version: str, kind: str) -> Resource:
    """The table row of a kind; PermanentError for a kind vpcbus does not know."""
    found = RESOURCES.get((api_version, kind))
    if found is None:
        raise PermanentError("UnknownKind", f"no resource known for {api_version} {kind}")
    return found


class ResourceExpiredError(TemporaryError):
    """410 Gone: the resourceVersion is older than the server keeps; list again."""

    def __init__(self, message: str) -> None:
        super().__init__("Expired", message, delay=0.0)


def _status_message(body: object) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the body itself (shortened)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    with contextlib.suppress(ValueError):
        parsed = json.loads(text)
        if isinstance(parsed, dict) and parsed.get("message"):
            return str(parsed["message"])
    return text[:300]


def error_for(status: int, message: str, *, retry_after: str | None = None) -> ReconcileError:
    """The typed error of an HTTP status (0: the server was not reached)."""
    if status == 0:
        return TemporaryError("KubeUnreachable", message, delay=2.0)
    if status == 410:
        return ResourceExpiredError(message)
    if status == 409:
        return TemporaryError("Conflict", message, delay=1.0)
    if status == 429:
        delay = float(retry_after) if retry_after and retry_after.isdigit() else 1.0
        return TemporaryError("TooManyRequests", message, delay=delay)
    if status >= 500:
        return TemporaryError("KubeServerError", f"{status}: {message}", delay=2.0)
    reasons = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}
    return PermanentError(reasons.get(status, "Invalid"), f"{status}: {message}")


def _translate(exc: Exception) -> ReconcileError:
    if isinstance(exc, ReconcileError):
        return exc
    if isinstance(exc, ApiException):
        headers = exc.headers or {}
        return error_for(
            exc.status or 0, _status_message(exc.body), retry_after=headers.get("Retry-After")
        )
    return TemporaryError("KubeUnreachable", f"{type(exc).__name__}: {exc}", delay=2.0)


#: What a request may raise besides our own errors: the client's, urllib3's, the socket's.
_CLIENT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


class KubeClient:
    """An async client of one API server (one ``ApiClient``; thread-safe for our calls)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api

    @classmethod
    def from_config(cls, kubeconfig: str | None = None) -> KubeClient:
        """``kubeconfig``, else ``$KUBECONFIG`` or ``~/.kube/config``, else the in-cluster
        service account; PermanentError when none of them is usable."""
        config = kubernetes.client.Configuration()
        local = os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config"))
        try:
            if kubeconfig or local:  # the library reads $KUBECONFIG (a:b:c too) itself
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, client_configuration=config
                )
            else:
                kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=config
                )
        except (ConfigException, OSError, ValueError) as exc:
            raise PermanentError("NoKubeConfig", f"no usable Kubernetes config: {exc}") from exc
        return cls(kubernetes.client.ApiClient(config))

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)

    # -- requests ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Object | None = None,
        content_type: str | None = None,
        stream: bool = False,
    ) -> Any:
        """One request (blocking): the decoded JSON body, or the open response when
        ``stream``; raises our typed errors."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            params = self.api.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )  # fmt: skip
            timeout = (REQUEST_TIMEOUT[0], WATCH_TIMEOUT + 30.0) if stream else REQUEST_TIMEOUT
            response = self.api.call_api(*params, _request_timeout=timeout)
            if stream and 200 <= response.status <= 299:
                return response.response
            data = response.read()  # type: ignore[no-untyped-call]
        except _CLIENT_ERRORS as exc:
            raise _translate(exc) from exc
        if not 200 <= response.status <= 299:
            retry_after = response.headers.get("Retry-After")
            raise error_for(response.status, _status_message(data), retry_after=retry_after)
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise TemporaryError("BadResponse", f"{method} {path}: not JSON: {exc}") from exc

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        return await asyncio.to_thread(self._request, method, path, **kw)

    # -- verbs ---------------------------------------------------------------------------

    async def apply(self, manifest: Object, *, field_manager: str, force: bool = True) -> Object:
        """Server-side apply of ``manifest`` (created when absent); the object as stored."""
        return await self._apply(manifest, "", field_manager=field_manager, force=force)

    async def apply_status(
        self, manifest: Object, *, field_manager: str, force: bool = True
    ) -> Object:
        """Server-side apply on the ``status`` subresource (the object must exist)."""
        return await self._apply(manifest, "status", field_manager=field_manager, force=force)

    async def _apply(
        self, manifest: Object, subresource: str, *, field_manager: str, force: bool
    ) -> Object:
        api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
        meta = manifest.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise PermanentError("Invalid", f"{kind} manifest has no metadata.name")
        path = resource(api_version, kind).path(meta.get("namespace"), name, subresource)
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        result: Object = await self._call(
            "PATCH", path, query=query, body=manifest, content_type=APPLY_CONTENT_TYPE
        )
        return result

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Object | None:
        """The object, or None when it does not exist."""
        path = resource(api_version, kind).path(namespace, name)
        try:
            found: Object = await self._call("GET", path)
        except PermanentError as exc:
            if exc.reason == "NotFound":
                return None
            raise
        return found

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> tuple[Objects, str]:
        """The objects (in every namespace when ``namespace`` is None) and the list's
        resourceVersion, the point to watch from."""
        path = resource(api_version, kind).path(namespace)
        query = [("labelSelector", label_selector)] if label_selector else []
        body = await self._call("GET", path, query=query)
        items: Objects = list(body.get("items") or [])
        return items, str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> bool:
        """Delete the object; False when it was already gone (which is success too)."""
        path = resource(api_version, kind).path(namespace, name)
        try:
            await self._call("DELETE", path)
        except PermanentError as exc:
            if exc.reason == "NotFound":
                return False
            raise
        return True

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        resource_version: str | None = None,
        *,
        timeout_seconds: int = WATCH_TIMEOUT,
    ) -> AsyncGenerator[tuple[str, Object], None]:
        """``(type, object)`` for each change after ``resource_version`` (ADDED, MODIFIED,
        DELETED, BOOKMARK), until the server ends the watch; without a resourceVersion the
        server first sends every current object as ADDED. Raises :class:`ResourceExpiredError`
        when the resourceVersion is too old."""
        path = resource(api_version, kind).path(namespace)
        query = [("watch", "true"), ("allowWatchBookmarks", "true")]
        query.append(("timeoutSeconds", str(timeout_seconds)))
        if resource_version:
            query.append(("resourceVersion", resource_version))
        response = await self._call("GET", path, query=query, stream=True)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Object] | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def pump() -> None:
            try:
                for event in _events(response):
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except Exception as exc:
                if not stop.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, _translate(exc))
            finally:
                if not stop.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, None)

        # Its own thread, not the default executor's: a watch holds it for minutes, and a
        # few watches would otherwise starve every other request of the process.
        reader = threading.Thread(target=pump, name=f"watch-{kind}", daemon=True)
        reader.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                response.shutdown()  # unblocks the reading thread
            await asyncio.to_thread(reader.join, 5.0)
            response.close()  # never back to the pool: the stream may be half read


def _events(response: urllib3.BaseHTTPResponse) -> Iterator[tuple[str, Object]]:
    """Watch events from a streamed response: one JSON document per line."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield _event(line)
    if pending.strip():
        yield _event(pending)


def _event(line: bytes) -> tuple[str, Object]:
    try:
        event = json.loads(line)
        kind, obj = str(event["type"]), event["object"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TemporaryError("BadResponse", f"not a watch event: {line[:200]!r}") from exc
    if kind == "ERROR":
        raise error_for(int(obj.get("code") or 500), str(obj.get("message", "")))
    if kind not in WATCH_TYPES:
        raise TemporaryError("BadResponse", f"unknown watch event type {kind!r}")
    return kind, obj
