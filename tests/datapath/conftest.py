"""Data-path tests must not vanish silently where they are expected to run.

They skip themselves when the machine cannot run them (not root, a tool or ``ip netns``
missing). ``scripts/test`` sets ``VPCBUS_REQUIRE_DATAPATH=1`` when it runs as root (CI does),
and then such a skip is reported as a failure instead.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    required = os.environ.get("VPCBUS_REQUIRE_DATAPATH") == "1"
    if required and report.skipped and item.get_closest_marker("datapath") is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"VPCBUS_REQUIRE_DATAPATH=1 but the data-path test skipped: {report.longrepr}"
        )
    return report
