"""The README's first command, ``scripts/demo``, run end to end.

It sets up (a no-op here: the venv is the one running this test), starts the embedded stack
with ``vpcbus up`` in a private home, walks the user flow of the README (create two projects
with the same CIDR, list, get eip, trace, a rejected bad CIDR, delete) and stops the stack.
As root the stack includes the chassis and the stand-in upstream, so the trace must show the
SNAT to the project's EIP, and two VMs created with ``vpcbus vm create`` ping each other.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_demo_script_runs_the_readme_flow(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "VPCBUS_HOME": str(tmp_path / "home"),
        "VPCBUS_NATS_PORT": str(_free_port()),
        "VPCBUS_DEMO_DOWN": "1",
        "VPCBUS_CHASSIS_PREFIX": f"vd{os.getpid() % 10000}",  # apart from other chassis
        "VPCBUS_VENV": sys.prefix,
    }
    env.pop("NATS_URL", None)
    env.pop("OVN_NB_DB", None)
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert "project demo-org/web is Ready" in out
    assert "project other-org/web is Ready" in out
    eip = re.search(r"default-gw\s+(100\.65\.\d+\.\d+)\s+Cloud\s+true", out)
    assert eip is not None, out
    assert "is not a valid IPv4 CIDR" in done.stderr
    if os.geteuid() == 0:
        assert f"delivered: output to ext-cloud-localnet; source NAT to {eip[1]}" in out
        assert re.search(r"vm ubuntu created in demo-org/web: 10\.0\.0\.\d+/24", out), out
        assert "vm db created in demo-org/web: 10.0.0.20/24" in out
        assert re.search(r"2 packets transmitted, 2 received", out), out
        assert "vm ubuntu deleted from demo-org/web" in out
    assert "project other-org/web deleted" in out
    assert out.rstrip().endswith("vpcbus stopped")
    assert not (tmp_path / "home" / "stack.json").exists()
