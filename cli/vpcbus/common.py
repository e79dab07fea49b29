"""What every command module of the CLI shares: exit codes, the CLI's error, where NATS and
OVN are, ``ORG/PROJECT`` parsing and connecting.

Used by :mod:`vpcbus.__main__` and the command modules it registers (:mod:`vpcbus.addressing`,
:mod:`vpcbus.vms`, :mod:`vpcbus.watching`).
They live here, not in ``__main__``, because ``python -m vpcbus`` runs ``__main__`` as a
second module: a command module importing it would get a different :class:`CliError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from vpcbus import auth, stack
from vpcbus.client import Client
from vpcbus_proto import names
from vpcbus_runtime import natsauth

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
#: Ctrl-C (SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: How long ``watch`` and ``dashboard`` wait for a lost NATS to come back before they exit
#: with EXIT_UNREACHABLE (a server restart takes a few seconds).
RECONNECT_GRACE = float(os.environ.get("VPCBUS_CLI_RECONNECT_SECONDS", "30"))


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def endpoints(home: Path) -> dict[str, str]:
    """NATS_URL / OVN_NB_DB / OVN_SB_DB: environment first, then a running embedded stack."""
    state = stack.load_state(home)
    return {
        "nats": os.environ.get("NATS_URL")
        or (state.nats_url if state else "nats://127.0.0.1:4222"),
        "nb": os.environ.get("OVN_NB_DB")
        or (state.ovn_nb_db if state else "unix:/var/run/ovn/ovnnb_db.sock"),
        "sb": os.environ.get("OVN_SB_DB")
        or (state.ovn_sb_db if state else "unix:/var/run/ovn/ovnsb_db.sock"),
    }


def parse_ref(text: str) -> tuple[str, str]:
    org, sep, name = text.partition("/")
    if not sep or not names.is_label(org) or not names.is_label(name):
        raise CliError(f"{text!r} is not ORG/PROJECT (lower-case DNS labels)", EXIT_USAGE)
    return org, name


def invalid(what: str, exc: ValidationError) -> CliError:
    """A model the user's arguments did not satisfy, said in one line."""
    problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return CliError(f"invalid {what}: {problems}")


async def connect(home: Path, url: str | None = None, *, forever: bool = False) -> Client:
    """A client of ``url``, by default the NATS that :func:`endpoints` names, logged in as
    :func:`vpcbus.auth.client_login` says (the environment's user, else the stack's ``cli``);
    ``forever``: it reconnects without limit (long-running commands)."""
    url = url or endpoints(home)["nats"]
    state = stack.load_state(home)
    login = auth.client_login(home, url, state.nats_url if state else None)
    try:
        client = await Client.connect(url, auth=login, forever=forever)
    except Exception as exc:
        where = natsauth.redacted(url)
        raise CliError(f"cannot connect to NATS at {where}: {exc}", EXIT_UNREACHABLE) from exc
    await client.ensure_streams()
    return client
