"""Service settings from the environment, read once at start-up by ``service.run``.

``NATS_URL`` and ``OVN_NB_DB`` are honoured as the NATS and OVN tools honour them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_OVN_NB_DB = "unix:/var/run/ovn/ovnnb_db.sock"


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    """Knobs shared by all services; each is one environment variable."""

    nats_url: str = field(default_factory=lambda: os.environ.get("NATS_URL", DEFAULT_NATS_URL))
    nats_user: str | None = field(default_factory=lambda: os.environ.get("NATS_USER"))
    nats_password: str | None = field(
        default_factory=lambda: os.environ.get("NATS_PASSWORD"),
        repr=False,  # never logged
    )
    ovn_nb_db: str = field(default_factory=lambda: os.environ.get("OVN_NB_DB", DEFAULT_OVN_NB_DB))
    #: Full pass over every known project, repairing drift and missed events.
    resync_seconds: float = field(default_factory=lambda: _float("VPCBUS_RESYNC_SECONDS", 30.0))
    #: How long a deleted project's marker is kept to recognise late, stale events.
    tombstone_seconds: float = field(
        default_factory=lambda: _float("VPCBUS_TOMBSTONE_SECONDS", 300.0)
    )
    #: Deliveries of one event before it is dead-lettered.
    max_deliver: int = field(default_factory=lambda: _int("VPCBUS_MAX_DELIVER", 5))
    #: Concurrent reconciles (different projects; one project is never run twice at once).
    #: Most of a reconcile is waiting (KV, peers' statuses, the NB commit, which concurrent
    #: reconciles share): bench/ burst 1000 on 2 cores took 10.2 s with 16, 9.4 with 32,
    #: 8.3-8.6 with 64, 8.1 with 128.
    workers: int = field(default_factory=lambda: _int("VPCBUS_WORKERS", 64))
    #: A new project's first run waits for the peer its build needs to report on it
    #: (``builds_on``, see :class:`~vpcbus_runtime.reconciling.FirstBuild`) while that peer
    #: reports on some project at least this often; 0: no wait.
    first_wait_seconds: float = field(
        default_factory=lambda: _float("VPCBUS_FIRST_WAIT_SECONDS", 1.0)
    )
    log_format: str = field(default_factory=lambda: os.environ.get("VPCBUS_LOG_FORMAT", "json"))
    log_level: str = field(default_factory=lambda: os.environ.get("VPCBUS_LOG_LEVEL", "info"))
    instance: str = field(
        default_factory=lambda: os.environ.get(
            "VPCBUS_INSTANCE", f"{socket.gethostname()}-{os.getpid()}"
        )
    )


#: The backends a network service can write to (``VPCBUS_BACKEND``).
BACKENDS = ("ovn", "kube-ovn")


def backend_from_env() -> str:
    """``VPCBUS_BACKEND``: ``ovn`` (OVN NB, the default) or ``kube-ovn`` (custom resources
    through ``KUBECONFIG`` or the in-cluster account); a bad value stops the service."""
    backend = os.environ.get("VPCBUS_BACKEND", "ovn").strip().lower() or "ovn"
    if backend not in BACKENDS:
        raise SystemExit(f"VPCBUS_BACKEND={backend!r}: want one of {', '.join(BACKENDS)}")
    return backend
