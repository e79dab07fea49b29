"""``vpcbus ovn-central``, the compose ovn-central container's command, run for real.

compose.yaml cannot be started here (no Docker engine), so this runs the very argv its
``ovn-central`` service uses (built by :func:`vpcbus.embedded.commands.ovn_central_argv`, which
tests/static/test_compose.py compares with the file), probes it with the container's
healthcheck command, writes through the TCP remote and checks it stops cleanly on SIGTERM and
keeps its databases across a restart (the compose volume).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpcbus.embedded import commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthcheck(nb_port: int) -> subprocess.CompletedProcess[str]:
    # The compose healthcheck, pointed at this test's port.
    return subprocess.run(
        ["ovn-nbctl", f"--db=tcp:127.0.0.1:{nb_port}", "--timeout=5", "--wait=sb", "sync"],
        capture_output=True,
        text=True,
        check=False,
    )


def _start(rundir: Path, nb_port: int, sb_port: int) -> subprocess.Popen[str]:
    beside = Path(sys.executable).with_name("vpcbus")  # the venv's console script
    vpcbus = str(beside) if beside.exists() else shutil.which("vpcbus")
    assert vpcbus is not None, "the vpcbus console script is not installed"
    argv = commands.ovn_central_argv(
        rundir=rundir,
        nb_remote=f"ptcp:{nb_port}:127.0.0.1",
        sb_remote=f"ptcp:{sb_port}:127.0.0.1",
        vpcbus=vpcbus,
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while _healthcheck(nb_port).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"vpcbus ovn-central never became healthy:\n{out}")
        time.sleep(0.2)
    return proc


def _daemons(rundir: Path) -> list[str]:
    """ovsdb-server / ovn-northd processes still running on ``rundir``."""
    found = subprocess.run(["pgrep", "-af", str(rundir)], capture_output=True, text=True)
    return found.stdout.splitlines()


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def test_ovn_central_command_serves_nb_and_sb_and_keeps_its_data(tmp_path: Path) -> None:
    nb_port, sb_port = _free_port(), _free_port()
    proc = _start(tmp_path, nb_port, sb_port)
    try:
        subprocess.run(
            ["ovn-nbctl", f"--db=tcp:127.0.0.1:{nb_port}", "--wait=sb", "ls-add", "probe"],
            check=True,
            capture_output=True,
        )
        # ovn-northd carried the switch to the Southbound database as a datapath.
        sb = subprocess.run(
            [
                "ovn-sbctl",
                f"--db=tcp:127.0.0.1:{sb_port}",
                "--columns=external_ids",
                "list",
                "Datapath_Binding",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "probe" in sb
    finally:
        out = _stop(proc)
    assert "ovn-central ready" in out
    assert _healthcheck(nb_port).returncode != 0  # really stopped
    assert _daemons(tmp_path) == []  # and no detached daemon is left behind

    proc = _start(tmp_path, nb_port, sb_port)
    try:
        switches = subprocess.run(
            ["ovn-nbctl", f"--db=tcp:127.0.0.1:{nb_port}", "ls-list"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "probe" in switches
    finally:
        _stop(proc)
    assert _daemons(tmp_path) == []
