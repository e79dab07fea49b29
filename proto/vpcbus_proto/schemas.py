"""JSON Schemas of every message on the bus, generated from the pydantic models.

The committed files in ``schemas/`` are the contract for non-Python clients and the snapshot
``tests/contract/test_schemas.py`` compares the models with, so a contract change is a visible
diff. Regenerate them after changing a model::

    python -m vpcbus_proto.schemas           # rewrite schemas/*.json
    python -m vpcbus_proto.schemas --check   # exit 1 and list the files that drifted

Which mode each schema uses:

* inbound messages (the lifecycle events users publish and services validate) use
  ``mode="validation"``: the schema says what the services *accept*, so defaulted
  attributes such as ``specversion`` or ``datacontenttype`` are optional and CloudEvents
  extension attributes are allowed, exactly as :func:`pydantic.BaseModel.model_validate` does;
* outbound messages (status and error records the services publish and others read) use
  ``mode="serialization"``: the schema says what the services *emit*.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vpcbus_proto.doctor import DoctorReply, DoctorRequest
from vpcbus_proto.errors import ErrorEvent
from vpcbus_proto.events import (
    EVENT_MODELS,
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
)
from vpcbus_proto.status import PoolUsage, ServiceStatus
from vpcbus_proto.zones import ZoneReply

#: Every message on the bus by schema name (the file is ``<name>.json``).
MODELS: dict[str, type[BaseModel]] = {
    "ProjectUpserted": ProjectUpserted,  # project.created, project.updated
    "ProjectDeleted": ProjectDeleted,  # project.deleted
    "WorkloadAttached": WorkloadAttached,  # workload.attached
    "WorkloadDetached": WorkloadDetached,  # workload.detached
    "EipCreated": EipCreated,  # eip.created
    "EipDeleted": EipDeleted,  # eip.deleted
    "FipCreated": FipCreated,  # fip.created
    "FipDeleted": FipDeleted,  # fip.deleted
    "ServiceUpserted": ServiceUpserted,  # service.created, service.updated
    "ServiceDeleted": ServiceDeleted,  # service.deleted
    "ServiceStatus": ServiceStatus,  # vpcbus.status.<service>.<org>.<project>
    "PoolUsage": PoolUsage,  # vpcbus.usage.pool.<pool>
    "ErrorEvent": ErrorEvent,  # vpcbus.error.> and vpcbus.dlq.>
    "ZoneReply": ZoneReply,  # the reply of vpcbus.svc.dns.zone
    "DoctorRequest": DoctorRequest,  # the request of vpcbus.svc.<service>.doctor
    "DoctorReply": DoctorReply,  # its reply
}

#: Messages that users publish and services validate; the others are published by services.
INBOUND: frozenset[type[BaseModel]] = frozenset(EVENT_MODELS.values())

#: Where the committed schemas live (shipped as package data).
DIRECTORY = Path(__file__).with_name("schemas")


def schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of ``model`` with the camelCase names used on the wire."""
    if model in INBOUND:
        return model.model_json_schema(by_alias=True, mode="validation")
    return model.model_json_schema(by_alias=True, mode="serialization")


def render(model: type[BaseModel]) -> str:
    """The exact text of a committed schema file."""
    return json.dumps(schema(model), sort_keys=True, indent=2) + "\n"


def write(directory: Path = DIRECTORY) -> list[Path]:
    """Write ``<Name>.json`` for every model into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in MODELS.items():
        path = directory / f"{name}.json"
        path.write_text(render(model), encoding="utf-8")
        paths.append(path)
    return paths


def drifted(directory: Path = DIRECTORY) -> list[str]:
    """Files in ``directory`` that are missing, differ from the models, or name no model."""
    problems = []
    for name, model in MODELS.items():
        path = directory / f"{name}.json"
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != render(model):
            problems.append(f"{path}: differs from {model.__module__}.{model.__qualname__}")
    if directory.is_dir():
        expected = {f"{name}.json" for name in MODELS}
        problems += [
            f"{path}: no model has this name (delete it)"
            for path in sorted(directory.glob("*.json"))
            if path.name not in expected
        ]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vpcbus_proto.schemas",
        description="Write the JSON Schemas of the bus messages, or check them for drift.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file drifted"
    )
    parser.add_argument("--directory", type=Path, default=DIRECTORY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        problems = drifted(args.directory)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run: python -m vpcbus_proto.schemas", file=sys.stderr)
        return 1 if problems else 0
    for path in write(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
