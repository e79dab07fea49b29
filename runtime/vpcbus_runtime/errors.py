"""Retry intent as types; the edge (:mod:`.controller`) acts on them in one place.

* :class:`PermanentError` - retrying cannot help (invalid spec, conflicting request); the
  project reports ``Error`` until a new event or the periodic resync changes something.
* :class:`TemporaryError` - retry after ``delay`` seconds (backend unreachable, CAS race).
* any other exception - treated as temporary with exponential backoff, and logged.
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Base of the two intents; ``reason`` is a CamelCase word for status and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PermanentError(ReconcileError):
    """A failure that retrying cannot fix."""


class TemporaryError(ReconcileError):
    """A failure that may heal; retry after ``delay`` seconds."""

    def __init__(self, reason: str, message: str, *, delay: float = 1.0) -> None:
        super().__init__(reason, message)
        self.delay = delay


class PeerRowsMissingError(TemporaryError):
    """NB rows that a peer reported built (VPC ``Ready``: the project's router and switch)
    are not in this service's NB replica. The peer committed them before it said so, so the
    replica may only lag behind: :meth:`vpcbus_runtime.ovn.NbSession.transact` brings it up
    to date and runs the function once more before this reaches the edge."""
