"""A service process imports :mod:`vpcbus_runtime.early` before nats-py: no aiohttp (nats-py's
WebSocket transport) unless ``NATS_URL`` names a WebSocket server. Each case runs in a fresh
interpreter, as ``python -m vpcbus_<svc>`` does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vpcbus_runtime.early import wants_websocket

SERVICES = ("ipam", "vpc", "nat", "dns")
#: Prints whether nats-py's transport module got aiohttp.
PROBE = "import vpcbus_{svc}.__main__, nats.aio.transport as t; print(t.aiohttp is not None)"


def imports_aiohttp(svc: str, nats_url: str | None) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    if nats_url is not None:
        env["NATS_URL"] = nats_url
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(svc=svc)],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip() == "True"


@pytest.mark.parametrize("svc", SERVICES)
def test_a_service_does_not_import_aiohttp(svc: str) -> None:
    assert imports_aiohttp(svc, None) is False
    assert imports_aiohttp(svc, "nats://127.0.0.1:4222") is False


def test_a_websocket_server_keeps_the_transport() -> None:
    assert imports_aiohttp("vpc", "nats://a:4222, WS://b:8080") is True


@pytest.mark.parametrize(
    ("urls", "want"),
    [
        ("", False),
        ("nats://127.0.0.1:4222", False),
        ("tls://a:4222,nats://b:4222", False),
        ("ws://a:8080", True),
        ("nats://a:4222, wss://b:443", True),
    ],
)
def test_which_urls_want_websocket(urls: str, want: bool) -> None:
    assert wants_websocket(urls) is want
