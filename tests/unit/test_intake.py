"""intake.decode: bytes on a subject -> Accepted, or Rejected with a documented reason.

The fuzz tests throw arbitrary bytes, arbitrary JSON and almost-valid events at ``decode``
and check it never raises and that every answer is well formed: a rejection names a
documented reason and, when it names a project, a project that could be a subject token.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpcbus_proto import subjects
from vpcbus_proto.events import MAX_EVENT_BYTES, ProjectDeleted, ProjectUpserted, new_event
from vpcbus_proto.members import (
    EipRef,
    EipSpec,
    FipRef,
    FipSpec,
    LbServiceRef,
    LbServiceSpec,
    ServicePort,
    VmTarget,
    WorkloadRef,
    WorkloadSpec,
)
from vpcbus_proto.projects import ProjectRef, ProjectSpec
from vpcbus_runtime.intake import Accepted, AcceptedMember, Rejected, decode

REASONS = {"InvalidEvent", "InvalidSpec", "TypeMismatch", "EventTooLarge", "UnknownSubject"}
SPEC = ProjectSpec(
    organization="acme", name="shop", cidr_block="10.0.0.0/24", egress_network_type="cloud"
)


def is_token(value: str) -> bool:
    """A DNS-1123 label, checked independently of ``names.is_label`` (it is under test too)."""
    return re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value) is not None


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


def check_well_formed(
    subject: str, data: bytes, result: Accepted | AcceptedMember | Rejected
) -> None:
    """The invariants every answer of decode() has, whatever the input."""
    if isinstance(result, Rejected):
        assert result.reason in REASONS
        assert isinstance(result.message, str) and result.message
        result.message.encode()  # it goes into an error record: must be valid UTF-8
        # A rejection names a project only when both parts are labels (subject tokens).
        assert (result.organization is None) == (result.name is None)
        if result.organization is not None and result.name is not None:
            assert is_token(result.organization) and is_token(result.name)
            subject_out = subjects.error_subject("ipam", result.organization, result.name)
            assert len(subject_out.split(".")) == 5
        if result.event_id is not None:
            result.event_id.encode()
        if result.reason == "InvalidSpec":
            assert result.organization is not None
        if len(data) > MAX_EVENT_BYTES:
            assert result.reason == "EventTooLarge"
        elif subject not in subjects.PROJECT_EVENTS + subjects.MEMBER_EVENTS:
            assert result.reason == "UnknownSubject"
        return
    if isinstance(result, AcceptedMember):
        assert subject in subjects.MEMBER_EVENTS
        return
    assert isinstance(result, Accepted)
    assert subject in subjects.PROJECT_EVENTS
    assert is_token(result.organization) and is_token(result.name)
    assert result.event_id
    assert (result.spec is None) == (subject == subjects.PROJECT_DELETED)
    # Agrees with validating the same body with the contract models directly.
    raw = json.loads(data)
    model = ProjectDeleted if subject == subjects.PROJECT_DELETED else ProjectUpserted
    event = model.model_validate(raw)
    assert event.type == subjects.event_type(subject)
    assert (result.organization, result.name) == (event.data.organization, event.data.name)
    assert result.generation == event.generation
    if result.spec is not None:
        assert result.spec == event.data


any_subject = st.sampled_from(subjects.PROJECT_EVENTS) | st.sampled_from(
    ["project.renamed", "project", "", "vpcbus.status.ipam.a.b", "project.created.x"]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

label_like = st.sampled_from(["acme", "shop", "a", "x" * 63, "Acme", "", "a_b", "abc\n", "-a"])
cidr_like = st.sampled_from(
    ["10.0.0.0/24", "10.0.0.0/29", "10.0.0.1/24", "10.0.0.0/30", "127.0.0.0/8", "x", ""]
)


@st.composite
def almost_events(draw: st.DrawFn) -> dict[str, Any]:
    """Events whose every field is usually right and otherwise wrong, missing or mistyped."""

    def pick(right: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> Any:
        return draw(wrong) if draw(st.integers(0, 7)) == 0 else draw(right)

    subject = draw(st.sampled_from(subjects.PROJECT_EVENTS))
    data: dict[str, Any] = {
        "organization": pick(st.sampled_from(["acme", "a", "x" * 63]), label_like | json_values),
        "name": pick(st.sampled_from(["shop", "p-1"]), label_like | json_values),
    }
    if subject != subjects.PROJECT_DELETED or draw(st.integers(0, 4)) == 0:
        data["cidrBlock"] = pick(st.just("10.0.0.0/24"), cidr_like | json_values)
        data["egressNetworkType"] = pick(
            st.sampled_from(["cloud", "public"]), st.just("other") | json_values
        )
        if draw(st.booleans()):
            data["gwLanIp"] = pick(
                st.just("10.0.0.254"), st.sampled_from(["10.0.0.0", "10.1.0.1", "x"])
            )
    if draw(st.integers(0, 4)) == 0:
        data[draw(st.text(max_size=8))] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:
        del data[draw(st.sampled_from(sorted(data)))]
    body: dict[str, Any] = {
        "specversion": pick(st.just("1.0"), st.just("0.3") | json_values),
        "id": pick(st.just("e-1"), st.sampled_from(["", "\ud800"]) | json_values),
        "source": pick(st.just("/test"), st.just("") | json_values),
        "type": pick(
            st.just(subjects.event_type(subject)),
            st.sampled_from([subjects.event_type(s) for s in subjects.PROJECT_EVENTS])
            | json_values,
        ),
        "generation": pick(st.integers(1, 2**53) | st.none(), st.integers() | json_values),
        "data": pick(st.just(data), json_values),
    }
    if draw(st.integers(0, 4)) == 0:
        del body[draw(st.sampled_from(sorted(body)))]
    return {"subject": subject, "body": body}


@settings(deadline=None, max_examples=200)
@given(any_subject | st.text(max_size=30), st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(subject: str, data: bytes) -> None:
    check_well_formed(subject, data, decode(subject, data))


@settings(deadline=None, max_examples=150)
@given(any_subject, json_values)
def test_arbitrary_json_never_raises(subject: str, value: object) -> None:
    data = encode(value)
    result = decode(subject, data)
    check_well_formed(subject, data, result)
    assert isinstance(result, Rejected)  # nothing generated here is a valid event


@settings(deadline=None, max_examples=200)
@given(almost_events())
def test_almost_valid_events_never_raise(case: dict[str, Any]) -> None:
    data = encode(case["body"])
    check_well_formed(case["subject"], data, decode(case["subject"], data))


@settings(deadline=None, max_examples=100)
@given(
    st.sampled_from(subjects.PROJECT_EVENTS),
    st.sampled_from(["acme", "a", "org-1"]),
    st.sampled_from(["shop", "p9", "x" * 40]),
    st.integers(1, 2**53) | st.none(),
)
def test_valid_events_are_accepted(
    subject: str, org: str, name: str, generation: int | None
) -> None:
    spec = SPEC.model_copy(update={"organization": org, "name": name})
    data_model = spec.ref if subject == subjects.PROJECT_DELETED else spec
    body = new_event(subject, data_model, generation=generation, event_id="e-42")
    data = encode(body)
    result = decode(subject, data)
    check_well_formed(subject, data, result)
    assert result == Accepted(
        org, name, "e-42", generation, None if subject == subjects.PROJECT_DELETED else spec
    )


identities = st.text(max_size=12) | st.builds(
    lambda label, tail: label + tail,
    st.sampled_from(["acme", "shop", "a-1"]),
    st.sampled_from(["", "\n", "\r\n", " ", "-", "_", "A", ".x", "\x00"]) | st.text(max_size=2),
)


@settings(deadline=None, max_examples=200)
@given(st.sampled_from(subjects.PROJECT_EVENTS), identities, identities, st.booleans())
def test_any_identity_is_either_a_label_pair_or_not_echoed(
    subject: str, org: str, name: str, bad_cidr: bool
) -> None:
    data: dict[str, Any] = {"organization": org, "name": name}
    if subject != subjects.PROJECT_DELETED:
        data |= {"cidrBlock": "10.0.0.1/24" if bad_cidr else "10.0.0.0/24"}
        data |= {"egressNetworkType": "cloud"}
    body = {"id": "e-1", "source": "/t", "type": subjects.event_type(subject), "data": data}
    encoded = encode(body)
    result = decode(subject, encoded)
    check_well_formed(subject, encoded, result)
    labels = is_token(org) and is_token(name) and len(org) + len(name) < 63
    if isinstance(result, Accepted):
        assert labels
    elif labels:  # only the spec can be wrong: the project is named and the spec blamed
        assert isinstance(result, Rejected)
        assert (result.reason, result.organization, result.name) == ("InvalidSpec", org, name)


# -- one case per reason ---------------------------------------------------------------------


def test_event_too_large_is_checked_before_parsing() -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC)
    body["padding"] = "x" * MAX_EVENT_BYTES
    result = decode(subjects.PROJECT_CREATED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "EventTooLarge"
    assert str(MAX_EVENT_BYTES) in result.message
    # Exactly at the limit is still parsed (and here accepted).
    body["padding"] = ""
    exact = encode(body)
    body["padding"] = "x" * (MAX_EVENT_BYTES - len(exact))
    assert len(encode(body)) == MAX_EVENT_BYTES
    assert isinstance(decode(subjects.PROJECT_CREATED, encode(body)), Accepted)


@pytest.mark.parametrize("subject", ["project.renamed", "vpcbus.status.vpc.a.b", "", "project.*"])
def test_unknown_subject(subject: str) -> None:
    result = decode(subject, encode(new_event(subjects.PROJECT_CREATED, SPEC)))
    assert isinstance(result, Rejected) and result.reason == "UnknownSubject"
    assert repr(subject) in result.message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b'{"id": ',
        b"[" * 30000 + b"]" * 30000,  # deeper than the parser's recursion limit
        b'{"generation": ' + b"9" * 5000 + b"}",  # more digits than int() allows
    ],
)
def test_not_json_is_an_invalid_event(data: bytes) -> None:
    result = decode(subjects.PROJECT_CREATED, data)
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"
    assert result.message.startswith("event is not JSON")
    assert (result.event_id, result.organization, result.name) == (None, None, None)


@pytest.mark.parametrize("value", [[], [1, 2], "event", 3, None, True])
def test_json_that_is_not_an_object_is_an_invalid_event(value: object) -> None:
    result = decode(subjects.PROJECT_CREATED, encode(value))
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"


def test_broken_envelope_is_an_invalid_event_that_still_names_the_project() -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC, event_id="e-7")
    del body["source"]
    result = decode(subjects.PROJECT_CREATED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"
    assert (result.event_id, result.organization, result.name) == ("e-7", "acme", "shop")
    assert "source: Field required" in result.message


def test_bad_spec_is_an_invalid_spec_that_names_the_field_as_written() -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC, event_id="e-8")
    body["data"]["cidrBlock"] = "10.0.0.0/33"
    result = decode(subjects.PROJECT_CREATED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "InvalidSpec"
    assert (result.event_id, result.organization, result.name) == ("e-8", "acme", "shop")
    assert result.message.startswith("data.cidrBlock: cidrBlock '10.0.0.0/33'")
    assert "Value error" not in result.message


def test_bad_spec_and_bad_envelope_together_is_an_invalid_event() -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC)
    body["data"]["cidrBlock"] = "nope"
    body["generation"] = 0
    result = decode(subjects.PROJECT_CREATED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"
    assert "generation" in result.message and "data.cidrBlock" in result.message


@pytest.mark.parametrize("org", ["Acme", "abc\n", "a_b", 7])
def test_bad_project_identity_is_not_echoed(org: object) -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC)
    body["data"]["organization"] = org
    result = decode(subjects.PROJECT_CREATED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"
    # It cannot name the project: the org would not be a valid subject token.
    assert (result.organization, result.name) == (None, None)


def test_lone_surrogate_id_is_not_echoed() -> None:
    body = new_event(subjects.PROJECT_CREATED, SPEC, event_id="\ud800")
    result = decode(subjects.PROJECT_CREATED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"
    assert result.event_id is None


@pytest.mark.parametrize(
    ("subject", "event_type"),
    [
        (subjects.PROJECT_UPDATED, "io.vpcbus.project.created"),
        (subjects.PROJECT_CREATED, "io.vpcbus.project.updated"),
        (subjects.PROJECT_CREATED, "project.created"),
        (subjects.PROJECT_DELETED, "io.vpcbus.project.created"),
    ],
)
def test_type_must_match_subject(subject: str, event_type: str) -> None:
    data_model: ProjectRef = SPEC.ref if subject == subjects.PROJECT_DELETED else SPEC
    body = new_event(subject, data_model, event_id="e-9")
    body["type"] = event_type
    result = decode(subject, encode(body))
    assert isinstance(result, Rejected) and result.reason == "TypeMismatch"
    assert (result.event_id, result.organization, result.name) == ("e-9", "acme", "shop")
    assert repr(subjects.event_type(subject)) in result.message


def test_deletion_needs_only_the_identity() -> None:
    body = new_event(subjects.PROJECT_DELETED, SPEC.ref, generation=5, event_id="e-10")
    assert decode(subjects.PROJECT_DELETED, encode(body)) == Accepted(
        "acme", "shop", "e-10", 5, None
    )


@pytest.mark.parametrize("generation", ["1", " 2 ", True, 1.5])
def test_generation_must_be_a_json_integer(generation: object) -> None:
    # What the committed schema says ("type": "integer"), so every client agrees with us.
    body = new_event(subjects.PROJECT_CREATED, SPEC, event_id="e-8")
    body["generation"] = generation
    result = decode(subjects.PROJECT_CREATED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"
    assert "generation" in result.message


# -- member events: workload.attached|detached, eip.created|deleted, fip.created|deleted ------

NIC = WorkloadSpec(organization="acme", project="shop", kind="vm", name="ubuntu", ip="10.0.0.9")
NIC_REF = WorkloadRef(organization="acme", project="shop", kind="vm", name="ubuntu")
EIP = EipSpec(organization="acme", project="shop", name="web", external_network_type="public")
EIP_REF = EipRef(organization="acme", project="shop", name="web")
FIP = FipSpec(
    organization="acme", project="shop", name="ssh", vm_target=VmTarget(vm_name="ubuntu"),
    eip="web",
)  # fmt: skip
FIP_REF = FipRef(organization="acme", project="shop", name="ssh")
SVC = LbServiceSpec(
    organization="acme", project="shop", name="www",
    ports=[ServicePort(port=80, target_port=8080),
           ServicePort(port=53, target_port=53, protocol="UDP")],
    endpoints=["10.0.0.5", "10.0.0.6"], bind_on_default_gw_eip=True,
)  # fmt: skip
SVC_REF = LbServiceRef(organization="acme", project="shop", name="www")


def member_body(subject: str, **changes: object) -> dict[str, Any]:
    """A valid member event for ``subject`` with ``changes`` made to its data."""
    data = {
        subjects.WORKLOAD_ATTACHED: NIC,
        subjects.WORKLOAD_DETACHED: NIC_REF,
        subjects.EIP_CREATED: EIP,
        subjects.EIP_DELETED: EIP_REF,
        subjects.FIP_CREATED: FIP,
        subjects.FIP_DELETED: FIP_REF,
        subjects.SERVICE_CREATED: SVC,
        subjects.SERVICE_UPDATED: SVC,
        subjects.SERVICE_DELETED: SVC_REF,
    }[subject]
    body = new_event(subject, data, generation=3, event_id="m-1")
    body["data"] |= changes
    return body


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (subjects.WORKLOAD_ATTACHED, {"workload": NIC}),
        (subjects.WORKLOAD_DETACHED, {}),
        (subjects.EIP_CREATED, {"eip": EIP}),
        (subjects.EIP_DELETED, {}),
        (subjects.FIP_CREATED, {"fip": FIP}),
        (subjects.FIP_DELETED, {}),
        (subjects.SERVICE_CREATED, {"service": SVC}),
        (subjects.SERVICE_UPDATED, {"service": SVC}),
        (subjects.SERVICE_DELETED, {}),
    ],
)
def test_member_events_are_accepted(subject: str, expected: dict[str, Any]) -> None:
    family = subject.split(".")[0]
    member = {"eip": "eip.web", "fip": "fip.ssh", "service": "service.www"}.get(
        family, "workload.vm.ubuntu.default"
    )
    assert decode(subject, encode(member_body(subject))) == AcceptedMember(
        "acme", "shop", member, "m-1", 3, **expected
    )


def test_a_requested_mac_is_normalised() -> None:
    result = decode(subjects.WORKLOAD_ATTACHED, encode(member_body(
        subjects.WORKLOAD_ATTACHED, mac="0A:58:0A:00:00:09", interface="net1")))  # fmt: skip
    assert isinstance(result, AcceptedMember) and result.workload is not None
    assert (result.member, result.workload.mac) == ("workload.vm.ubuntu.net1", "0a:58:0a:00:00:09")


@pytest.mark.parametrize(
    ("subject", "changes", "message"),
    [
        (subjects.WORKLOAD_ATTACHED, {"ip": "10.0.0.300"}, "data.ip: ip '10.0.0.300' is not an"),
        (subjects.WORKLOAD_ATTACHED, {"ip": "fd00::1"}, "data.ip: ip 'fd00::1' is not an IPv4"),
        (subjects.WORKLOAD_ATTACHED, {"mac": "0a:58:0a:00:00"}, "data.mac: mac '0a:58:0a:00:00'"),
        (subjects.WORKLOAD_ATTACHED, {"mac": "01:00:5e:00:00:01"}, "is a multicast address"),
        (subjects.WORKLOAD_ATTACHED, {"mac": "00:00:00:00:00:00"}, "not a usable address"),
        (subjects.WORKLOAD_ATTACHED, {"kind": "container"}, "data.kind: Input should be"),
        (subjects.WORKLOAD_ATTACHED, {"name": "Ubuntu"}, "data.name"),
        (subjects.WORKLOAD_DETACHED, {"ip": "10.0.0.9"}, "data.ip: Extra inputs are not"),
        (subjects.WORKLOAD_DETACHED, {"mac": "0a:00:00:00:00:01"}, "data.mac: Extra inputs"),
        (subjects.EIP_DELETED, {"externalNetworkType": "cloud"}, "data.externalNetworkType"),
        (subjects.EIP_CREATED, {"externalNetworkType": "Pub"}, "data.externalNetworkType"),
        # Kube-DC's FIp validation rules, with its messages
        (
            subjects.FIP_CREATED,
            {"ipAddress": "10.0.0.5"},
            "ipAddress and vmTarget cannot be set at the same time",
        ),
        (
            subjects.FIP_CREATED,
            {"vmTarget": None},
            "either ipAddress or vmTarget must be specified",
        ),
        (
            subjects.FIP_CREATED,
            {"externalNetworkType": "cloud"},
            "eip and externalNetworkType cannot be set at the same time",
        ),
        (
            subjects.FIP_CREATED,
            {"vmTarget": None, "ipAddress": "10.0.0.300"},
            "ipAddress '10.0.0.300' is not an IPv4 address",
        ),
        (subjects.FIP_CREATED, {"vmTarget": {"vmName": "Ubuntu"}}, "data.vmTarget.vmName"),
        (subjects.FIP_DELETED, {"eip": "web"}, "data.eip: Extra inputs are not"),
        (subjects.SERVICE_CREATED, {"ports": []}, "data.ports: List should have at least 1"),
        (
            subjects.SERVICE_CREATED,
            {"ports": [{"port": 80, "targetPort": 8080}, {"port": 80, "targetPort": 81}]},
            "port 80/TCP is listed twice",
        ),
        (subjects.SERVICE_CREATED, {"ports": [{"port": 0, "targetPort": 1}]}, "data.ports.0.port"),
        (
            subjects.SERVICE_CREATED,
            {"ports": [{"port": 1, "targetPort": 1, "protocol": "SCTP"}]},
            "data.ports.0.protocol",
        ),
        (subjects.SERVICE_CREATED, {"bindOnEip": "pub"}, "are mutually exclusive"),
        (
            subjects.SERVICE_CREATED,
            {"vmSelector": "db"},
            "endpoints and vmSelector cannot be set at the same time",
        ),
        (
            subjects.SERVICE_CREATED,
            {"endpoints": ["10.0.0.5", "10.0.0.5"]},
            "endpoints must be distinct",
        ),
        (subjects.SERVICE_CREATED, {"endpoints": ["nope"]}, "endpoint 'nope' is not an IPv4"),
    ],
)
def test_invalid_member_specs_name_the_project_and_the_field(
    subject: str, changes: dict[str, object], message: str
) -> None:
    result = decode(subject, encode(member_body(subject, **changes)))
    assert isinstance(result, Rejected)
    assert (result.reason, result.event_id) == ("InvalidSpec", "m-1")
    assert (result.organization, result.name) == ("acme", "shop")
    assert message in result.message


@pytest.mark.parametrize("subject", subjects.MEMBER_EVENTS)
def test_member_event_type_must_match_its_subject(subject: str) -> None:
    body = member_body(subject)
    body["type"] = subjects.event_type(
        subjects.WORKLOAD_DETACHED
        if subject != subjects.WORKLOAD_DETACHED
        else subjects.EIP_DELETED
    )
    result = decode(subject, encode(body))
    assert isinstance(result, Rejected) and result.reason == "TypeMismatch"
    assert (result.event_id, result.organization, result.name) == ("m-1", "acme", "shop")
    assert repr(subjects.event_type(subject)) in result.message


def test_a_member_of_an_unnamed_project_is_an_invalid_event() -> None:
    body = member_body(subjects.WORKLOAD_ATTACHED, project="Shop", ip="x")
    result = decode(subjects.WORKLOAD_ATTACHED, encode(body))
    assert isinstance(result, Rejected) and result.reason == "InvalidEvent"
    assert (result.organization, result.name) == (None, None)
