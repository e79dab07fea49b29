"""``vpcbus dashboard`` end to end: the command as a process against a real nats-server and
the four services, read over raw HTTP and in headless Chromium.

The browser test opens the page before the project exists, creates it through the client and
waits, without reloading, for the page to show all four services Ready and its EIPs, then for
a malformed event's rejection in the errors table. It saves a screenshot of the page to the
test's tmp dir and to ``test-artifacts/dashboard.png``. It is skipped when Debian's
``chromium`` is not installed, unless ``VPCBUS_REQUIRE_BROWSER`` is set (scripts/test sets it:
scripts/setup installs chromium).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ServiceProcs
from tests.integration import browsing
from tests.integration.helpers import create_ready, eventually, spec
from vpcbus.client import Client, member_at
from vpcbus.embedded import commands
from vpcbus.embedded.natsd import NatsServer
from vpcbus_proto import subjects
from vpcbus_proto.members import EipSpec
from vpcbus_proto.status import ExternalAddress

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.connected, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass(frozen=True)
class Dashboard:
    url: str  # http://127.0.0.1:<port>/
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def dashboard(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """``vpcbus dashboard --port 0`` as a process; its log tells the port it got."""
    home = tmp_path_factory.mktemp("dashboard")
    log = home / "dashboard.log"
    with log.open("wb") as out:
        # The argv of compose's dashboard service (tests/static/test_compose.py compares them).
        argv = commands.dashboard_argv(
            host="127.0.0.1", port=0, keepalive=1, vpcbus=Path(sys.executable).parent / "vpcbus"
        )
        env = {**os.environ, "NATS_URL": nats_server.url, "VPCBUS_HOME": str(home / "home")}
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "http://" not in log.read_text():
            assert proc.poll() is None, f"dashboard exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"dashboard not serving: {log.read_text()}"
            time.sleep(0.05)
        url = next(w for w in log.read_text().split() if w.startswith("http://"))
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        yield Dashboard(url, host, int(port), proc, log)
        assert proc.poll() is None, f"dashboard died: {log.read_text()}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()


async def http(d: Dashboard, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """One raw request: the status line, the headers (lower-case names) and the body."""
    reader, writer = await asyncio.open_connection(d.host, d.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # every response but /events closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: dashboard\r\n\r\n".encode()


async def test_http_serves_page_state_and_404(dashboard: Dashboard) -> None:
    status, headers, body = await http(dashboard, get("/"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert b'<table id="projects">' in body and int(headers["content-length"]) == len(body)

    status, headers, body = await http(dashboard, get("/api/state?x=1"))
    assert status == "HTTP/1.1 200 OK" and headers["content-type"] == "application/json"
    state = json.loads(body)
    assert state["services"] == list(subjects.SERVICES)
    assert {"projects", "pools", "events", "errors", "listeners"} <= set(state)

    for path in ("/nope", "/api", "/events/x"):
        status, _, body = await http(dashboard, get(path))
        assert (status, body) == ("HTTP/1.1 404 Not Found", b"not found\n"), path
    status, headers, _ = await http(dashboard, b"POST /api/state HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 405 Method Not Allowed" and headers["allow"] == "GET"
    status, _, _ = await http(dashboard, b"hello\r\n\r\n")
    assert status == "HTTP/1.1 400 Bad Request"


async def sse_lines(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:
            return
        yield line.decode().rstrip("\n")


async def next_data(lines: AsyncIterator[str], kind: str) -> dict[str, object]:
    """The data of the next server-sent event of ``kind``."""
    async for line in lines:
        if line == f"event: {kind}":
            data: dict[str, object] = json.loads((await anext(lines)).removeprefix("data: "))
            return data
    raise AssertionError(f"the stream ended before an {kind} event")


async def test_events_stream_snapshot_then_live_updates(
    dashboard: Dashboard, client: Client
) -> None:
    reader, writer = await asyncio.open_connection(dashboard.host, dashboard.port)
    try:
        writer.write(get("/events"))
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
        assert head.startswith("HTTP/1.1 200 OK\r\n")
        assert "Content-Type: text/event-stream\r\n" in head
        lines = sse_lines(reader)
        assert [await anext(lines) for _ in range(3)] == ["retry: 2000", "", "event: snapshot"]
        snapshot = json.loads((await anext(lines)).removeprefix("data: "))
        assert snapshot["services"] == list(subjects.SERVICES)

        # A lifecycle event arrives live, with the services' verdict: invalid.
        ack = await client.js.publish("project.created", b"not json", stream=subjects.EVENTS_STREAM)
        event = await next_data(lines, "event")
        assert event["seq"] == ack.seq and event["invalid"] is True
        async for line in lines:  # quiet now: the keep-alive comment (--keepalive 1)
            if line == ": keep-alive":
                break
        assert await listeners(dashboard) == 1
    finally:
        writer.close()
    # The server notices at once (not at its next keep-alive) that the page went away.
    assert await eventually(lambda: has_listeners(dashboard, 0), timeout=0.8, interval=0.05)


async def listeners(d: Dashboard) -> int:
    _, _, body = await http(d, get("/api/state"))
    count: int = json.loads(body)["listeners"]
    return count


async def has_listeners(d: Dashboard, count: int) -> bool:
    return await listeners(d) == count


def require_browser() -> None:
    if browsing.executable() is None and not os.environ.get("VPCBUS_REQUIRE_BROWSER"):
        pytest.skip(
            "chromium is not installed (Debian package chromium; scripts/setup installs it); "
            "set VPCBUS_REQUIRE_BROWSER=1 to fail instead"
        )


# What the page shows, read through its data attributes.
ROW = """document.querySelector('#projects tr[data-project="dash/shop"]')"""
STATES = """Object.fromEntries(
    [...document.querySelectorAll('#projects td[data-project="dash/shop"][data-service]')]
    .map((td) => [td.dataset.service, td.dataset.state]))"""
EIPS = f"""Object.fromEntries([...({ROW}?.querySelectorAll('[data-eip]') ?? [])]
    .map((e) => [e.dataset.eip, e.dataset.ip]))"""


def rejections(seq: int) -> str:
    """The services' InvalidEvent records of the event at ``seq``, by service."""
    return f"""[...document.querySelectorAll(
        '#errors tr[data-kind="rejected"][data-event-sequence="{seq}"]')]
        .map((tr) => tr.dataset.service + ' ' + tr.dataset.reason).sort()"""


