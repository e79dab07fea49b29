"""Process helpers for the embedded OVN/OVS daemons.

Called by ``vpcbus.embedded.ovn`` (``OvnCentral``) and ``vpcbus.embedded.chassis`` (``Chassis``).

Rules kept here, so that several stacks can run side by side and a crash never leads to
killing a stranger's process:

* every daemon gets a private run/db/log directory (``Dirs``) and the ``OVS_*``/``OVN_*``
  directory variables point there, so nothing touches ``/var/run/openvswitch`` or ``/var/run/ovn``;
* every daemon is started with an explicit ``--pidfile=<abs path>`` and ``--detach``;
* a daemon is stopped by the PID read from that pidfile, and only while ``/proc/PID/cmdline``
  still carries that exact ``--pidfile=`` argument (a recycled PID is never signalled).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 30.0
"""Seconds a helper command may run before it is killed."""

STOP_TIMEOUT = 5.0
"""Seconds a daemon gets to exit after SIGTERM before it is sent SIGKILL."""

_POLL_INTERVAL = 0.02

# Variables that would point OVS/OVN tools at some other (system) instance.
_FOREIGN_ENV = ("OVN_NB_DAEMON", "OVN_SB_DAEMON", "OVN_NB_DB", "OVN_SB_DB", "OVS_SYSCONFDIR")


class CommandError(RuntimeError):
    """A helper command failed (non-zero exit) or timed out (``returncode`` is ``None``)."""

    def __init__(
        self, cmd: Sequence[str], returncode: int | None, stderr: str, stdout: str = ""
    ) -> None:
        self.cmd: tuple[str, ...] = tuple(cmd)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        super().__init__(self._describe())

    def _describe(self) -> str:
        status = "timed out" if self.returncode is None else f"exited with {self.returncode}"
        detail = self.stderr.strip() or self.stdout.strip()
        suffix = f": {detail}" if detail else ""
        return f"`{shlex.join(self.cmd)}` {status}{suffix}"


class StartupError(RuntimeError):
    """A daemon did not come up in time; the message carries the tail of its logs."""


@dataclass(frozen=True)
class Dirs:
    """The private ``run``, ``db`` and ``log`` directories under one root directory."""

    root: Path

    @classmethod
    def create(cls, root: Path) -> Dirs:
        dirs = cls(root.resolve())
        for path in (dirs.run, dirs.db, dirs.log):
            path.mkdir(parents=True, exist_ok=True)
        return dirs

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def db(self) -> Path:
        return self.root / "db"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def env(self) -> dict[str, str]:
        """The process environment with every OVS/OVN directory pointed inside ``root``."""
        env = {key: value for key, value in os.environ.items() if key not in _FOREIGN_ENV}
        for project in ("OVS", "OVN"):
            env[f"{project}_RUNDIR"] = str(self.run)
            env[f"{project}_DBDIR"] = str(self.db)
            env[f"{project}_LOGDIR"] = str(self.log)
        return env


def netns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed with ``ip netns exec <netns>`` when ``netns`` is given."""
    if netns is None:
        return list(argv)
    return ["ip", "netns", "exec", netns, *argv]


