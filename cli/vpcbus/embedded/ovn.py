"""The embedded OVN control plane: NB and SB ``ovsdb-server``s plus ``ovn-northd``.

Called by ``vpcbus up`` (the development stack) and by the test fixtures, which start one
``OvnCentral`` per test module. Needs no root and no network namespace: the databases listen
on unix sockets only, under a private run directory, so several instances can run at once.

Layout under ``rundir``::

    db/ovnnb_db.db  db/ovnsb_db.db                  kept across restarts
    run/ovnnb_db.{sock,ctl,pid}  run/ovnsb_db.{sock,ctl,pid}  run/ovn-northd.{ctl,pid}
    log/ovsdb-server-nb.log  log/ovsdb-server-sb.log  log/ovn-northd.log  (+ .out: startup output)

Barriers: ``wait_sb()`` returns once ``ovn-northd`` has translated every NB change into SB;
``wait_hv()`` once every chassis has also installed it (use it after a topology change and
before sending packets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import procs

SCHEMA_DIR = Path("/usr/share/ovn")


@dataclass(frozen=True)
class _Database:
    """One OVN database served by its own ``ovsdb-server``."""

    stem: str  # ovnnb_db / ovnsb_db: names the db file, socket, ctl and pidfile
    schema: str  # file name under SCHEMA_DIR
    log_name: str


_NB = _Database("ovnnb_db", "ovn-nb.ovsschema", "ovsdb-server-nb")
_SB = _Database("ovnsb_db", "ovn-sb.ovsschema", "ovsdb-server-sb")


class OvnCentral:
    """OVN Northbound + Southbound databases and ``ovn-northd`` in a private directory."""

    def __init__(
        self,
        rundir: Path,
        *,
        timeout: float = procs.DEFAULT_TIMEOUT,
        nb_remotes: Sequence[str] = (),
        sb_remotes: Sequence[str] = (),
    ) -> None:
        """``nb_remotes``/``sb_remotes``: extra listeners such as ``ptcp:6641`` (compose)."""
        self.dirs = procs.Dirs.create(rundir)
        self.timeout = timeout
        self._env = self.dirs.env()
        self._remotes = {_NB.stem: tuple(nb_remotes), _SB.stem: tuple(sb_remotes)}

    # -- addresses ---------------------------------------------------------------------------

    @property
    def nb_db(self) -> str:
        """The NB connection string, as ``ovn-nbctl --db=`` takes it."""
        return f"unix:{self._socket(_NB)}"

    @property
    def sb_db(self) -> str:
        """The SB connection string, as ``ovn-sbctl --db=`` and ``ovn-controller`` take it."""
        return f"unix:{self._socket(_SB)}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start whatever is not running yet and return once NB changes reach SB.

        The database files are created only if absent, so a restart keeps their contents.
        Raises ``procs.StartupError`` (with log tails) if the stack does not come up in time.
        """
        for db in (_NB, _SB):
            self._ensure_db_server(db)
        self._ensure_northd()
        self.wait_sb(timeout=self.timeout, startup=True)

    def stop(self) -> None:
        """Stop ``ovn-northd`` and both database servers. Idempotent; keeps the data."""
        procs.stop_pidfile(self._northd_pidfile)
        for db in (_SB, _NB):
            procs.stop_pidfile(self._pidfile(db))

    def is_running(self) -> bool:
        pidfiles = (self._pidfile(_NB), self._pidfile(_SB), self._northd_pidfile)
        return all(procs.is_alive(pidfile) for pidfile in pidfiles)

    def stop_nb(self) -> None:
        """Stop only the NB ``ovsdb-server`` (fault tests: the NB is unreachable until
        ``start_nb()``)."""
        procs.stop_pidfile(self._pidfile(_NB))

    def start_nb(self, *, wait: bool = True) -> None:
        """Start the NB ``ovsdb-server`` again; with ``wait``, return once northd is back."""
        self._ensure_db_server(_NB)
        if wait:
            self.wait_sb(timeout=self.timeout, startup=True)

    def restart_nb(self, *, wait: bool = True) -> None:
        """Stop and start only the NB ``ovsdb-server``; its data survives."""
        self.stop_nb()
        self.start_nb(wait=wait)

    def __enter__(self) -> OvnCentral:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- tools -------------------------------------------------------------------------------

    def nbctl(self, *args: str, timeout: float = procs.DEFAULT_TIMEOUT) -> str:
        """Run ``ovn-nbctl --db=<nb> ARGS`` and return its stdout (trailing newline removed)."""
        return self._tool("ovn-nbctl", self.nb_db, args, timeout)

    def sbctl(self, *args: str, timeout: float = procs.DEFAULT_TIMEOUT) -> str:
        """Run ``ovn-sbctl --db=<sb> ARGS`` and return its stdout (trailing newline removed)."""
        return self._tool("ovn-sbctl", self.sb_db, args, timeout)

    def trace(
        self,
        datapath: str,
        microflow: str,
        *,
        minimal: bool = False,
        summary: bool = False,
        timeout: float = procs.DEFAULT_TIMEOUT,
    ) -> str:
        """Run ``ovn-trace --db=<sb> DATAPATH MICROFLOW`` (default: the detailed output)."""
        flags = [flag for flag, on in (("--minimal", minimal), ("--summary", summary)) if on]
        cmd = ["ovn-trace", f"--db={self.sb_db}", *flags, datapath, microflow]
        return procs.run(cmd, env=self._env, timeout=timeout).stdout.rstrip("\n")

    def wait_sb(self, timeout: float = procs.DEFAULT_TIMEOUT, *, startup: bool = False) -> None:
        """Return once ``ovn-northd`` has put every NB change into SB (``--wait=sb sync``)."""
        self._sync("sb", timeout, startup)

    def wait_hv(self, timeout: float = procs.DEFAULT_TIMEOUT) -> None:
        """Return once every chassis has installed every NB change (``--wait=hv sync``).

        This is the barrier to use after a topology change and before sending packets.
        """
        self._sync("hv", timeout, startup=False)

    def log_tails(self, lines: int = 20) -> str:
        """The tails of the three daemon logs, for error messages and test failures."""
        names = (_NB.log_name, _SB.log_name, "ovn-northd")
        return "\n".join(procs.log_tail(self.dirs.log / f"{name}.log", lines) for name in names)

    # -- internals ---------------------------------------------------------------------------

    def _socket(self, db: _Database) -> Path:
        return self.dirs.run / f"{db.stem}.sock"

    def _pidfile(self, db: _Database) -> Path:
        return self.dirs.run / f"{db.stem}.pid"

    @property
    def _northd_pidfile(self) -> Path:
        return self.dirs.run / "ovn-northd.pid"

    def _ensure_db_server(self, db: _Database) -> None:
        if procs.is_alive(self._pidfile(db)):
            return
        db_file = self.dirs.db / f"{db.stem}.db"
        if not db_file.exists():
            procs.run(["ovsdb-tool", "create", str(db_file), str(SCHEMA_DIR / db.schema)])
        argv = [
            "ovsdb-server",
            str(db_file),
            f"--remote=punix:{self._socket(db)}",
            f"--unixctl={self.dirs.run / f'{db.stem}.ctl'}",
            *(f"--remote={remote}" for remote in self._remotes[db.stem]),
        ]
        log_file = self.dirs.log / f"{db.log_name}.log"
        procs.start_daemon(argv, self._pidfile(db), log_file, env=self._env, timeout=self.timeout)

    def _ensure_northd(self) -> None:
        if procs.is_alive(self._northd_pidfile):
            return
        argv = [
            "ovn-northd",
            f"--ovnnb-db={self.nb_db}",
            f"--ovnsb-db={self.sb_db}",
            f"--unixctl={self.dirs.run / 'ovn-northd.ctl'}",
        ]
        log_file = self.dirs.log / "ovn-northd.log"
        procs.start_daemon(argv, self._northd_pidfile, log_file, env=self._env)

    def _sync(self, target: str, timeout: float, startup: bool) -> None:
        try:
            self.nbctl(f"--wait={target}", "sync", timeout=timeout)
        except procs.CommandError as exc:
            if not startup:
                raise
            raise procs.StartupError(
                f"OVN central in {self.dirs.root} did not sync NB to SB within {timeout:g} s: "
                f"{exc}\n{self.log_tails()}"
            ) from exc

    def _tool(self, tool: str, db: str, args: tuple[str, ...], timeout: float) -> str:
        # ovn-*ctl's own --timeout (whole seconds) makes it exit cleanly before ours kills it.
        cmd = [tool, f"--db={db}", f"--timeout={max(1, math.ceil(timeout))}", *args]
        return procs.run(cmd, env=self._env, timeout=timeout + 5).stdout.rstrip("\n")
