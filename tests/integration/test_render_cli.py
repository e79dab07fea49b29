"""``vpcbus render kube-ovn`` as a user runs it (a subprocess): the YAML stream parses, every
document validates against Kube-OVN's CRD schemas (tests/data/kubeovn-crds; Multus' for the
NetworkAttachmentDefinition), in apply order;
bad input is ``error: ...`` and a non-zero exit. Offline: no bus, no OVN."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import yaml

from tests.integration.helpers import vpcbus

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "kubeovn-crds"
NAD_SCHEMA = SCHEMAS.parent / "multus-crds" / "NetworkAttachmentDefinition.json"


def env() -> dict[str, str]:
    return dict(os.environ)


async def test_render_prints_a_valid_stream_in_apply_order() -> None:
    res = await vpcbus(
        env(), "render", "kube-ovn", "acme/shop", "--cidr", "10.1.0.0/22", "--egress", "public",
        "--gateway", "100.66.0.1", "--exclude", "10.1.0.2..10.1.0.9", "--exclude", "10.1.3.3",
        "--eip", "web", "--eip", "db",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(res.stdout))
    kinds = [d["kind"] for d in docs]
    assert kinds == [
        "OvnEip", "OvnEip", "OvnEip", "Vpc", "Subnet", "NetworkAttachmentDefinition", "VpcDns",
        "OvnSnatRule",
    ]  # fmt: skip
    for d in docs:
        nad = d["kind"] == "NetworkAttachmentDefinition"
        schema = json.loads((NAD_SCHEMA if nad else SCHEMAS / f"{d['kind']}.json").read_text())
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(d)]
        assert not errors, f"{d['kind']}: {errors}"
        assert d["metadata"]["labels"]["vpcbus.io/project"] == "acme.shop"
    vpc, subnet = docs[3]["spec"], docs[4]["spec"]
    assert vpc["staticRoutes"][0]["nextHopIP"] == "100.66.0.1"
    assert vpc["extraExternalSubnets"] == ["ext-public"]
    assert subnet["cidrBlock"] == "10.1.0.0/22"
    assert subnet["excludeIps"] == ["10.1.0.1", "10.1.0.2..10.1.0.9", "10.1.3.3"]
    eips = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "OvnEip")
    assert eips == ["acme-shop-eip-db", "acme-shop-eip-web", "acme-shop-ext-public"]
    assert docs[-1]["spec"]["ovnEip"] == "acme-shop-ext-public"


async def test_bad_input_is_an_error_and_non_zero() -> None:
    cases = [
        (["acme/shop", "--cidr", "10.0.0.0/33"], "invalid project: cidrBlock '10.0.0.0/33'"),
        (["acme/shop", "--cidr", "10.0.0.0/24", "--exclude", "10.9.0.1"], "outside cidrBlock"),
        (["acme/shop", "--cidr", "10.0.0.0/24", "--gateway", "gw"], "gateway 'gw' is not"),
        (["acme/shop", "--cidr", "10.0.0.0/24", "--eip", "Web"], "invalid EIP"),
        (["acmeshop", "--cidr", "10.0.0.0/24"], "is not ORG/PROJECT"),
    ]
    for args, words in cases:
        res = await vpcbus(env(), "render", "kube-ovn", *args)
        assert res.returncode != 0, args
        assert res.stdout == "", args
        assert res.stderr.startswith("error: ") and words in res.stderr, (args, res.stderr)
