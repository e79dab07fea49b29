"""Authentication and least privilege on the bus, enforced by a real nats-server.

The server runs with the config that compose's ``nats-auth`` container writes (its command,
``vpcbus nats-config``, run here as compose runs it), with the argv shape compose gives nats
(``-c``). Refusals are checked the way NATS reports them: the server drops a refused publish
and tells the client asynchronously (the error callback gets ``permissions violation``), so
each test also publishes an allowed message after the refused one on the same connection and
shows the refused one never arrived (a connection's messages arrive in order). The last test
runs ``vpcbus up`` (nats-server, real OVN, the four services, each as its own user) through a
project's life, and greps its logs and streams for the generated passwords.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
import yaml
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NoKeysError, NotFoundError

from tests.integration import helpers
from vpcbus import auth, stack
from vpcbus.client import Client, NotAllowedError
from vpcbus.embedded import commands
from vpcbus.embedded.natsd import NatsServer, free_port
from vpcbus_proto import permissions, subjects
from vpcbus_runtime import bus, natsauth

pytestmark = [pytest.mark.connected]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def nats_config(directory: Path, *tls: str) -> Path:
    """Run compose's ``nats-auth`` command (plus TLS flags); the config it wrote."""
    argv = [*commands.nats_config_argv(directory=directory, vpcbus=BIN / "vpcbus"), *tls]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return directory / auth.SERVER_DIR / auth.SERVER_CONFIG


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("auth") / "nats-auth"
    nats_config(directory)
    return directory


