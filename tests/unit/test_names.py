"""Labels, namespaces, project keys and the subject catalogue."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpcbus_proto import names, subjects

LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
labels = st.builds(
    lambda first, middle, last: first + middle + last if middle or last else first,
    st.sampled_from(LABEL_CHARS),
    st.text(alphabet=LABEL_CHARS + "-", max_size=20),
    st.sampled_from(LABEL_CHARS) | st.just(""),
).filter(lambda s: not s.endswith("-"))


def reference_is_label(value: str) -> bool:
    """RFC 1123 label, stated directly: 1-63 of [a-z0-9-], alphanumeric at both ends."""
    return (
        1 <= len(value) <= 63
        and all(c in LABEL_CHARS + "-" for c in value)
        and value[0] != "-"
        and value[-1] != "-"
    )


@pytest.mark.parametrize("value", ["a", "0", "acme", "a-b", "a--b", "x" * 63, "1-2-3", "shop-prod"])
def test_is_label_accepts_dns_1123_labels(value: str) -> None:
    assert names.is_label(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-a",
        "a-",
        "A",
        "aB",
        "a_b",
        "a.b",
        "a b",
        "x" * 64,
        "é",
        "abc\n",  # Python's `$` matches before a trailing newline: must still be rejected
        "\nabc",
        "abc\r\n",
    ],
)
def test_is_label_rejects_everything_else(value: str) -> None:
    assert not names.is_label(value)


@settings(deadline=None, max_examples=100)
@given(st.text(max_size=70) | labels)
def test_is_label_agrees_with_the_rfc_definition(value: str) -> None:
    assert names.is_label(value) == reference_is_label(value)


@settings(deadline=None, max_examples=100)
@given(st.text(max_size=70) | labels)
def test_is_label_agrees_with_the_pattern_pydantic_and_json_schema_use(value: str) -> None:
    # The pattern is applied by pydantic (Rust regex) and by JSON Schema validators
    # (ECMA regex); in both, `$` is the end of the input, i.e. a full match.
    assert names.is_label(value) == (re.fullmatch(names.LABEL_PATTERN, value) is not None)


@settings(deadline=None, max_examples=100)
@given(labels, labels)
def test_project_key_round_trips_and_namespace_joins_with_dash(org: str, project: str) -> None:
    key = names.project_key(org, project)
    assert names.split_key(key) == (org, project)
    assert key == f"{org}.{project}"
    assert names.namespace(org, project) == f"{org}-{project}"


@pytest.mark.parametrize(
    "key", ["", "acme", "acme.", ".shop", "acme.shop.x", "Acme.shop", "acme.sh_op", "acme.shop\n"]
)
def test_split_key_rejects_non_keys(key: str) -> None:
    with pytest.raises(ValueError, match="not a project key"):
        names.split_key(key)


def test_namespace_can_collide_while_keys_do_not() -> None:
    # Why IPAM claims namespaces: two different projects, one backing namespace.
    assert names.namespace("a-b", "c") == names.namespace("a", "b-c")
    assert names.project_key("a-b", "c") != names.project_key("a", "b-c")


def test_subjects() -> None:
    assert subjects.PROJECT_EVENTS == ("project.created", "project.updated", "project.deleted")
    assert subjects.event_type("project.created") == "io.vpcbus.project.created"
    assert subjects.status_subject("vpc", "acme", "shop") == "vpcbus.status.vpc.acme.shop"
    assert subjects.status_filter() == "vpcbus.status.*.*.*"
    assert subjects.status_filter("ipam") == "vpcbus.status.ipam.*.*"
    assert subjects.error_subject("nat", "acme", "shop") == "vpcbus.error.nat.acme.shop"
    assert subjects.error_subject("nat", None, None) == "vpcbus.error.nat._._"
    assert subjects.dlq_subject("dns", None, "shop") == "vpcbus.dlq.dns._.shop"
    assert subjects.kv_bucket("ipam") == "vpcbus-ipam"
    assert set(subjects.SERVICES) == {"ipam", "vpc", "nat", "dns"}


def _matches(filter_: str, subject: str) -> bool:
    """NATS subject matching with `*` and `>` (for checking the catalogue's filters)."""
    f, s = filter_.split("."), subject.split(".")
    for i, token in enumerate(f):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(f) == len(s)


@settings(deadline=None, max_examples=100)
@given(st.sampled_from(subjects.SERVICES), labels, labels)
def test_every_published_subject_is_captured_by_its_stream(
    service: str, org: str, project: str
) -> None:
    status = subjects.status_subject(service, org, project)
    assert any(_matches(f, status) for f in subjects.STATUS_SUBJECTS)
    for make in (subjects.error_subject, subjects.dlq_subject):
        assert any(_matches(f, make(service, org, project)) for f in subjects.ERROR_SUBJECTS)
        assert any(_matches(f, make(service, None, None)) for f in subjects.ERROR_SUBJECTS)
    for subject in subjects.PROJECT_EVENTS:
        assert any(_matches(f, subject) for f in subjects.EVENT_SUBJECTS)
    # Each status subject names exactly one service, org and project (5 tokens).
    assert status.split(".")[2:] == [service, org, project]
    assert _matches(subjects.status_filter(service), status)
    assert not _matches(subjects.status_filter("other"), status)