def run(
    cmd: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (inside ``netns`` if given) and capture its text output.

    Raises ``CommandError`` on timeout, and on a non-zero exit when ``check`` is true.
    """
    argv = netns_argv(netns, cmd)
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, _text(exc.stderr), _text(exc.stdout)) from exc
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stderr, result.stdout)
    return result


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = _POLL_INTERVAL
) -> bool:
    """Poll ``predicate`` until it is true (returns ``True``) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for_path(path: Path, timeout: float) -> bool:
    """Wait until ``path`` exists (a unix socket, a pidfile...)."""
    return wait_until(path.exists, timeout)


def read_pid(pidfile: Path) -> int | None:
    """The PID in ``pidfile``, or ``None`` if it is missing or unreadable."""
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> list[str]:
    """The arguments of a live process; empty if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def pidfile_arg(pidfile: Path) -> str:
    """The ``--pidfile=`` argument that marks a daemon as started by us."""
    return f"--pidfile={pidfile}"


def owns(pid: int, marker: str) -> bool:
    """True while process ``pid`` is alive and ``marker`` is one of its arguments."""
    return marker in cmdline(pid)


def daemon_pid(pidfile: Path) -> int | None:
    """The PID of the live daemon started with ``pidfile``, else ``None``."""
    pid = read_pid(pidfile)
    if pid is None or not owns(pid, pidfile_arg(pidfile)):
        return None
    return pid


def is_alive(pidfile: Path) -> bool:
    return daemon_pid(pidfile) is not None


def start_daemon(
    argv: Sequence[str],
    pidfile: Path,
    log_file: Path,
    *,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Start an OVS-style daemon detached, with our pidfile and log file; return its PID.

    ``argv`` must not carry ``--pidfile``, ``--detach`` or ``--log-file``; they are added here.
    OVS daemons return from ``--detach`` only once they are ready (sockets bound).
    """
    if is_alive(pidfile):
        raise StartupError(f"{argv[0]} is already running (pidfile {pidfile})")
    pidfile.unlink(missing_ok=True)
    full = [*argv, pidfile_arg(pidfile), "--detach", "--no-chdir", f"--log-file={log_file}"]
    out_file = log_file.with_suffix(".out")
    with out_file.open("w") as out:
        try:
            code = subprocess.call(
                netns_argv(netns, full),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            code = None
    pid = daemon_pid(pidfile) if code == 0 else None
    if pid is None and code == 0 and wait_until(lambda: is_alive(pidfile), timeout=2.0):
        pid = daemon_pid(pidfile)
    if pid is None:
        status = "timed out" if code is None else f"exited with {code}"
        raise StartupError(
            f"`{shlex.join(full)}` {status}\n{log_tail(out_file)}\n{log_tail(log_file)}"
        )
    return pid


def stop_pid(pid: int, marker: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM ``pid`` (SIGKILL after ``timeout``) if it still carries ``marker``.

    Returns ``True`` if a process was signalled.
    """
    if not owns(pid, marker):
        return False
    if not _signal(pid, signal.SIGTERM):
        return True
    if wait_until(lambda: not owns(pid, marker), timeout):
        return True
    if owns(pid, marker):
        _signal(pid, signal.SIGKILL)
        wait_until(lambda: not owns(pid, marker), timeout)
    return True


def _signal(pid: int, signum: signal.Signals) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def stop_pidfile(pidfile: Path, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the daemon started with ``pidfile`` (if still ours) and remove the pidfile."""
    pid = read_pid(pidfile)
    stopped = pid is not None and stop_pid(pid, pidfile_arg(pidfile), timeout)
    pidfile.unlink(missing_ok=True)
    return stopped


def kill_pids(pids: Sequence[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM then SIGKILL processes we identified by other means (e.g. ``ip netns pids``)."""
    alive = [pid for pid in pids if _signal(pid, signal.SIGTERM)]
    if not wait_until(lambda: not any(cmdline(pid) for pid in alive), timeout):
        for pid in alive:
            _signal(pid, signal.SIGKILL)


def stop_child(
    proc: subprocess.Popen[Any] | None, *, kill: bool = False, timeout: float = 10.0
) -> None:
    """Stop a child process we started: SIGTERM (SIGKILL with ``kill``), wait, and SIGKILL
    it if it is still there after ``timeout`` seconds. Nothing to do if it already exited."""
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_requested() -> Callable[[], bool]:
    """Install SIGTERM/SIGINT/SIGHUP handlers for a foreground supervisor loop.

    Returns a function telling whether one of them arrived; the loop then stops what it
    started itself. What it starts runs in sessions of its own (daemons that detach, services
    with ``commands.OWN_SESSION``): none gets a Ctrl-C or a terminal's hangup itself, and all
    would outlive the supervisor's default death by one of these signals.
    """
    requested = False

    def _handler(_signum: int, _frame: object) -> None:
        nonlocal requested
        requested = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _handler)
    return lambda: requested


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, headed by its path, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: (missing)"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- {path} (last {lines} lines):\n{tail}"
