"""The DNS service's Kube-OVN slice from IPAM's facts (``vpcbus_kubeovn.dns.from_facts``):
the ``VpcDns`` validates against Kube-OVN's strict CRD schema, a ``<svc>-ext`` headless
Service and Endpoints at the ingress IP exist exactly for ready services that have one, in
apply order, and the kube backend's pure rules (readiness, drift) say what they should."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from vpcbus_dns.kube import core_differs, not_ready
from vpcbus_kubeovn import dns
from vpcbus_kubeovn.meta import is_object_name, is_service_name
from vpcbus_proto.members import LbServiceSpec, ServicePort
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts, LoadBalancer, PortState

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "kubeovn-crds"
SPEC = ProjectSpec(
    organization="acme", name="shop", cidr_block="10.0.0.0/24", egress_network_type="cloud"
)
LABELS = {
    "app.kubernetes.io/managed-by": "vpcbus",
    "vpcbus.io/project": "acme.shop",
    "vpcbus.io/owner": "dns",
}


def lb(name: str, ip: str, *ports: tuple[int, str, bool], ready: bool = True) -> LoadBalancer:
    return LoadBalancer(
        name=name, eip="default-gw", ingress_ip=ip, ready=ready,
        ports=[PortState(port=p, target_port=p, protocol=proto, ready=ok)
               for p, proto, ok in ports],
    )  # fmt: skip


def facts(*services: LoadBalancer) -> AddressFacts:
    return AddressFacts(
        cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1",
        services=list(services),
    )  # fmt: skip


def schema_errors(obj: dict[str, Any]) -> list[str]:
    schema = json.loads((SCHEMAS / f"{obj['kind']}.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]


def test_only_vpc_dns_without_published_services() -> None:
    out = dns.from_facts(SPEC, facts())
    assert out == [dns.vpc_dns(SPEC)]
    (vpc_dns,) = out
    assert schema_errors(vpc_dns) == []
    assert vpc_dns["apiVersion"] == "kubeovn.io/v1" and vpc_dns["kind"] == "VpcDns"
    assert vpc_dns["metadata"] == {"name": "acme-shop", "labels": LABELS}  # cluster-scoped
    assert vpc_dns["spec"] == {"vpc": "acme-shop", "subnet": "acme-shop-default"}


def test_ready_services_with_an_ingress_ip_get_their_ext_pair_in_apply_order() -> None:
    out = dns.from_facts(
        SPEC,
        facts(
            lb("web", "100.65.0.5", (443, "TCP", True), (80, "TCP", True), (53, "UDP", False)),
            lb("api", "100.65.0.6", (8080, "TCP", True)),
            lb("waiting", "", (81, "TCP", False), ready=False),
            lb("refused", "100.65.0.5", (80, "TCP", False), ready=False),
            lb("x" * 60, "100.65.0.7", (82, "TCP", True)),  # no valid -ext name: skipped
        ),
    )
    assert [(m["kind"], m["metadata"]["name"]) for m in out] == [
        ("VpcDns", "acme-shop"),
        ("Service", "api-ext"),
        ("Service", "web-ext"),
        ("Endpoints", "api-ext"),
        ("Endpoints", "web-ext"),
    ]
    assert schema_errors(out[0]) == []
    for m in out[1:]:
        assert m["apiVersion"] == "v1"
        assert m["metadata"] == {"name": m["metadata"]["name"], "namespace": "acme-shop",
                                 "labels": LABELS}  # fmt: skip
        assert is_object_name(m["metadata"]["name"]) and is_service_name(m["metadata"]["name"])
    web_ports = [
        {"name": "tcp-80", "port": 80, "protocol": "TCP"},
        {"name": "tcp-443", "port": 443, "protocol": "TCP"},
    ]
    web = {m["kind"]: m for m in out if m["metadata"]["name"] == "web-ext"}
    assert web["Service"]["spec"] == {"clusterIP": "None", "ports": web_ports}
    assert "selector" not in web["Service"]["spec"]  # so Kubernetes leaves the Endpoints be
    assert web["Endpoints"]["subsets"] == [
        {"addresses": [{"ip": "100.65.0.5"}], "ports": web_ports}
    ]
    api = next(m for m in out if m["kind"] == "Endpoints" and m["metadata"]["name"] == "api-ext")
    assert api["subsets"][0]["addresses"] == [{"ip": "100.65.0.6"}]


def test_from_facts_builds_what_ext_service_builds_from_the_spec() -> None:
    svc = LbServiceSpec(
        organization="acme", project="shop", name="web", bind_on_default_gw_eip=True,
        ports=[ServicePort(port=443, target_port=8443), ServicePort(port=80, target_port=8080)],
    )  # fmt: skip
    out = dns.from_facts(SPEC, facts(lb("web", "100.65.0.5", (80, "TCP", True),
                                         (443, "TCP", True))))  # fmt: skip
    assert out[1:] == dns.ext_service(SPEC, svc, "100.65.0.5")


def test_vpc_dns_is_ready_on_status_active_and_core_objects_once_stored() -> None:
    vpc_dns = dns.vpc_dns(SPEC)
    assert not_ready(vpc_dns) == "VpcDns acme-shop: status.active is not true"
    assert not_ready({**vpc_dns, "status": {"active": False}}) is not None
    assert not_ready({**vpc_dns, "status": {"active": True}}) is None
    service, endpoints = dns.ext_service(
        SPEC,
        LbServiceSpec(organization="acme", project="shop", name="web",
                      bind_on_default_gw_eip=True, ports=[ServicePort(port=80, target_port=80)]),
        "100.65.0.5",
    )  # fmt: skip
    assert not_ready(service) is None and not_ready(endpoints) is None


def test_server_defaults_are_no_drift_but_a_changed_address_is() -> None:
    out = dns.from_facts(SPEC, facts(lb("web", "100.65.0.5", (80, "TCP", True))))
    service, endpoints = out[1], out[2]
    defaults = {"type": "ClusterIP", "sessionAffinity": "None", "clusterIPs": ["None"]}
    defaulted = {**service, "spec": {**service["spec"], **defaults}}
    assert not core_differs(defaulted, service)
    assert not core_differs(endpoints, endpoints)
    moved = {**endpoints, "subsets": [{**endpoints["subsets"][0],
                                       "addresses": [{"ip": "100.65.0.9"}]}]}  # fmt: skip
    assert core_differs(moved, endpoints)
    other_port = {**service, "spec": {"clusterIP": "None", "ports": []}}
    assert core_differs(other_port, service)
