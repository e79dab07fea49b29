"""A service's command line: the environment configures it, ``--log-format`` and
``--log-level`` override the log settings (``python -m vpcbus_dns --log-format console``)."""

from __future__ import annotations

import json

import pytest
import structlog

from vpcbus_runtime import logs
from vpcbus_runtime.service import parse_args


def test_the_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPCBUS_LOG_FORMAT", "console")
    monkeypatch.setenv("VPCBUS_LOG_LEVEL", "warning")
    monkeypatch.setenv("VPCBUS_WORKERS", "3")
    settings = parse_args("dns", [])
    assert (settings.log_format, settings.log_level, settings.workers) == ("console", "warning", 3)


def test_the_command_line_overrides_the_log_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPCBUS_LOG_FORMAT", "json")
    settings = parse_args("dns", ["--log-format", "console", "--log-level", "debug"])
    assert (settings.log_format, settings.log_level) == ("console", "debug")


def test_a_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args("dns", ["--log-format", "xml"])
    assert exit_.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_each_format_carries_the_bound_context(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("dns", fmt=fmt, level="info")
    try:
        with structlog.contextvars.bound_contextvars(project="acme.shop", event_id="e-1"):
            structlog.get_logger().info("reconciled", state="Ready")
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    if fmt == "json":
        record = json.loads(line)
        assert record["event"] == "reconciled" and record["service"] == "dns"
        assert (record["project"], record["event_id"], record["state"]) == (
            "acme.shop",
            "e-1",
            "Ready",
        )
    else:
        assert not line.startswith("{")
        for text in (
            "reconciled",
            "service=dns",
            "project=acme.shop",
            "event_id=e-1",
            "state=Ready",
        ):
            assert text in line
