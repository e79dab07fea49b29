"""The committed AsyncAPI document is the bus contract in one file: it is what proto generates
now, it is valid AsyncAPI 3.0.0, it documents every subject of ``vpcbus_proto.subjects``, its
references resolve, and the facts proto restates (who consumes what, the streams, the
request/reply endpoints) still match the code that owns them.

After changing a model, a subject or who sends what, regenerate the document with::

    python -m vpcbus_proto.asyncapi

The AsyncAPI 3.0.0 JSON Schema is vendored in ``tests/data/asyncapi/`` (see SOURCE.md) and
resolved offline: no network at test time.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import nats.micro.request
import nats.micro.service
import pytest
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

import vpcbus_runtime.service
from vpcbus_dns.reconciler import DnsReconciler
from vpcbus_ipam.reconciler import IpamReconciler
from vpcbus_nat.reconciler import NatReconciler
from vpcbus_proto import channels, doctor, endpoints, schemas, subjects, zones
from vpcbus_proto.asyncapi import (
    DOCUMENT,
    VERSION,
    document,
    drift,
    main,
    render,
    rerooted,
)
from vpcbus_proto.events import new_event
from vpcbus_proto.members import WorkloadSpec
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import ServiceStatus
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime import bus, intake
from vpcbus_runtime.controller import Counters, Lag, figures
from vpcbus_runtime.members import MemberRecord
from vpcbus_runtime.records import ProjectRecord
from vpcbus_runtime.service import project_view
from vpcbus_vpc.reconciler import VpcReconciler

REGENERATE = "run `python -m vpcbus_proto.asyncapi` and commit the result"
ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = ROOT / "tests" / "data" / "asyncapi" / "3.0.0.json"
SPEC_ID = "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
#: Where the document is mounted to validate samples against its component schemas.
DOC_URI = "urn:vpcbus:asyncapi"
PROJECT = ProjectSpec(
    organization="acme", name="shop", cidr_block="10.0.0.0/24", egress_network_type="cloud"
)


def committed() -> dict[str, Any]:
    assert DOCUMENT.exists(), f"{DOCUMENT} is missing: {REGENERATE}"
    loaded = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


# -- the snapshot --------------------------------------------------------------------------------


def test_committed_document_equals_the_generated_one() -> None:
    text = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else None
    problems = drift(text, render())
    assert not problems, f"{DOCUMENT} differs from proto ({'; '.join(problems)}): {REGENERATE}"


def test_check_mode_exits_zero_on_the_committed_document() -> None:
    # A separate process (another hash seed): the output does not depend on set order.
    proc = subprocess.run(
        [sys.executable, "-m", "vpcbus_proto.asyncapi", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stderr}\n{REGENERATE}"
    assert proc.stdout == "" and proc.stderr == ""


def test_check_mode_names_the_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "asyncapi.json"
    assert main(["--check", "--output", str(path)]) == 1
    assert "asyncapi.json: missing" in capsys.readouterr().err
    assert main(["--output", str(path)]) == 0
    assert main(["--check", "--output", str(path)]) == 0
    stale = json.loads(path.read_text())
    del stale["channels"]["poolUsage"]
    stale["components"]["schemas"]["ProjectSpec"]["required"] = []
    stale["components"]["schemas"]["Old"] = {}
    path.write_text(json.dumps(stale, sort_keys=True, indent=2) + "\n")
    capsys.readouterr()
    assert main(["--check", "--output", str(path)]) == 1
    err = capsys.readouterr().err
    assert "/channels/poolUsage: not in the committed file" in err
    assert "/components/schemas/ProjectSpec/required: differs" in err
    assert "/components/schemas/Old: only in the committed file" in err
    assert "run: python -m vpcbus_proto.asyncapi" in err
    path.write_text(json.dumps(json.loads(render())) + "\n")  # same content, one line
    capsys.readouterr()
    assert main(["--check", "--output", str(path)]) == 1
    assert "same content, different formatting" in capsys.readouterr().err


# -- valid AsyncAPI 3.0.0 ----------------------------------------------------------------------


@cache
def asyncapi_validator() -> Any:
    """The official schema; its definitions are keyed (and ``$ref``'d) by their URLs.

    They go into a registry of their own, which retrieves nothing: a reference that is not
    in the vendored file fails instead of going to the network.
    """
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resources(
        (uri, Resource.from_contents(schema, default_specification=DRAFT7))
        for uri, schema in spec["definitions"].items()
    )
    return jsonschema.Draft7Validator(spec, registry=registry)


def asyncapi_errors(doc: object) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in asyncapi_validator().iter_errors(doc)
    ]


def test_the_vendored_schema_is_asyncapi_3_0_0() -> None:
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    assert spec["$id"] == SPEC_ID
    assert spec["properties"]["asyncapi"]["const"] == "3.0.0"
    jsonschema.Draft7Validator.check_schema(spec)
    source = (SPEC_FILE.parent / "SOURCE.md").read_text(encoding="utf-8")
    assert hashlib.sha256(SPEC_FILE.read_bytes()).hexdigest() in source, "update SOURCE.md"


def test_committed_document_is_valid_asyncapi_3_0_0() -> None:
    assert asyncapi_errors(committed()) == []


def _broken(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    *parents, leaf = path.split("/")
    node = broken
    for part in parents:
        node = node[part]
    node[leaf] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("asyncapi", "2.6.0"),
        ("operations/clientSendProjectCreated/action", "publish"),
        ("channels/projectCreated/subscribe", {}),
        ("components/parameters/service/schema", {"type": "string"}),
        ("components/messages/projectCreated/payload", {"type": 7}),
        ("servers/development/protocol", 4222),
        ("operations/ipamReceiveStatusEndpoint/bindings/nats/queue", "q" * 256),
    ],
)
def test_the_validator_rejects_documents_that_are_not_asyncapi_3(path: str, value: object) -> None:
    assert asyncapi_errors(_broken(document(), path, value)), f"accepted {path}={value!r}"


# -- every subject is documented -----------------------------------------------------------------

#: Names in ``vpcbus_proto.subjects`` that name no subject, and why.
NOT_SUBJECTS = {
    "SERVICES": "service names",
    "EVENTS_STREAM": "a stream name",
    "STATUS_STREAM": "a stream name",
    "ERRORS_STREAM": "a stream name",
    "UNKNOWN": "a token",
    "EVENT_TYPE_PREFIX": "a CloudEvents type prefix",
    "event_type": "a CloudEvents type",
    "kv_bucket": "a KV bucket name",
    "IPAM_ADDRESSES_BUCKET": "a KV bucket name",
}


def subject_names() -> dict[str, object]:
    """The public names ``vpcbus_proto.subjects`` defines (not the ones it imports)."""
    return {
        name: value
        for name, value in vars(subjects).items()
        if not name.startswith("_")
        and type(value).__module__ != "__future__"
        and not (callable(value) and getattr(value, "__module__", None) != subjects.__name__)
    }


def examples(name: str, value: object) -> list[str]:
    """The subjects or subject filters a name stands for; functions are called with their
    parameter names as tokens."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
        return list(value)
    if inspect.isfunction(value):
        return [value(*inspect.signature(value).parameters)]
    raise AssertionError(f"subjects.{name}: cannot tell which subjects it names")


def _template(address: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", address)
    return re.compile("".join("[^.]+" if p.startswith("{") else re.escape(p) for p in parts))


def covered(subject: str, addresses: list[str]) -> bool:
    """A subject is covered by an address template; a filter, by an address inside it."""
    if "*" in subject or ">" in subject:
        return any(channels.matches(subject, channels.PARAMETER.sub("x", a)) for a in addresses)
    return any(_template(a).fullmatch(subject) for a in addresses)


def addresses() -> list[str]:
    return [c["address"] for c in document()["channels"].values() if c["address"] is not None]


def test_every_subject_of_the_subjects_module_has_a_channel() -> None:
    known = addresses()
    missing = [
        f"subjects.{name} ({subject})"
        for name, value in subject_names().items()
        if name not in NOT_SUBJECTS
        for subject in examples(name, value)
        if not covered(subject, known)
    ]
    assert missing == [], (
        f"no channel documents {missing}: describe them in vpcbus_proto.channels "
        f"(or list them in NOT_SUBJECTS if they name no subject), then {REGENERATE}"
    )


def test_the_coverage_check_fails_without_a_family() -> None:
    known = [a for a in addresses() if not a.startswith("vpcbus.usage.")]
    assert not covered(subjects.pool_usage_subject("pool"), known)
    assert not covered("vpcbus.usage.>", known)
    # a family no code publishes (Gateway API routes)
    assert not covered("route.*", addresses()) and not covered("route.created", addresses())


def test_not_subjects_are_still_defined() -> None:
    assert set(NOT_SUBJECTS) <= set(subject_names())


def test_every_lifecycle_subject_has_its_model() -> None:
    lifecycle = [*subjects.PROJECT_EVENTS, *subjects.MEMBER_EVENTS]
    assert list(channels.EVENT_MODELS) == lifecycle
    assert set(subjects.MEMBER_REMOVALS) <= set(lifecycle)
    families = {s.split(".")[0] for s in lifecycle}
    assert families == {f.removesuffix(".*") for f in subjects.EVENT_SUBJECTS}


def test_every_channel_is_stored_in_a_stream_except_the_requests() -> None:
    unstored = {a for a in addresses() if channels.stream_of(a) is None}
    assert unstored == {
        endpoints.STATUS_ENDPOINT,
        doctor.DOCTOR_ENDPOINT,
        zones.ZONE_ENDPOINT,
        *(f"{endpoints.MICRO_PREFIX}.{v}.{endpoints.MICRO_NAME}" for v in endpoints.MICRO_VERBS),
    }, "a subject family no stream captures: add its filter to the stream in subjects.py"


def test_every_model_is_the_payload_of_a_message() -> None:
    payloads = {m["payload"]["$ref"] for m in document()["components"]["messages"].values()}
    missing = [n for n in schemas.MODELS if f"#/components/schemas/{n}" not in payloads]
    assert missing == [], f"models on no channel: {missing}"


# -- references ----------------------------------------------------------------------------------


def references(node: object, at: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield at, node["$ref"]
        for key, value in node.items():
            yield from references(value, f"{at}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from references(value, f"{at}/{i}")


def resolve(doc: dict[str, Any], pointer: str) -> object:
    assert pointer.startswith("#/"), f"not a local reference: {pointer}"
    node: Any = doc
    for part in pointer[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{pointer} does not resolve"
        node = node[part]
    return node


def test_every_message_payload_refers_to_a_component_schema() -> None:
    doc = committed()
    for mid, found in doc["components"]["messages"].items():
        assert "payload" in found, f"message {mid} has no payload"
        for key in ("payload", "headers"):
            target = found.get(key, {"$ref": "#/components/schemas/EventHeaders"})["$ref"]
            assert target.startswith("#/components/schemas/"), f"{mid} {key}: {target}"
            assert isinstance(resolve(doc, target), dict), f"{mid} {key}: {target}"


def test_every_reference_in_the_document_resolves() -> None:
    doc = committed()
    dangling = []
    for at, target in references(doc):
        try:
            resolve(doc, target)
        except AssertionError:
            dangling.append(f"{at}: {target}")
    assert dangling == []


def test_the_reference_checks_fail_on_a_dangling_reference() -> None:
    doc = _broken(committed(), "components/messages/poolUsage/payload", {"$ref": "#/x/Nope"})
    with pytest.raises(AssertionError, match="does not resolve"):
        resolve(doc, doc["components"]["messages"]["poolUsage"]["payload"]["$ref"])


def test_operations_use_their_channels_messages() -> None:
    # AsyncAPI 3: an operation's (and its reply's) messages are a subset of its channel's.
    for oid, op in committed()["operations"].items():
        pairs = [(op["channel"], op["messages"])]
        if "reply" in op:
            pairs.append((op["reply"]["channel"], op["reply"]["messages"]))
        for channel, messages in pairs:
            assert messages, oid
            for message in messages:
                assert message["$ref"].startswith(channel["$ref"] + "/messages/"), oid


def test_component_schemas_are_the_committed_json_schemas() -> None:
    found = committed()["components"]["schemas"]
    for name, model in schemas.MODELS.items():
        tree = rerooted(schemas.schema(model))
        for key, value in [*tree.pop("$defs", {}).items(), (name, tree)]:
            assert found[key] == value, f"components/schemas/{key} differs from {name}.json"


# -- payloads validate against the document ------------------------------------------------------


@cache
def payload_registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(committed(), default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
    return registry


def payload_errors(schema: str, body: object) -> list[str]:
    ref = {"$ref": f"{DOC_URI}#/components/schemas/{schema}"}
    validator = jsonschema.Draft7Validator(ref, registry=payload_registry())
    return [e.message for e in validator.iter_errors(body)]


def micro_bodies() -> dict[str, dict[str, Any]]:
    svc = nats.micro.service
    now = datetime(2030, 1, 1, tzinfo=UTC)
    name, subject = "vpcbus-vpc", "vpcbus.svc.vpc.status"
    endpoint = {"name": "status", "subject": subject, "queue_group": "q", "metadata": None}
    return {
        "MicroPing": svc.ServicePing(id="NUID", name=name, version="0.1.0").to_dict(),
        "MicroInfo": svc.ServiceInfo(
            id="NUID",
            name=name,
            version="0.1.0",
            description="d",
            endpoints=[svc.EndpointInfo.from_dict(endpoint)],
        ).to_dict(),
        "MicroStats": svc.ServiceStats(
            id="NUID",
            name=name,
            version="0.1.0",
            started=now,
            endpoints=[
                svc.EndpointStats(
                    name="status",
                    subject=subject,
                    queue_group="q",
                    num_requests=2,
                    num_errors=1,
                    processing_time=10,
                    average_processing_time=5,
                    last_error="boom",
                    data=figures(
                        Counters(events=3), queue_depth=0, in_flight=0, latencies=[0.05], lag=None
                    ),
                )
            ],
        ).to_dict(),
    }


def bodies() -> list[tuple[str, object]]:
    """Bodies built by the code that builds them on the bus."""
    record = ProjectRecord(
        organization="acme", name="shop", generation=2, event_id="e-1", spec=PROJECT,
        previous_spec=PROJECT,
    )  # fmt: skip
    tombstone = record.model_copy(update={"spec": None, "deleted_at": datetime.now(UTC)})
    nic = MemberRecord(
        organization="acme", project="shop", member="workload.vm.web.default", generation=1,
        event_id="e-2", workload=WorkloadSpec(
            organization="acme", project="shop", kind="vm", name="web", mac="0e:00:00:00:00:01"
        ),
    )  # fmt: skip
    gone = nic.model_copy(update={"workload": None, "deleted_at": datetime.now(UTC)})
    status = ServiceStatus(
        service="ipam", organization="acme", project="shop", namespace="acme-shop",
        generation=2, state="Ready", reason="Allocated", message="m",
        observed_at=datetime.now(UTC),
    )  # fmt: skip
    lag = Lag(pending=4, ack_pending=2, redelivered=1, at=datetime.now(UTC))
    finding = doctor.Finding(
        service="vpc", project="acme.shop", kind="drifted",
        object="Logical_Switch_Port/web.acme-shop", detail="addresses: [a] -> [b]",
    )  # fmt: skip
    ask = doctor.DoctorRequest(organization="acme", project="shop", fix=True)
    answer = doctor.DoctorReply(service="vpc", projects=2, findings=[finding], fixed=[finding])

    def view(
        service: ServiceName, rec: ProjectRecord | None, revision: int,
        members: dict[str, MemberRecord], queued: bool, published: ServiceStatus | None,
    ) -> dict[str, object]:  # fmt: skip
        return project_view(service, "acme.shop", rec, revision, members, queued=queued,
                            status=published)  # fmt: skip

    def stats(counters: Counters, latencies: list[float], lag: Lag | None) -> dict[str, object]:
        return figures(counters, queue_depth=1, in_flight=2, latencies=latencies, lag=lag)

    return [
        ("ProjectUpserted", new_event(subjects.PROJECT_CREATED, PROJECT, generation=1)),
        ("ProjectDeleted", new_event(subjects.PROJECT_DELETED, PROJECT.ref)),
        ("StatusRequest", {"organization": "acme", "project": "shop"}),
        ("DoctorRequest", {}),
        ("DoctorRequest", ask.model_dump(by_alias=True)),
        ("DoctorReply", answer.model_dump(by_alias=True)),
        ("StatusReply", view("ipam", record, 3, {nic.member: nic}, False, status)),
        ("StatusReply", view("vpc", tombstone, 4, {gone.member: gone}, True, None)),
        ("StatusReply", view("dns", None, 0, {}, False, None)),
        ("ServiceFigures", stats(Counters(events=3), [0.01, 0.2], lag)),
        ("ServiceFigures", stats(Counters(), [], None)),
        *micro_bodies().items(),
    ]


@pytest.mark.parametrize(("schema", "body"), bodies(), ids=lambda v: str(v)[:24])
def test_real_bodies_validate_against_their_component_schema(schema: str, body: object) -> None:
    assert payload_errors(schema, body) == []


@pytest.mark.parametrize(
    "schema",
    ["ProjectUpserted", "StatusReply", "DoctorReply", "ServiceFigures", *micro_bodies()],
)
def test_an_unknown_field_fails_the_component_schema(schema: str) -> None:
    body = copy.deepcopy(dict(bodies())[schema])
    assert isinstance(body, dict)
    target = body["data"] if schema == "ProjectUpserted" else body
    target["surprise"] = 1
    assert payload_errors(schema, body), f"{schema} accepts an unknown field"


def test_the_status_reply_names_every_record_field() -> None:
    record = endpoints.SCHEMAS["StatusReply"]["properties"]["record"]
    assert set(record["properties"]) == set(ProjectRecord.model_fields)
    required = {n for n, f in ProjectRecord.model_fields.items() if f.is_required()}
    assert set(record["required"]) == required


# -- facts proto restates match their owners -----------------------------------------------------

RECONCILERS: dict[ServiceName, Any] = {
    "ipam": IpamReconciler,
    "vpc": VpcReconciler,
    "nat": NatReconciler,
    "dns": DnsReconciler,
}


def test_consumers_and_watchers_are_the_services_own() -> None:
    assert set(RECONCILERS) == set(subjects.SERVICES)
    for service, cls in RECONCILERS.items():
        consumes = tuple(getattr(cls, "consumes", ("project",)))  # the controller's default
        assert channels.CONSUMES[service] == consumes, f"{service} consumes {consumes}"
        assert channels.WATCHES[service] == tuple(cls.watches), f"{service} watches"


def test_only_the_pool_usage_publisher_publishes_pool_usage() -> None:
    callers = {
        service
        for service in subjects.SERVICES
        for path in (ROOT / "services" / service).rglob("*.py")
        if "pool_usage_subject(" in path.read_text(encoding="utf-8")
    }
    assert callers == {channels.POOL_USAGE_PUBLISHER}


def test_event_models_are_the_intakes() -> None:
    assert intake._MODELS == channels.EVENT_MODELS


def test_streams_are_the_runtimes() -> None:
    declared = {c.name: list(c.subjects or []) for c in bus.stream_configs()}
    assert declared == {name: list(filters) for name, (filters, _) in channels.STREAMS.items()}


def test_endpoints_are_the_runtimes_and_nats_micros() -> None:
    runtime = vpcbus_runtime.service
    assert runtime.endpoint_subject("{service}", "status") == endpoints.STATUS_ENDPOINT
    assert runtime.endpoint_subject("dns", "zone") == zones.ZONE_ENDPOINT
    assert runtime.endpoint_subject("{service}", "doctor") == doctor.DOCTOR_ENDPOINT
    assert runtime.micro_name("{service}") == endpoints.MICRO_NAME
    svc, req = nats.micro.service, nats.micro.request
    assert endpoints.MICRO_PREFIX == svc.DEFAULT_PREFIX
    assert endpoints.MICRO_QUEUE_GROUP == svc.DEFAULT_QUEUE_GROUP
    assert set(endpoints.MICRO_VERBS) == {v.value for v in svc.ServiceVerb}
    assert endpoints.ERROR_HEADER == req.ERROR_HEADER
    assert endpoints.ERROR_CODE_HEADER == req.ERROR_CODE_HEADER
    for verb, expected in [
        ("PING", svc.PING_RESPONSE_TYPE),
        ("INFO", svc.INFO_RESPONSE_TYPE),
        ("STATS", svc.STATS_RESPONSE_TYPE),
    ]:
        assert endpoints.micro_type(verb) == expected


def test_version_is_the_distributions() -> None:
    project = tomllib.loads((ROOT / "proto" / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["version"] == VERSION


def test_event_models_have_schemas() -> None:
    models: list[type[BaseModel]] = list(channels.EVENT_MODELS.values())
    assert set(models) == set(schemas.INBOUND)