@pytest.fixture(scope="module")
def server(users: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    found = NatsServer(
        tmp_path_factory.mktemp("nats"), config=users / "server" / "nats-server.conf"
    )
    found.start()
    stack.declare_streams(found.url, auth.login(users, permissions.ADMIN))
    yield found
    found.stop()


class Session:
    """One principal's connection and the errors the server sent it."""

    def __init__(self, nc: Nats, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    def refused(self, subject: str) -> bool:
        return any(subject.lower() in e and "permissions violation" in e for e in self.errors)


@pytest.fixture
async def login(
    server: NatsServer, users: Path
) -> AsyncIterator[Callable[[str], Awaitable[Session]]]:
    opened: list[Nats] = []

    async def connect(principal: str) -> Session:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            server.url, **auth.login(users, principal).options(), error_cb=on_error,
            allow_reconnect=False,
        )  # fmt: skip
        opened.append(nc)
        return Session(nc, errors)

    yield connect
    for nc in opened:
        await nc.close()


async def until(check: Callable[[], bool]) -> None:
    """Wait for what the server reports asynchronously (a refusal, an arrival)."""

    async def checked() -> bool:
        return check()

    assert await helpers.eventually(checked, timeout=10)


async def arrivals(session: Session, subject: str) -> list[Msg]:
    """Messages on ``subject`` seen by ``session``, from now on (the list fills itself)."""
    seen: list[Msg] = []

    async def got(msg: Msg) -> None:
        seen.append(msg)

    await session.nc.subscribe(subject, cb=got)
    await session.nc.flush()
    return seen


async def refused(url: str, **login: str) -> str:
    """Why the server refused a connection as ``login``; fails the test if it accepted."""
    nc = Nats()  # not nats.connect: a refused client must still be closed (its socket)
    try:
        with pytest.raises(nats.errors.Error) as caught:
            await nc.connect(url, allow_reconnect=False, **login)  # type: ignore[arg-type]
        return str(caught.value)
    finally:
        await nc.close()


async def test_a_client_without_the_password_is_refused(server: NatsServer, users: Path) -> None:
    another = natsauth.read_secret(auth.password_file(users, "admin"))
    assert "Authorization Violation" in await refused(server.url)
    assert "Authorization Violation" in await refused(server.url, user="ipam", password="guess")
    assert "Authorization Violation" in await refused(server.url, user="ipam", password=another)


async def test_a_service_cannot_publish_another_services_status(
    login: Callable[[str], Awaitable[Session]],
) -> None:
    admin, nat = await login(permissions.ADMIN), await login("nat")
    seen = await arrivals(admin, "vpcbus.status.>")
    forged = subjects.status_subject("ipam", "acme", "forged")
    own = subjects.status_subject("nat", "acme", "forged")
    await nat.nc.publish(forged, b"{}")
    await nat.nc.publish(own, b"{}")  # allowed, and after the refused one
    await nat.nc.flush()
    await until(lambda: len(seen) >= 1 and nat.refused(forged))
    assert [m.subject for m in seen] == [own]
    js = admin.nc.jetstream()
    held = await js.stream_info(
        subjects.STATUS_STREAM, subjects_filter="vpcbus.status.*.acme.forged"
    )
    assert set(held.state.subjects or {}) == {own}
    await js.purge_stream(subjects.STATUS_STREAM, subject=own)


async def test_a_service_cannot_touch_another_services_bucket_or_replies(
    login: Callable[[str], Awaitable[Session]],
) -> None:
    admin, nat = await login(permissions.ADMIN), await login("nat")
    ipam_kv = await bus.ensure_bucket(admin.nc.jetstream(), subjects.kv_bucket("ipam"))
    nat_kv = await bus.ensure_bucket(nat.nc.jetstream(), subjects.kv_bucket("nat"))  # its own
    await nat.nc.publish(f"$KV.{subjects.kv_bucket('ipam')}.project.acme.x", b"forged")
    await nat_kv.put("project.acme.x", b"own")
    await until(lambda: nat.refused(f"$KV.{subjects.kv_bucket('ipam')}.project.acme.x"))
    with pytest.raises(NoKeysError):  # the forged record never landed
        await ipam_kv.keys()
    assert (await nat_kv.get("project.acme.x")).value == b"own"
    await nat_kv.delete("project.acme.x")
    # Nobody reads another principal's replies (the KV reads of IPAM come back there).
    await nat.nc.subscribe(f"{permissions.inbox_prefix('ipam')}.>")
    await nat.nc.flush()
    await until(lambda: any("permissions violation for subscription" in e for e in nat.errors))


async def test_the_reader_reads_but_publishes_no_event_and_changes_no_stream(
    server: NatsServer, users: Path, login: Callable[[str], Awaitable[Session]]
) -> None:
    reader = await Client.connect(server.url, auth=auth.login(users, "reader"))
    try:
        before = (await reader.js.stream_info(subjects.EVENTS_STREAM)).state.messages
        with pytest.raises(
            NotAllowedError, match=r"refused user reader to publish project\.created"
        ):
            await reader.upsert(helpers.spec("acme", "sneaky"))
        assert (await reader.js.stream_info(subjects.EVENTS_STREAM)).state.messages == before
        assert await reader.all_statuses() == {}  # an ordered consumer: reading works
        assert await reader.statuses("acme", "prod") == {}
        session = await login("reader")
        js = session.nc.jetstream(timeout=1.0)
        drift = api.StreamConfig(name=subjects.EVENTS_STREAM, subjects=subjects.EVENT_SUBJECTS,
                                 max_age=60.0)  # fmt: skip
        with pytest.raises(nats.errors.TimeoutError):  # refused: the server does not answer
            await js.update_stream(drift)
        assert session.refused(f"$JS.API.STREAM.UPDATE.{subjects.EVENTS_STREAM}")
    finally:
        await reader.close()


async def test_only_admin_updates_a_stream_that_differs(
    login: Callable[[str], Awaitable[Session]],
) -> None:
    admin, ipam = await login(permissions.ADMIN), await login("ipam")
    declared = bus.stream_configs()[0]
    drifted = api.StreamConfig.from_response(declared.as_dict())
    drifted.max_age = 3600.0
    await admin.nc.jetstream().update_stream(drifted)
    await bus.ensure_streams(ipam.nc.jetstream(timeout=1.0))  # runs on; it may not update
    info = await admin.nc.jetstream().stream_info(subjects.EVENTS_STREAM)
    assert info.config.max_age == 3600.0
    assert ipam.refused(f"$JS.API.STREAM.UPDATE.{subjects.EVENTS_STREAM}")
    await bus.ensure_streams(admin.nc.jetstream())
    info = await admin.nc.jetstream().stream_info(subjects.EVENTS_STREAM)
    assert info.config.max_age == bus.EVENTS_MAX_AGE


# -- TLS -----------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    found = {n: directory / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key", "csr")}
    san = directory / "san.cnf"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=vpcbus-ca",
         "-keyout", found["ca-key"], "-out", found["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", found["key"], "-out", found["csr"]],
        ["x509", "-req", "-in", found["csr"], "-CA", found["ca"], "-CAkey", found["ca-key"],
         "-CAcreateserial", "-days", "1", "-extfile", san, "-out", found["cert"]],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, argv)], capture_output=True, check=True, timeout=60)
    return found


