"""The permissions of each principal (vpcbus_proto.permissions), their nats-server rendering and
the users' directory (vpcbus.auth), the login from the environment (vpcbus_runtime.natsauth),
and the stream comparison that decides whether a declaration needs ``admin``.

What the server enforces is tested in tests/integration/test_nats_auth.py; here the sets
themselves: each service publishes only its own subjects, nobody but admin changes a stream.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from nats.js import api

from vpcbus import auth
from vpcbus_bridge import state as bridge_state
from vpcbus_dns.reconciler import DnsReconciler
from vpcbus_ipam.reconciler import IpamReconciler
from vpcbus_nat.reconciler import NatReconciler
from vpcbus_proto import channels, permissions, subjects
from vpcbus_proto.channels import matches
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime import bus, natsauth
from vpcbus_vpc.reconciler import VpcReconciler

RECONCILERS: dict[str, Any] = {"ipam": IpamReconciler, "vpc": VpcReconciler, "nat": NatReconciler,
               "dns": DnsReconciler}  # fmt: skip
NOT_ADMIN = [p for p in permissions.PRINCIPALS if p != permissions.ADMIN]


def may_publish(principal: str, subject: str) -> bool:
    perms = permissions.permissions(principal)
    return perms is None or any(matches(p, subject) for p in perms.publish)


def may_subscribe(principal: str, subject: str) -> bool:
    perms = permissions.permissions(principal)
    return perms is None or any(matches(p, subject) for p in perms.subscribe)


@pytest.mark.parametrize("service", subjects.SERVICES)
def test_a_service_publishes_its_own_status_error_and_dead_letters_only(service: str) -> None:
    for other in subjects.SERVICES:
        own = other == service
        assert may_publish(service, subjects.status_subject(other, "acme", "prod")) is own
        assert may_publish(service, subjects.error_subject(other, None, None)) is own
        assert may_publish(service, subjects.dlq_subject(other, "acme", "prod")) is own
    usage = subjects.pool_usage_subject("cloud")
    assert may_publish(service, usage) is (service == channels.POOL_USAGE_PUBLISHER)
    for event in channels.EVENT_MODELS:
        assert not may_publish(service, event)


@pytest.mark.parametrize("service", subjects.SERVICES)
def test_a_service_reads_writes_and_consumes_only_what_is_its_own(service: str) -> None:
    for other in subjects.SERVICES:
        own = other == service
        consumers = {
            subjects.EVENTS_STREAM: permissions.events_consumer(other),
            subjects.STATUS_STREAM: permissions.peers_consumer(other),
        }
        for stream in consumers:
            for of, durable in consumers.items():
                next_ = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
                assert may_publish(service, next_) is (own and of == stream)
                assert may_publish(service, f"$JS.ACK.{stream}.{durable}.1.2.3.4.5") is (
                    own and of == stream
                )
        bucket = subjects.kv_bucket(other)
        assert may_publish(service, f"$KV.{bucket}.project.acme.prod") is own
        assert may_publish(service, f"$JS.API.STREAM.MSG.GET.KV_{bucket}") is own
        assert may_subscribe(service, f"_INBOX.{other}.abc") is own
        assert may_subscribe(service, f"vpcbus.svc.{other}.status") is own
    addresses = f"$KV.{subjects.IPAM_ADDRESSES_BUCKET}.cloud.100_65_0_2"
    assert may_publish(service, addresses) is (service == "ipam")
    assert not may_subscribe(service, "_INBOX.>")


@pytest.mark.parametrize("service", subjects.SERVICES)
def test_a_service_reads_the_statuses_its_reconciler_reads(service: ServiceName) -> None:
    reconciler = RECONCILERS[service]
    assert tuple(reconciler.watches) == channels.WATCHES[service]
    readable = {
        peer
        for peer in subjects.SERVICES
        if may_publish(
            service,
            f"$JS.API.DIRECT.GET.{subjects.STATUS_STREAM}."
            + subjects.status_subject(peer, "acme", "prod"),
        )
    }
    # Its own (the status endpoint), those it watches, those it waits for before purging.
    wanted = {service, *reconciler.watches, *reconciler.purge_after}
    assert readable == wanted


@pytest.mark.parametrize("principal", NOT_ADMIN)
def test_nobody_but_admin_changes_or_deletes_a_stream_or_a_consumer(principal: str) -> None:
    streams = [
        *permissions.SHARED_STREAMS,
        *(f"KV_{subjects.kv_bucket(s)}" for s in subjects.SERVICES),
    ]
    for stream in streams:
        for verb in ("STREAM.UPDATE", "STREAM.DELETE", "CONSUMER.DELETE"):
            assert not may_publish(principal, f"$JS.API.{verb}.{stream}.x")
            assert not may_publish(principal, f"$JS.API.{verb}.{stream}")
    assert not may_publish(principal, "$JS.API.STREAM.PURGE.VPCBUS_EVENTS")
    assert may_publish(permissions.ADMIN, "$JS.API.STREAM.UPDATE.VPCBUS_EVENTS")


def test_the_reader_publishes_nothing_but_reads_and_read_only_requests() -> None:
    for event in channels.EVENT_MODELS:
        assert not may_publish("reader", event)
        assert may_subscribe("reader", event)
    assert not may_publish("reader", subjects.status_subject("ipam", "acme", "prod"))
    assert not may_publish("reader", "$JS.API.STREAM.CREATE.VPCBUS_EVENTS")
    assert not may_publish("reader", "vpcbus.svc.ipam.doctor")  # `--fix` repairs
    assert may_publish("reader", "vpcbus.svc.ipam.status")
    assert may_publish("reader", "$SRV.STATS.vpcbus-nat")
    assert may_publish("reader", "$JS.API.DIRECT.GET.VPCBUS_STATUS.vpcbus.status.ipam.a.b")
    assert may_subscribe("reader", "vpcbus.status.*.acme.prod")


def test_the_cli_publishes_every_lifecycle_event_and_no_status() -> None:
    for event in channels.EVENT_MODELS:
        assert may_publish("cli", event)
    for service in subjects.SERVICES:
        assert not may_publish("cli", subjects.status_subject(service, "acme", "prod"))
        assert not may_publish("cli", f"$KV.{subjects.kv_bucket(service)}.project.acme.prod")
        assert may_publish("cli", f"vpcbus.svc.{service}.doctor")
    assert may_publish("cli", "$JS.API.STREAM.CREATE.VPCBUS_EVENTS")


def test_the_bridge_publishes_lifecycle_events_and_writes_only_its_own_bucket() -> None:
    assert permissions.BRIDGE_BUCKET == bridge_state.BUCKET
    for event in channels.EVENT_MODELS:
        assert may_publish("bridge", event)
    assert may_publish("bridge", f"$KV.{bridge_state.BUCKET}.rv.projects")
    assert may_subscribe("bridge", "vpcbus.status.ipam.acme.prod")
    for service in subjects.SERVICES:
        assert not may_publish("bridge", subjects.status_subject(service, "acme", "prod"))
        assert not may_publish("bridge", f"$KV.{subjects.kv_bucket(service)}.project.acme.prod")
        assert not may_publish("bridge", f"vpcbus.svc.{service}.doctor")


def test_permissions_of_an_unknown_principal_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown principal"):
        permissions.permissions("tenant-acme")


# -- rendering and the users' directory -------------------------------------------------------


def test_the_config_has_every_user_and_admin_alone_unrestricted() -> None:
    passwords: dict[str, str] = {p: f"pw-{p}" for p in permissions.PRINCIPALS}
    text = auth.render(passwords)
    for principal in permissions.PRINCIPALS:
        assert f'{{user: "{principal}", password: "pw-{principal}"' in text
    assert text.count("permissions: {") == len(permissions.PRINCIPALS) - 1
    assert '"$JS.API.STREAM.INFO.VPCBUS_EVENTS"' in text  # quoted: `$` is no variable
    assert "tls {" not in text
    with_tls = auth.render(passwords, auth.Tls("/c.pem", "/k.pem", "/ca.pem"))
    assert 'cert_file: "/c.pem"' in with_tls and "verify: true" in with_tls


def test_tls_from_env_needs_the_certificate_and_its_key() -> None:
    assert auth.tls_from_env({}) is None
    found = auth.tls_from_env({"VPCBUS_NATS_TLS_CERT": "/c", "VPCBUS_NATS_TLS_KEY": "/k"})
    assert found == auth.Tls("/c", "/k", None)
    with pytest.raises(ValueError, match="together"):
        auth.tls_from_env({"VPCBUS_NATS_TLS_CERT": "/c"})


def test_the_directory_is_private_and_keeps_its_passwords(tmp_path: Path) -> None:
    directory = tmp_path / "auth"
    config = auth.write(directory)
    first = json.loads((directory / auth.CREDENTIALS).read_text())
    assert set(first) == set(permissions.PRINCIPALS)
    assert len(set(first.values())) == len(first)  # each its own
    files = [config, directory / auth.CREDENTIALS,
             *(auth.password_file(directory, p) for p in permissions.PRINCIPALS)]  # fmt: skip
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
    config.write_text("stale")
    auth.write(directory)
    assert json.loads((directory / auth.CREDENTIALS).read_text()) == first
    assert auth.password_file(directory, "nat").read_text() == first["nat"] + "\n"
    assert config.read_text() == auth.render(first)


def test_the_cli_sends_the_stack_password_only_to_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    auth.write(tmp_path / auth.AUTH_DIR)
    url = "nats://127.0.0.1:4222"
    cli = auth.client_login(tmp_path, url, url)
    assert cli.user == "cli"
    assert cli.password == auth.password_file(tmp_path / auth.AUTH_DIR, "cli").read_text().strip()
    assert auth.client_login(tmp_path, "nats://elsewhere:4222", url).password is None
    assert auth.client_login(tmp_path, url, None).password is None  # no stack running
    monkeypatch.setenv("NATS_USER", "reader")
    monkeypatch.setenv("NATS_PASSWORD", "given")
    assert auth.client_login(tmp_path, url, url).password == "given"


# -- the login from the environment -----------------------------------------------------------


def test_the_login_reads_a_password_file_and_never_shows_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    login = natsauth.from_env({"NATS_USER": "ipam", "NATS_PASSWORD_FILE": str(secret)})
    assert login.password == "s3cret"
    assert "s3cret" not in repr(login)
    options = login.options()
    assert options["inbox_prefix"] == permissions.inbox_prefix("ipam") == "_INBOX.ipam"
    assert "tls" not in options
    assert natsauth.NatsAuth().inbox() == "_INBOX"
    assert natsauth.NatsAuth(user="a.b*c").inbox() == "_INBOX.a_b_c"  # one subject token
    assert login.with_login(None, None) == login
    assert login.with_login("nat", None).password == "s3cret"


def test_urls_are_logged_without_their_password() -> None:
    url = "nats://ipam:s3cret@nats:4222, tls://other:4222"
    assert natsauth.redacted(url) == "nats://***@nats:4222,tls://other:4222"


# -- declaring streams -------------------------------------------------------------------------


def test_a_stream_differs_only_in_the_fields_the_declaration_sets() -> None:
    declared = bus.stream_configs()[1]  # the status stream: max_msgs_per_subject 1
    found = api.StreamConfig.from_response(declared.as_dict())
    found.duplicate_window = 120.0  # the server's default: the declaration leaves it open
    assert bus.differences(declared, found) == []
    found.max_msgs_per_subject = 5
    found.subjects = ["vpcbus.status.>"]
    assert bus.differences(declared, found) == ["subjects", "max_msgs_per_subject"]
