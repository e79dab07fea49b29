"""structlog set-up: JSON lines by default, ``console`` for humans.

Messages are constant; variable content goes in key-values (``project=``, ``event_id=``,
``reconcile_id=``), bound through contextvars by the controller for every line of a run.
"""

from __future__ import annotations

import logging
import sys

import structlog

FORMATS = ("json", "console")
LEVELS = ("debug", "info", "warning", "error")


def configure(service: str, *, fmt: str = "json", level: str = "info") -> None:
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # ovsdbapp and python-ovs log through the standard library.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
