"""Garbage on the status subjects hurts nobody: a malformed status, or a status published on
another service's or project's subject, is ignored by every reader (the services' peer
reads, the client, ``vpcbus project list``), and the services keep serving.

Real nats-server, real OVN, the four services as processes (the module's own stack).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus.client import Client
from vpcbus_proto import subjects

pytestmark = [pytest.mark.connected]


async def test_malformed_and_misplaced_statuses_are_ignored_by_every_reader(
    services: ServiceProcs, client: Client, service_env: dict[str, str]
) -> None:
    real = await helpers.create_ready(client, helpers.spec("bad", "real"))
    ipam_body = real["ipam"].model_dump_json(by_alias=True).encode()
    before = {s: await helpers.service_figures(client, s) for s in subjects.SERVICES}
    # Garbage where a peer's status would be, and IPAM's status of bad/real as VPC's of bad/ghost.
    await client.js.publish(subjects.status_subject("ipam", "bad", "junk"), b"not json {")
    await client.js.publish(subjects.status_subject("vpc", "bad", "ghost"), ipam_body)

    everything = await client.all_statuses()
    assert "bad.junk" not in everything and "bad.ghost" not in everything
    assert set(everything["bad.real"]) == {"ipam", "vpc", "nat", "dns"}
    assert await client.statuses("bad", "junk") == {}
    assert await client.statuses("bad", "ghost") == {}

    argv = [sys.executable, "-m", "vpcbus", "project", "list"]
    listed = await asyncio.to_thread(
        subprocess.run, argv, env=service_env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "bad/real" in listed.stdout and "junk" not in listed.stdout

    # The services were woken by those subjects (bad/junk, bad/ghost) and keep serving: a
    # project created afterwards becomes Ready, and none of them logged a failure.
    await helpers.create_ready(client, helpers.spec("bad", "after", cidr="10.5.0.0/24"))

    async def woken() -> bool:
        # bad/junk is IPAM's subject (VPC, NAT and DNS watch it), bad/ghost VPC's (IPAM, NAT
        # and DNS): each ran a project with nothing in it (``unknown_projects``).
        now = {s: await helpers.service_figures(client, s) for s in subjects.SERVICES}
        runs = {s: int(now[s]["unknown_projects"] - before[s]["unknown_projects"]) for s in now}
        return runs["vpc"] >= 1 and runs["ipam"] >= 1 and runs["nat"] >= 2 and runs["dns"] >= 2

    assert await helpers.eventually(woken, timeout=15)
    logs = services.logs(400)
    assert "Traceback" not in logs and '"level": "error"' not in logs
