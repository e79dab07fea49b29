"""How a process logs in to NATS: user, password, its own reply inbox and TLS, from the environment.

Read by :func:`vpcbus_runtime.bus.connect` (the services), by the CLI's client and by the
compose healthchecks, so each honours the same variables:

* ``NATS_USER`` and ``NATS_PASSWORD``, or ``NATS_PASSWORD_FILE`` (a file holding the password,
  as compose's per-service credentials and ``vpcbus up`` pass it: no secret in the
  environment);
* ``NATS_CA`` (the CA that signed the server's certificate), ``NATS_CERT`` and ``NATS_KEY``
  (a client certificate, when the server verifies clients).

With a user, replies go to ``_INBOX.<user>`` (``vpcbus_proto.permissions.inbox_prefix``),
the only inbox the server lets that user subscribe to. The password is never part of a repr.
"""

from __future__ import annotations

import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vpcbus_proto.permissions import inbox_prefix

_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class NatsAuth:
    """One client's login; the empty one connects anonymously without TLS settings."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def with_login(self, user: str | None, password: str | None) -> NatsAuth:
        """This login with ``user`` / ``password`` replaced where given."""
        return replace(
            self,
            user=self.user if user is None else user,
            password=self.password if password is None else password,
        )

    def inbox(self) -> str:
        """The reply-subject prefix: the user's own inbox, ``_INBOX`` without a user."""
        if not self.user:
            return "_INBOX"
        return inbox_prefix(_NOT_A_TOKEN.sub("_", self.user))

    def tls(self) -> ssl.SSLContext | None:
        """A client TLS context when a CA or a client certificate is configured."""
        if not (self.ca_file or self.cert_file):
            return None  # nats-py falls back to the system CAs if the server demands TLS
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        found: dict[str, Any] = {
            "user": self.user,
            "password": self.password,
            "inbox_prefix": self.inbox(),
        }
        if (context := self.tls()) is not None:
            found["tls"] = context
        return found


def from_env(environ: Mapping[str, str] | None = None) -> NatsAuth:
    """The login the ``NATS_*`` variables describe (see the module docstring)."""
    env = os.environ if environ is None else environ
    password = env.get("NATS_PASSWORD") or None
    if password is None and env.get("NATS_PASSWORD_FILE"):
        password = read_secret(Path(env["NATS_PASSWORD_FILE"]))
    return NatsAuth(
        user=env.get("NATS_USER") or None,
        password=password,
        ca_file=env.get("NATS_CA") or None,
        cert_file=env.get("NATS_CERT") or None,
        key_file=env.get("NATS_KEY") or None,
    )


def read_secret(path: Path) -> str:
    """A password file's content without the trailing newline."""
    return path.read_text().strip()


def redacted(url: str) -> str:
    """``url`` (comma-separated, as ``NATS_URL``) with any ``user:password@`` hidden, for logs."""
    out = []
    for one in url.split(","):
        parts = urllib.parse.urlsplit(one.strip())
        if parts.username is not None or parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            one = urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))
        out.append(one.strip())
    return ",".join(out)
