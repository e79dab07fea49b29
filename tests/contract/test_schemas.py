"""The committed JSON Schemas are the contract: they match the models, and they accept and
reject the same messages the models do.

After changing a model, regenerate the committed files with::

    python -m vpcbus_proto.schemas
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import BaseModel, ValidationError

from vpcbus_proto import subjects
from vpcbus_proto.doctor import DoctorReply, DoctorRequest
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.events import (
    EipCreated,
    EipDeleted,
    FipCreated,
    FipDeleted,
    ProjectDeleted,
    ProjectUpserted,
    ServiceDeleted,
    ServiceUpserted,
    WorkloadAttached,
    WorkloadDetached,
    new_event,
)
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.schemas import DIRECTORY, INBOUND, MODELS, drifted, main, render
from vpcbus_proto.status import AddressFacts, ExternalAddress, PoolUsage, ServiceStatus
from vpcbus_proto.zones import ZoneReply

REGENERATE = "run `python -m vpcbus_proto.schemas` and commit the result"
SPEC = ProjectSpec(
    organization="acme",
    name="shop",
    cidr_block="10.0.0.0/24",
    egress_network_type="cloud",
    gw_lan_ip="10.0.0.254",
)


def committed(name: str) -> dict[str, Any]:
    path = DIRECTORY / f"{name}.json"
    assert path.exists(), f"{path} is missing: {REGENERATE}"
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def validator(name: str) -> Any:
    schema = committed(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(name: str, instance: object) -> list[str]:
    return [e.message for e in validator(name).iter_errors(instance)]


# -- the snapshot --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_committed_schema_equals_the_model(name: str) -> None:
    model = MODELS[name]
    path = DIRECTORY / f"{name}.json"
    assert path.exists(), f"{path} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render(model), (
        f"{path.name} differs from {model.__module__}.{model.__qualname__}; "
        f"the bus contract changed: {REGENERATE}"
    )


def test_no_stray_schema_files() -> None:
    files = {p.name for p in DIRECTORY.glob("*.json")}
    assert files == {f"{name}.json" for name in MODELS}, f"stray or missing files: {REGENERATE}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_committed_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(committed(name))


def test_every_message_on_the_bus_has_a_schema() -> None:
    inbound = {
        ProjectUpserted, ProjectDeleted, WorkloadAttached, WorkloadDetached, EipCreated, EipDeleted,
        FipCreated, FipDeleted, ServiceUpserted, ServiceDeleted,
    }  # fmt: skip
    replies = {ZoneReply, DoctorRequest, DoctorReply}  # of request/reply endpoints, not stored
    assert set(MODELS.values()) == inbound | {ServiceStatus, ErrorEvent, PoolUsage} | replies
    assert inbound == INBOUND


def test_check_mode_exits_zero_on_the_committed_files() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vpcbus_proto.schemas", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stderr}\n{REGENERATE}"
    assert proc.stdout == "" and proc.stderr == ""


def test_check_mode_reports_drift_missing_and_stray_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--directory", str(tmp_path)]) == 0  # write into a scratch directory
    assert drifted(tmp_path) == []
    assert main(["--check", "--directory", str(tmp_path)]) == 0
    (tmp_path / "ServiceStatus.json").write_text("{}\n")
    (tmp_path / "ErrorEvent.json").unlink()
    (tmp_path / "Old.json").write_text("{}\n")
    capsys.readouterr()
    assert main(["--check", "--directory", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ServiceStatus.json: differs from vpcbus_proto.status.ServiceStatus" in err
    assert "ErrorEvent.json: missing" in err
    assert "Old.json: no model has this name" in err
    assert "run: python -m vpcbus_proto.schemas" in err


# -- samples: valid ones pass both, invalid ones fail both ---------------------------------------


def samples() -> list[tuple[str, type[BaseModel], dict[str, Any]]]:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    status = ServiceStatus(
        service="ipam",
        organization="acme",
        project="shop",
        namespace="acme-shop",
        generation=2,
        state="Ready",
        reason="Allocated",
        observed_at=now,
        addresses=AddressFacts(
            cidr_block="10.0.0.0/24",
            egress_network_type="cloud",
            gateway_ip="10.0.0.254",
            eips=[
                ExternalAddress(
                    name="default-gw",
                    ip_address="100.65.0.2",
                    network="cloud",
                    prefix_length=16,
                    gateway="100.65.0.1",
                    ready=True,
                    ownership_type="Shared",
                    owners=["Snat/acme-shop"],
                )
            ],
        ),
        objects=["EIP/default-gw=100.65.0.2"],
    )
    error = ErrorEvent(
        service="vpc",
        kind="dead-letter",
        reason="MaxDeliveriesExceeded",
        message="gave up",
        subject="project.created",
        event_id="e-1",
        stream_sequence=9,
        deliveries=5,
        organization="acme",
        project="shop",
        payload="{}",
        time=now,
    )
    return [
        ("created", ProjectUpserted, new_event(subjects.PROJECT_CREATED, SPEC, generation=1)),
        ("updated", ProjectUpserted, new_event(subjects.PROJECT_UPDATED, SPEC)),
        ("deleted", ProjectDeleted, new_event(subjects.PROJECT_DELETED, SPEC.ref, generation=3)),
        ("status", ServiceStatus, json.loads(status.model_dump_json(by_alias=True))),
        ("error", ErrorEvent, json.loads(error.model_dump_json(by_alias=True))),
    ]


def schema_name(model: type[BaseModel]) -> str:
    return next(name for name, m in MODELS.items() if m is model)


@pytest.mark.parametrize(("label", "model", "sample"), samples(), ids=lambda v: str(v)[:20])
def test_valid_samples_pass_the_model_and_the_committed_schema(
    label: str, model: type[BaseModel], sample: dict[str, Any]
) -> None:
    model.model_validate(sample)
    assert schema_errors(schema_name(model), sample) == []


def test_minimal_inbound_event_is_valid_for_both() -> None:
    # Defaulted CloudEvents attributes (specversion, datacontenttype, time) may be omitted.
    body = {
        "id": "e-1",
        "source": "/x",
        "type": "io.vpcbus.project.deleted",
        "data": {"organization": "acme", "name": "shop"},
    }
    ProjectDeleted.model_validate(body)
    assert schema_errors("ProjectDeleted", body) == []


def _mutations() -> list[tuple[str, str, Any]]:
    """(sample, JSON pointer-ish path, new value or DELETE) that break a valid sample."""
    delete = "<delete>"
    return [
        ("created", "data.organization", "Acme"),
        ("created", "data.name", "shop_1"),
        ("created", "data.egressNetworkType", "internet"),
        ("created", "data.cidrBlock", 24),
        ("created", "data.colour", "blue"),
        ("created", "data.cidrBlock", delete),
        ("created", "id", ""),
        ("created", "id", delete),
        ("created", "source", delete),
        ("created", "specversion", "0.3"),
        ("created", "generation", 0),
        ("created", "generation", 1.5),
        ("created", "generation", "one"),
        ("created", "datacontenttype", "text/plain"),
        ("deleted", "data.cidrBlock", "10.0.0.0/24"),
        ("deleted", "data", delete),
        ("status", "state", "Done"),
        ("status", "service", "lb"),
        ("status", "generation", -1),
        ("status", "extra", 1),
        ("status", "addresses.eips.0.prefixLength", 33),
        ("status", "addresses.eips.0.ownershipType", "Mine"),
        ("error", "kind", "fatal"),
        ("error", "time", delete),
    ]


@pytest.mark.parametrize(("label", "path", "value"), _mutations())
def test_invalid_samples_fail_both_the_model_and_the_schema(
    label: str, path: str, value: Any
) -> None:
    [(_, model, sample)] = [s for s in samples() if s[0] == label]
    broken = copy.deepcopy(sample)
    *parents, leaf = path.split(".")
    node: Any = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value == "<delete>":
        del node[leaf]
    else:
        node[leaf] = value
    with pytest.raises(ValidationError):
        model.model_validate(broken)
    assert schema_errors(schema_name(model), broken), f"the schema accepts {path}={value!r}"


def test_semantic_spec_rules_are_the_models_alone() -> None:
    # A JSON Schema cannot say "host bits must be zero": such an event passes the schema
    # and is rejected by the services. This is the known gap between the two.
    body = new_event(subjects.PROJECT_CREATED, SPEC)
    body["data"]["cidrBlock"] = "10.0.0.1/24"
    assert schema_errors("ProjectUpserted", body) == []
    with pytest.raises(ValidationError, match="cidrBlock"):
        ProjectUpserted.model_validate(body)
