"""Whether this host can run a chassis: the skip every data-path module makes first.

Used by the data-path test modules before they start any server, service or chassis.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

import pytest


def skip_unless_usable(prefix: str, tools: Sequence[str]) -> None:
    """Skip when a tool is missing or ``ip netns`` does not work here (no root, a container
    without CAP_SYS_ADMIN); the probe namespace is ``<prefix>-probe``."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    probe = f"{prefix}-probe"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"`ip netns` is unusable here: {added.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], check=True)
