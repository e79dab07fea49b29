"""``vpcbus up --foreground`` stops everything it started when its terminal hangs up (SIGHUP),
as on SIGTERM and Ctrl-C: the services run in sessions of their own (``OWN_SESSION``) and the
daemons detach, so none of them would get the hangup themselves and all would outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration import helpers
from vpcbus import stack
from vpcbus.embedded.natsd import free_port

pytestmark = [pytest.mark.connected]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_the_foreground_supervisor_stops_the_stack_on_a_hangup(
    tmp_path: Path, sig: signal.Signals
) -> None:
    home = tmp_path / "home"
    env = helpers.stack_env("hu")
    argv = [sys.executable, "-m", "vpcbus", "--home", str(home), "up", "--foreground",
            "--no-chassis", "--nats-port", str(free_port())]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (state := stack.load_state(home)) is None or len(state.services) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        daemons = [int(p.read_text()) for p in (home / "ovn" / "run").glob("*.pid")]
        started = [*state.services.values(), *daemons]
        assert len(daemons) == 3 and all(helpers.alive(pid) for pid in started), started
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "stack stopped" in out, out
    deadline = time.monotonic() + 10  # a daemon asked to exit may take a moment
    while (left := [pid for pid in started if helpers.alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, out
