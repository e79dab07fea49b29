"""Helpers for the integration suites: NB inspection and waiting on the bus."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import SERVICE_ENV
from vpcbus.client import Client, Statuses, deleted_at, ready_at
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto import subjects
from vpcbus_proto.projects import ProjectRef, ProjectSpec


def spec(org: str, name: str, cidr: str = "10.0.0.0/24", **kw: str) -> ProjectSpec:
    return ProjectSpec(
        organization=org, name=name, cidr_block=cidr, egress_network_type="cloud", **kw
    )


async def create_ready(client: Client, s: ProjectSpec, timeout: float = 30.0) -> Statuses:
    watch = await client.watch(s.organization, s.name)
    try:
        published = await client.upsert(s)
        return await watch.until(
            ready_at(published.generation), timeout=timeout, event_id=published.event_id
        )
    finally:
        await watch.stop()


async def delete_done(client: Client, org: str, name: str, timeout: float = 30.0) -> Statuses:
    watch = await client.watch(org, name)
    try:
        published = await client.delete(ProjectRef(organization=org, name=name))
        return await watch.until(deleted_at(published.generation), timeout=timeout)
    finally:
        await watch.stop()


def nb_rows(
    ovn: OvnCentral, table: str, columns: str = "name,external_ids"
) -> list[dict[str, object]]:
    out = json.loads(ovn.nbctl("--format=json", f"--columns={columns}", "list", table))
    heads = out["headings"]
    return [dict(zip(heads, row, strict=True)) for row in out["data"]]


def ids(row: dict[str, object]) -> dict[str, str]:
    value = row["external_ids"]
    assert isinstance(value, list) and value[0] == "map"
    return dict(value[1])


def owned_rows(ovn: OvnCentral) -> dict[str, list[str]]:
    """Every NB row that carries a vpcbus project, by table."""
    found: dict[str, list[str]] = {}
    for table in (
        "Logical_Router",
        "Logical_Switch",
        "Logical_Router_Port",
        "Logical_Switch_Port",
        "Logical_Router_Static_Route",
        "NAT",
        "DNS",
    ):
        cols = "_uuid,external_ids"
        for row in nb_rows(ovn, table, cols):
            if "vpcbus-project" in ids(row):
                found.setdefault(table, []).append(ids(row)["vpcbus-project"])
    return found


async def kv_keys(client: Client) -> dict[str, list[str]]:
    out = {}
    for service in subjects.SERVICES:
        for bucket in (subjects.kv_bucket(service), subjects.IPAM_ADDRESSES_BUCKET):
            try:
                kv = await client.js.key_value(bucket)
                out[bucket] = await kv.keys()
            except Exception:  # NoKeysError / BucketNotFoundError: nothing in it
                out.setdefault(bucket, [])
    return out


async def service_figures(client: Client, service: str) -> dict[str, Any]:
    """The figures a service's status endpoint reports in ``$SRV.STATS`` (ServiceFigures)."""
    reply = await client.nc.request(f"$SRV.STATS.vpcbus-{service}", b"", timeout=2.0)
    body = json.loads(reply.data)
    assert body["type"] == "io.nats.micro.v1.stats_response"
    (endpoint,) = [e for e in body["endpoints"] if e["name"] == "status"]
    data: dict[str, Any] = endpoint["data"]
    return data


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, interval: float = 0.2
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return await check()


def learn_gateway_mac(ovn: OvnCentral, router: str, port: str, ip: str, mac: str) -> None:
    """Insert the SB MAC binding ovn-controller learns from the gateway's ARP reply.

    No chassis runs in this suite, so nothing answers ARP; ovn-trace stops at the ARP request
    without it. The data-path suite proves the real learning with packets. Stamped with the
    time of learning, as ovn-controller stamps it: the routers age out bindings
    (``mac_binding_age_threshold``), and one without a time is already too old.
    """
    ovn.nbctl("--wait=sb", "sync")
    dp = ovn.sbctl(
        "--bare", "--columns=_uuid", "find", "Datapath_Binding", f"external_ids:name={router}"
    ).strip()
    ovn.sbctl(
        "create",
        "MAC_Binding",
        f"logical_port={port}",
        f"ip={ip}",
        f'mac="{mac}"',
        f"datapath={dp}",
        f"timestamp={int(time.time() * 1000)}",
    )


async def vpcbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m vpcbus ARGS`` as a user runs it, without blocking the event loop."""
    argv = [sys.executable, "-m", "vpcbus", *args]
    return await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, text=True, timeout=120
    )


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a zombie counts until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stack_env(prefix: str, **extra: str) -> dict[str, str]:
    """The environment of ``vpcbus up`` running a stack of the test's own: the tests' service
    settings, chassis namespaces ``<prefix>NNNN-*``, and no NATS or OVN address or login of
    the caller's."""
    env = {**os.environ, **SERVICE_ENV, "VPCBUS_CHASSIS_PREFIX": f"{prefix}{os.getpid() % 10000}"}
    for name in ("NATS_URL", "OVN_NB_DB", "OVN_SB_DB", "NATS_USER", "NATS_PASSWORD"):
        env.pop(name, None)
    return {**env, **extra}
