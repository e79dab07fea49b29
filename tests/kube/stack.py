"""What the integration suites of the Kube-OVN backends share: the services as real processes
against the fake API server (:func:`start_services`), polling with the services' logs on
timeout (:func:`until`), status checks, strict schema checks of stored objects, and writing
the status Kube-OVN's controller would (:func:`report`, :func:`network_ready`)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.conftest import SERVICE_ENV, ServiceProcs
from vpcbus.client import Client
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.kube import KubeClient

KOVN = "kubeovn.io/v1"
NAD_API = "k8s.cni.cncf.io/v1"
#: The field manager standing in for Kube-OVN's controller.
CONTROLLER = "kube-ovn-controller"
SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "kubeovn-crds"


@contextmanager
def start_services(
    nats_url: str, kubeconfig: Path, logs: Path, names: Iterable[ServiceName]
) -> Iterator[ServiceProcs]:
    """``names`` as real processes on the Kube-OVN backend, registered before it yields."""
    env = {
        **os.environ,
        **SERVICE_ENV,
        "NATS_URL": nats_url,
        "VPCBUS_BACKEND": "kube-ovn",
        "KUBECONFIG": str(kubeconfig),
        "VPCBUS_RESYNC_SECONDS": "1",
    }
    procs = ServiceProcs(env, logs)
    try:
        for name in names:
            procs.start(name)
        procs.wait_registered(nats_url, tuple(names))
        yield procs
    finally:
        procs.stop_all()


async def until(
    check: Callable[[], Awaitable[Any]], what: str, procs: ServiceProcs, timeout: float = 30.0
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the services' logs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := await check()):
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")
        await asyncio.sleep(0.1)
    return found


def status_is(
    client: Client,
    project: tuple[str, str],
    service: ServiceName,
    state: str,
    reason: str | None = None,
    generation: int = 0,
) -> Callable[[], Awaitable[ServiceStatus | None]]:
    """A check for :func:`until`: ``service`` reports ``state`` (and ``reason``) for
    ``(org, project)`` at ``generation`` or later."""

    async def check() -> ServiceStatus | None:
        s = await client.status(service, *project)
        if s is None or s.state != state or s.generation < generation:
            return None
        return s if reason is None or s.reason == reason else None

    return check


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """A stored Kube-OVN object against its kind's strict CRD schema (server metadata aside)."""
    schema = json.loads((SCHEMAS / f"{obj['kind']}.json").read_text())
    body = {k: v for k, v in obj.items() if k != "metadata"}
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(body)]


async def report(kube: KubeClient, kind: str, name: str, status: dict[str, Any]) -> None:
    """Write ``status`` on a Kube-OVN object as Kube-OVN's controller does."""
    obj = {"apiVersion": KOVN, "kind": kind, "metadata": {"name": name}, "status": status}
    await kube.apply_status(obj, field_manager=CONTROLLER)


async def network_ready(kube: KubeClient, namespace: str, gateway_eip: str) -> None:
    """What Kube-OVN writes once it built a project's network: the router's ``lrp`` OvnEip
    (at ``gateway_eip``) ready, the Vpc standby, the Subnet's Ready condition."""
    n = namespace
    await report(kube, "OvnEip", f"{n}-ext-cloud",
                 {"ready": True, "v4Ip": gateway_eip, "type": "lrp"})  # fmt: skip
    await report(kube, "Vpc", n, {"standby": True, "subnets": [f"{n}-default"]})
    ready = {"type": "Ready", "status": "True", "reason": "SetPrivateLogicalSwitchSuccess"}
    await report(kube, "Subnet", f"{n}-default", {"conditions": [ready]})
