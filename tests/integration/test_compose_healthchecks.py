"""The healthcheck commands of compose.yaml, run for real against the test stack.

compose.yaml cannot be started here (no Docker engine). Its service commands are the argvs
the fixtures run (tests/static/test_compose.py); this module runs the remaining commands,
the healthchecks, exactly as written in the file (``$$`` unescaped as compose does), with
the addresses pointed at the fixtures. Each must pass while the component is up and fail
when it is not.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ServiceProcs
from tests.kube.apiserver import FakeApiServer
from tests.kube.fixtures import apiserver_fixture, kubeconfig_fixture  # noqa: F401
from vpcbus.embedded import commands, procs
from vpcbus.embedded.natsd import NatsServer

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "compose.yaml").read_text())


def _healthcheck(name: str) -> list[str]:
    test: list[str] = COMPOSE["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [arg.replace("$$", "$") for arg in test[1:]]


def _run_service_probe(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = _healthcheck(name)
    assert argv[0] == "python"  # the image's venv python; here, this venv's
    return subprocess.run(
        [sys.executable, *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("name", commands.SERVICES)
def test_service_healthcheck_passes_only_while_the_service_serves(
    name: str, services: ServiceProcs, service_env: dict[str, str]
) -> None:
    env = dict(service_env)
    ok = _run_service_probe(name, env)
    assert ok.returncode == 0, ok.stderr
    services.stop(name)
    try:
        down = _run_service_probe(name, env)
        assert down.returncode != 0
    finally:
        services.start(name)
        services.wait_registered(service_env["NATS_URL"], (name,))


def test_nats_healthcheck_url_answers_on_the_fixture(nats_server: NatsServer) -> None:
    argv = _healthcheck("nats")
    url = argv[-1]
    assert url.startswith("http://127.0.0.1:8222/")
    probe = url.replace("8222", str(nats_server.monitor_port), 1)
    with urllib.request.urlopen(probe, timeout=5) as reply:
        assert reply.status == 200


def test_bridge_healthcheck_passes_once_the_bridge_has_listed_projects(
    nats_server: NatsServer,
    service_env: dict[str, str],
    apiserver: FakeApiServer,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    env = dict(service_env)
    assert _run_service_probe("bridge", env).returncode != 0  # no bridge has run yet
    with (tmp_path / "bridge.log").open("wb") as log:
        bridge = subprocess.Popen(
            commands.bridge_argv(python=sys.executable), env={**env, "KUBECONFIG": str(kubeconfig)},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (probe := _run_service_probe("bridge", env)).returncode != 0:
            assert time.monotonic() < deadline, probe.stderr + (tmp_path / "bridge.log").read_text()
            time.sleep(0.2)
    finally:
        procs.stop_child(bridge, timeout=15)