async def test_tls_is_configuration(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    directory = tmp_path / "nats-auth"
    config = nats_config(
        directory, "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])
    )
    server = NatsServer(tmp_path / "nats", config=config)
    server.start()
    try:
        password = natsauth.read_secret(auth.password_file(directory, "cli"))
        env = {"NATS_USER": "cli", "NATS_PASSWORD": password, "NATS_CA": str(certs["ca"])}
        client = await Client.connect(server.url, auth=natsauth.from_env(env))
        try:
            await client.ensure_streams()  # JetStream over TLS, as cli
            assert client.nc.connected_url is not None
            assert await client.statuses("acme", "prod") == {}
        finally:
            await client.close()
        # No plain-text client: the server's greeting demands TLS before anything else.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        info = json.loads((await reader.readline()).decode().removeprefix("INFO "))
        writer.close()
        await writer.wait_closed()
        assert info["tls_required"] is True and info["auth_required"] is True
    finally:
        server.stop()


# -- the whole stack -------------------------------------------------------------------------


def _healthcheck(name: str) -> list[str]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    test: list[str] = compose["services"][name]["healthcheck"]["test"]
    return [sys.executable, *(arg.replace("$$", "$") for arg in test[2:])]


async def test_the_stack_runs_with_each_service_as_its_own_user(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = helpers.stack_env("na", VPCBUS_HOME=str(home))
    up = await helpers.vpcbus(env, "up", "--no-chassis", "--nats-port", str(free_port()))
    assert up.returncode == 0, up.stdout + up.stderr
    users = home / auth.AUTH_DIR
    secrets = [natsauth.read_secret(auth.password_file(users, p)) for p in permissions.PRINCIPALS]
    try:
        state = stack.load_state(home)
        assert state is not None
        assert "Authorization Violation" in await refused(state.nats_url)
        # Each service leads a session, so a scheduling group, of its own (commands.OWN_SESSION).
        pids = set(state.services.values())
        assert len(pids) == 4 and all(os.getsid(pid) == pid for pid in pids), state.services

        made = await helpers.vpcbus(env, "project", "create", "acme/prod", "--cidr",
                                    "10.0.0.0/24", "--wait", "--timeout", "60")  # fmt: skip
        assert made.returncode == 0, made.stderr + tails(home)
        assert "project acme/prod is Ready" in made.stdout

        reader = {**env, "NATS_USER": "reader",
                  "NATS_PASSWORD_FILE": str(auth.password_file(users, "reader"))}  # fmt: skip
        denied = await helpers.vpcbus(reader, "project", "create", "acme/evil", "--cidr",
                                       "10.1.0.0/24")  # fmt: skip
        assert denied.returncode == 1, denied.stderr
        assert "refused user reader to publish project.created" in denied.stderr
        shown = await helpers.vpcbus(reader, "project", "get", "acme/prod")
        assert shown.returncode == 0 and "ready: true" in shown.stdout, shown.stderr

        ipam = {**env, "NATS_URL": state.nats_url, "NATS_USER": "ipam",
                "NATS_PASSWORD_FILE": str(auth.password_file(users, "ipam"))}  # fmt: skip
        probe = await asyncio.to_thread(
            subprocess.run, _healthcheck("ipam"), env=ipam, capture_output=True, timeout=30
        )
        assert probe.returncode == 0, probe.stderr  # compose's healthcheck, as compose runs it

        stored = await stream_text(state.nats_url, auth.login(users, permissions.ADMIN))
        assert "acme" in stored  # the statuses are there...
        assert not [s for s in secrets if s in stored]  # ...and no password in them

        gone = await helpers.vpcbus(env, "project", "delete", "acme/prod", "--wait")
        assert gone.returncode == 0, gone.stderr + tails(home)

        async def purged() -> bool:  # the services purge their statuses (tombstone 1 s)
            listed = await helpers.vpcbus(env, "project", "list")
            return "acme/prod" not in listed.stdout

        assert await helpers.eventually(purged, timeout=30), tails(home)
    finally:
        down = await helpers.vpcbus(env, "down")
        assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if helpers.alive(pid)]  # down stopped them
    logs = {p.name: p.read_text(errors="replace") for p in home.glob("*/*.log")}
    assert set(logs) >= {"stack.log", "ipam.log", "vpc.log", "nats-server.log"}
    assert not [s for s in secrets if any(s in text for text in logs.values())]
    # Every service had every permission it needed: the server refused only the reader.
    refusals = [line for line in logs.pop("nats-server.log").splitlines() if "Violation" in line]
    assert refusals and all('"$G/user:reader"' in line for line in refusals), refusals
    assert not [name for name, text in logs.items() if "violation" in text.lower()], tails(home)


async def stream_text(url: str, login: natsauth.NatsAuth) -> str:
    """Every message of the status and error streams, as text."""
    nc = await nats.connect(url, **login.options())
    try:
        js = nc.jetstream()
        out = []
        for stream in (subjects.STATUS_STREAM, subjects.ERRORS_STREAM):
            info = await js.stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                if not info.state.messages:
                    break
                try:
                    msg = await js.get_msg(stream, seq)
                except NotFoundError:  # replaced by a newer status of its subject
                    continue
                out.append(f"{msg.subject} {(msg.data or b'').decode(errors='replace')}")
        return "\n".join(out)
    finally:
        await nc.close()


def tails(home: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
        for p in sorted(home.glob("logs/*.log"))
    )
