"""A service on the OVN backend does not import the kubernetes client (~0.1 s of CPU at every
start, when all four start together on two cores: bench/ restart recovery)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("service", ["ipam", "vpc", "nat", "dns"])
def test_an_ovn_service_starts_without_the_kubernetes_client(service: str) -> None:
    code = f"import sys, vpcbus_{service}.__main__; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
