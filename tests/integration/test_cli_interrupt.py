"""Ctrl-C in a waiting CLI command: exit 130 with one line, no traceback; what it published
stays published (real nats-server, no services, so the wait would last)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from vpcbus.embedded.natsd import NatsServer

pytestmark = [pytest.mark.connected]


def test_ctrl_c_while_waiting_exits_130_without_a_traceback(nats_server: NatsServer) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url}
    argv = [sys.executable, "-m", "vpcbus", "project", "create", "ctrl/c", "--cidr",
            "10.0.0.0/24", "--wait", "--timeout", "60"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        time.sleep(3)  # connected, published, waiting for services that do not run
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