def invalid_event(seq: int) -> str:
    return f"""document.querySelector('#events li[data-seq="{seq}"]')?.dataset.invalid"""


async def test_page_shows_a_project_turn_ready_live(
    services: ServiceProcs, dashboard: Dashboard, client: Client, tmp_path: Path
) -> None:
    require_browser()
    async with browsing.Browser.start(tmp_path / "profile") as browser:
        tab = await browser.tab()
        await tab.navigate(dashboard.url)

        async def shows(expression: str, want: object) -> bool:
            return bool(await tab.evaluate(expression) == want)

        conn = "document.getElementById('conn').dataset.state"
        assert await eventually(lambda: shows(conn, "live"), timeout=10)
        assert await tab.evaluate(f"{ROW} === null")
        await tab.evaluate("window.notReloaded = true")

        statuses = await create_ready(client, spec("dash", "shop", "10.7.0.0/24"))
        ready = dict.fromkeys(subjects.SERVICES, "Ready")
        assert await eventually(lambda: shows(STATES, ready), timeout=10), await tab.evaluate(
            STATES
        )
        assert await tab.evaluate(f"{ROW}.dataset.ready") == "true"
        facts = statuses["ipam"].addresses
        gateway = facts.eip("default-gw") if facts is not None else None
        assert gateway is not None
        want = {"default-gw": gateway.ip_address}
        assert await eventually(lambda: shows(EIPS, want), timeout=5), await tab.evaluate(EIPS)

        # A user EIP shows up next to the gateway's.
        ingress = await create_eip(client, EipSpec(organization="dash", project="shop", name="in"))
        want = {"default-gw": gateway.ip_address, "in": ingress.ip_address}
        assert await eventually(lambda: shows(EIPS, want), timeout=5), await tab.evaluate(EIPS)

        # A malformed event: listed as invalid, and each service's rejection of it.
        ack = await client.js.publish("project.created", b"{oops", stream=subjects.EVENTS_STREAM)
        assert await eventually(lambda: shows(invalid_event(ack.seq), "true"), timeout=5)
        rejected = sorted(f"{s} InvalidEvent" for s in subjects.SERVICES)
        assert await eventually(lambda: shows(rejections(ack.seq), rejected), timeout=10), (
            await tab.evaluate(rejections(ack.seq))
        )
        assert await tab.evaluate("window.notReloaded") is True  # all of it arrived live
        assert await tab.evaluate(conn) == "live"  # and the event stream never broke

        png = await tab.screenshot()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "dashboard.png").write_bytes(png)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(png)


async def create_eip(client: Client, eip: EipSpec) -> ExternalAddress:
    """Publish ``eip.created`` and return the address once IPAM holds it."""
    watch = await client.watch(eip.organization, eip.project)
    try:
        published = await client.create_eip(eip)
        got = await watch.until(member_at(eip.member, published.generation), timeout=15)
    finally:
        await watch.stop()
    facts = got["ipam"].addresses
    address = facts.eip(eip.name) if facts is not None else None
    assert address is not None and address.ready, got["ipam"]
    return address


def test_the_compose_healthcheck_passes_against_the_dashboard(dashboard: Dashboard) -> None:
    """The dashboard container's healthcheck, pointed at this test's port, run for real."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    test = compose["services"]["dashboard"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    script = test[3].replace(":8080/", f":{dashboard.port}/")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    broken = script.replace("/api/state", "/nope")
    done = subprocess.run(
        [sys.executable, "-c", broken], capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0  # the probe can fail
