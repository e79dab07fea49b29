"""The Kube-OVN manifest layer (vpcbus_kubeovn): every object validates against Kube-OVN's own
CRD schemas (the strict copies in tests/data/kubeovn-crds), carries valid names and the
ownership labels, references only objects applied before it, and a sample project matches
its golden file (``VPCBUS_REGENERATE_GOLDEN=1`` rewrites it)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpcbus_kubeovn import (
    APPLY_ORDER,
    DELETION_ORDER,
    apply_sorted,
    deletion_sorted,
    dns,
    manifests,
    nat,
    vpc,
)
from vpcbus_kubeovn.meta import is_object_name, is_service_name
from vpcbus_proto import names
from vpcbus_proto.members import EipSpec, FipSpec, LbServiceSpec, ServicePort, VmTarget
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts, ExternalAddress, FloatingIp, LoadBalancer, PortState

DATA = Path(__file__).resolve().parents[1] / "data"
SCHEMAS = DATA / "kubeovn-crds"
NAD_SCHEMA = DATA / "multus-crds" / "NetworkAttachmentDefinition.json"
GOLDEN = DATA / "kubeovn-golden" / "acme-shop.yaml"
CORE = {"Service", "Endpoints"}
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

SPEC = ProjectSpec(
    organization="acme", name="shop", cidr_block="10.0.0.0/24", egress_network_type="cloud"
)


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    path = NAD_SCHEMA if kind == "NetworkAttachmentDefinition" else SCHEMAS / f"{kind}.json"
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def check(objects: list[dict[str, Any]], spec: ProjectSpec) -> None:
    """Everything a manifest stream must be, whatever the inputs."""
    seen: set[tuple[str, str]] = set()
    applied: dict[str, set[str]] = {}
    for m in objects:
        kind, meta = m["kind"], m["metadata"]
        name = meta["name"]
        assert (kind, name) not in seen, f"{kind}/{name} twice"
        seen.add((kind, name))
        labels = meta["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "vpcbus"
        assert labels["vpcbus.io/project"] == f"{spec.organization}.{spec.name}"
        assert labels["vpcbus.io/owner"] in {"vpc", "nat", "dns"}
        assert all(len(v) <= 63 and _LABEL_VALUE.fullmatch(v) for v in labels.values())
        if kind in CORE:
            assert m["apiVersion"] == "v1" and meta["namespace"] == spec.namespace
            assert is_service_name(name), name
            assert labels["vpcbus.io/owner"] == "dns"
        elif kind == "NetworkAttachmentDefinition":
            assert not list(validator(kind).iter_errors(m))
            assert (name, meta["namespace"]) == ("default", spec.namespace)
            assert labels["vpcbus.io/owner"] == "vpc"
            # Kube-OVN's CNI serving attachment N/default (provider <nad>.<namespace>.ovn).
            config = json.loads(m["spec"]["config"])
            assert config["type"] == "kube-ovn"
            assert config["provider"] == f"default.{spec.namespace}.ovn"
            assert config["server_socket"] == "/run/openvswitch/kube-ovn-daemon.sock"
        else:
            errors = [e.message for e in validator(kind).iter_errors(m)]
            assert not errors, f"{kind}/{name}: {errors}"
            assert m["apiVersion"] == "kubeovn.io/v1" and "namespace" not in meta
            assert is_object_name(name), name
            _check_refs(m, applied)
        applied.setdefault(kind, set()).add(name)
    kinds = [m["kind"] for m in objects]
    assert set(kinds) <= set(DELETION_ORDER)
    assert kinds == sorted(kinds, key=APPLY_ORDER.index), "not in apply order"


def _check_refs(m: dict[str, Any], applied: dict[str, set[str]]) -> None:
    """Each reference names an object of the stream that comes before it."""
    spec = m["spec"]
    refs = [("Vpc", spec.get("vpc")), ("OvnEip", spec.get("ovnEip"))]
    if m["kind"] != "Vpc":
        refs.append(("Subnet", spec.get("vpcSubnet") or spec.get("subnet")))
    for kind, ref in refs:
        if ref is not None:
            assert ref in applied.get(kind, set()), f"{m['kind']} refers to {kind}/{ref} first"


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in objects if m["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [m for m in objects if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def eip(name: str, network: str | None = None) -> EipSpec:
    return EipSpec(organization="acme", project="shop", name=name, external_network_type=network)


def fip(name: str, **kw: Any) -> FipSpec:
    return FipSpec(organization="acme", project="shop", name=name, **kw)


def svc(name: str, *ports: tuple[int, int, str], **kw: Any) -> LbServiceSpec:
    return LbServiceSpec(
        organization="acme",
        project="shop",
        name=name,
        ports=[ServicePort(port=p, target_port=t, protocol=pr) for p, t, pr in ports],
        **kw,
    )


def sample() -> list[dict[str, Any]]:
    """The golden project: every kind and option."""
    return manifests(
        SPEC.model_copy(update={"gw_lan_ip": "10.0.0.254"}),
        gateway_ip="100.65.0.1",
        exclude_ips=["10.0.0.200..10.0.0.210", "10.0.0.5"],
        eips=[eip("web"), eip("db", "public")],
        fips=[
            fip("ssh", vm_target=VmTarget(vm_name="ubuntu")),
            fip("api", ip_address="10.0.0.9", eip="db"),
        ],
        services=[
            svc(
                "shop", (80, 8080, "TCP"), (443, 8443, "TCP"), endpoints=["10.0.0.12", "10.0.0.11"]
            ),
            svc("dns", (53, 53, "UDP"), vm_selector="resolver", bind_on_default_gw_eip=True),
            svc("cache", (6379, 6379, "TCP"), endpoints=["10.0.0.20"], bind_on_eip="web"),
        ],
        addresses={
            "acme-shop-ext-cloud": "100.65.0.10",
            "acme-shop-eip-web": "100.65.0.11",
            "acme-shop-slb-shop": "100.65.0.12",
        },
    )


def test_minimal_project_is_kube_dc_shape() -> None:
    """Kube-DC's objects for a cloud project: Vpc N, Subnet N-default, OvnEip N-ext-cloud on
    ext-cloud, NAD N/default, OvnSnatRule N on it, VpcDns N."""
    objects = manifests(SPEC)
    check(objects, SPEC)
    assert [(m["kind"], m["metadata"]["name"]) for m in objects] == [
        ("OvnEip", "acme-shop-ext-cloud"),
        ("Vpc", "acme-shop"),
        ("Subnet", "acme-shop-default"),
        ("NetworkAttachmentDefinition", "default"),
        ("VpcDns", "acme-shop"),
        ("OvnSnatRule", "acme-shop"),
    ]
    v = objects[1]["spec"]
    assert v["namespaces"] == ["acme-shop"] and "staticRoutes" not in v
    assert v["enableExternal"] is True and v["extraExternalSubnets"] == ["ext-cloud"]
    s = objects[2]["spec"]
    assert (s["vpc"], s["cidrBlock"], s["gateway"]) == ("acme-shop", "10.0.0.0/24", "10.0.0.1")
    assert s["excludeIps"] == ["10.0.0.1"] and s["namespaces"] == ["acme-shop"]
    assert (s["protocol"], s["provider"]) == ("IPv4", "ovn")
    assert objects[0]["spec"] == {"externalSubnet": "ext-cloud", "type": "lrp"}
    assert objects[5]["spec"] == {"ovnEip": "acme-shop-ext-cloud", "vpcSubnet": "acme-shop-default"}
    assert objects[4]["spec"] == {"vpc": "acme-shop", "subnet": "acme-shop-default"}


def test_gateway_public_egress_and_lan_gateway() -> None:
    spec = SPEC.model_copy(update={"egress_network_type": "public", "gw_lan_ip": "10.0.0.254"})
    objects = manifests(spec, gateway_ip="100.66.0.1", exclude_ips=["10.0.0.7..10.0.0.9"])
    check(objects, spec)
    assert one(objects, "Vpc", "acme-shop")["spec"]["staticRoutes"] == [
        {"cidr": "0.0.0.0/0", "nextHopIP": "100.66.0.1", "policy": "policyDst"}
    ]
    assert one(objects, "Vpc", "acme-shop")["spec"]["extraExternalSubnets"] == ["ext-public"]
    sub = one(objects, "Subnet", "acme-shop-default")["spec"]
    assert sub["gateway"] == "10.0.0.254"
    assert sub["excludeIps"] == ["10.0.0.7..10.0.0.9", "10.0.0.254"]
    gw = one(objects, "OvnEip", "acme-shop-ext-public")
    assert gw["spec"]["externalSubnet"] == "ext-public"
    assert one(objects, "OvnSnatRule", "acme-shop")["spec"]["ovnEip"] == "acme-shop-ext-public"


def test_exclude_ips_sorted_deduplicated_and_checked() -> None:
    got = vpc.exclude_ranges(SPEC, ["10.0.0.9", "10.0.0.3..10.0.0.4", "10.0.0.9", "10.0.0.1"])
    assert got == ["10.0.0.1", "10.0.0.3..10.0.0.4", "10.0.0.9"]
    assert vpc.exclude_ranges(SPEC, ["10.0.0.5..10.0.0.5"]) == ["10.0.0.1", "10.0.0.5"]
    for bad, words in [
        ("10.0.1.1", "outside cidrBlock"),
        ("10.0.0.9..10.0.0.3", "ends before it starts"),
        ("nope", "not an IPv4 address"),
        ("10.0.0.3..", "not an IPv4 address"),
    ]:
        with pytest.raises(ValueError, match=words):
            manifests(SPEC, exclude_ips=[bad])
    with pytest.raises(ValueError, match="gateway 'x' is not an IPv4"):
        manifests(SPEC, gateway_ip="x")


def test_eips_fips_and_pinned_addresses() -> None:
    objects = manifests(
        SPEC,
        eips=[eip("web"), eip("db", "public")],
        fips=[
            fip("ssh", vm_target=VmTarget(vm_name="ubuntu", interface_name="net2")),
            fip("api", ip_address="10.0.0.9", eip="web"),
            fip("own", ip_address="10.0.0.10", external_network_type="public"),
        ],
        addresses={"acme-shop-eip-web": "100.65.0.11", "acme-shop-ext-cloud": "100.65.0.10"},
    )
    check(objects, SPEC)
    assert one(objects, "OvnEip", "acme-shop-eip-web")["spec"] == {
        "externalSubnet": "ext-cloud", "type": "nat", "v4Ip": "100.65.0.11"
    }  # fmt: skip
    assert one(objects, "OvnEip", "acme-shop-ext-cloud")["spec"]["v4Ip"] == "100.65.0.10"
    assert one(objects, "OvnEip", "acme-shop-eip-db")["spec"]["externalSubnet"] == "ext-public"
    # A FIP without a user EIP has its own OvnEip of its own name; one with a user EIP none.
    assert one(objects, "OvnEip", "acme-shop-fip-ssh")["spec"]["externalSubnet"] == "ext-cloud"
    assert one(objects, "OvnEip", "acme-shop-fip-own")["spec"]["externalSubnet"] == "ext-public"
    assert not [m for m in by_kind(objects, "OvnEip") if m["metadata"]["name"].endswith("-api")]
    assert one(objects, "OvnFip", "acme-shop-fip-ssh")["spec"] == {
        "ovnEip": "acme-shop-fip-ssh", "ipName": "ubuntu.acme-shop.net2"
    }  # fmt: skip
    assert one(objects, "OvnFip", "acme-shop-fip-api")["spec"] == {
        "ovnEip": "acme-shop-eip-web", "vpc": "acme-shop", "v4Ip": "10.0.0.9"
    }  # fmt: skip


def test_load_balancer_services_become_dnat_rules_per_port() -> None:
    objects = manifests(
        SPEC,
        eips=[eip("web")],
        services=[
            svc("shop", (443, 8443, "TCP"), (80, 8080, "TCP"), endpoints=["10.0.0.12", "10.0.0.2"]),
            svc("dns", (53, 5353, "UDP"), vm_selector="resolver", bind_on_default_gw_eip=True),
            svc("cache", (6379, 6379, "TCP"), endpoints=["10.0.0.20"], bind_on_eip="web"),
            svc("idle", (80, 80, "TCP")),
        ],
        addresses={"acme-shop-slb-shop": "100.65.0.12", "acme-shop-eip-web": "100.65.0.11"},
    )
    check(objects, SPEC)
    dnat = {m["metadata"]["name"]: m["spec"] for m in by_kind(objects, "OvnDnatRule")}
    assert sorted(dnat) == [
        "acme-shop-svc-cache-tcp-6379",
        "acme-shop-svc-dns-udp-53",
        "acme-shop-svc-shop-tcp-443",
        "acme-shop-svc-shop-tcp-80",
    ]
    # Several endpoints: the lowest address (numerically, not as text).
    assert dnat["acme-shop-svc-shop-tcp-80"] == {
        "ovnEip": "acme-shop-slb-shop", "protocol": "tcp", "externalPort": "80",
        "internalPort": "8080", "vpc": "acme-shop", "v4Ip": "10.0.0.2",
    }  # fmt: skip
    assert dnat["acme-shop-svc-dns-udp-53"] == {
        "ovnEip": "acme-shop-ext-cloud", "protocol": "udp", "externalPort": "53",
        "internalPort": "5353", "ipName": "resolver.acme-shop",
    }  # fmt: skip
    assert dnat["acme-shop-svc-cache-tcp-6379"]["ovnEip"] == "acme-shop-eip-web"
    # Own EIP only for the unbound services (idle has one but no rule: no backend).
    own = {m["metadata"]["name"] for m in by_kind(objects, "OvnEip")} - {
        "acme-shop-ext-cloud", "acme-shop-eip-web"
    }  # fmt: skip
    assert own == {"acme-shop-slb-shop", "acme-shop-slb-idle"}
    # -ext companions only where the address is known: shop (own EIP) and cache (web).
    services = {m["metadata"]["name"]: m for m in by_kind(objects, "Service")}
    assert sorted(services) == ["cache-ext", "shop-ext"]
    assert services["shop-ext"]["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in services["shop-ext"]["spec"]["ports"]] == [80, 443]
    ep = one(objects, "Endpoints", "shop-ext")
    assert ep["subsets"][0]["addresses"] == [{"ip": "100.65.0.12"}]
    assert [p["name"] for p in ep["subsets"][0]["ports"]] == ["tcp-80", "tcp-443"]


def test_ext_companion_needs_a_service_name() -> None:
    long = "a" * 62
    with pytest.raises(ValueError, match="no valid -ext companion"):
        dns.ext_service(SPEC, svc(long, (80, 80, "TCP")), "100.65.0.9")
    with pytest.raises(ValueError, match="no valid -ext companion"):
        dns.ext_name("9lives")


def test_members_of_another_project_are_refused() -> None:
    other = EipSpec(organization="acme", project="other", name="web")
    with pytest.raises(ValueError, match=r"eip\.web belongs to acme\.other"):
        manifests(SPEC, eips=[other])


def test_owners_per_slice_and_deletion_order() -> None:
    objects = sample()
    owners = {m["kind"]: m["metadata"]["labels"]["vpcbus.io/owner"] for m in objects}
    assert owners == {
        "Vpc": "vpc", "Subnet": "vpc", "OvnEip": "nat", "OvnSnatRule": "nat", "OvnFip": "nat",
        "OvnDnatRule": "nat", "VpcDns": "dns", "Service": "dns", "Endpoints": "dns",
        "NetworkAttachmentDefinition": "vpc",
    }  # fmt: skip
    assert set(owners) == set(DELETION_ORDER), "an emitted kind has no place in DELETION_ORDER"
    assert sorted(APPLY_ORDER) == sorted(DELETION_ORDER)
    # The router's external address is the VPC's: Kube-OVN uses it for the Vpc's port.
    assert (
        one(objects, "OvnEip", "acme-shop-ext-cloud")["metadata"]["labels"]["vpcbus.io/owner"]
        == "vpc"
    )
    gone = [m["kind"] for m in deletion_sorted(objects)]
    # Kube-OVN: rules before their OvnEip, the Subnet before its Vpc (reference section 2.4).
    for before, after in [("OvnSnatRule", "OvnEip"), ("OvnFip", "OvnEip"),
                          ("OvnDnatRule", "OvnEip"), ("OvnEip", "Subnet"), ("Subnet", "Vpc"),
                          ("VpcDns", "Subnet")]:  # fmt: skip
        assert max(i for i, k in enumerate(gone) if k == before) < gone.index(after)
    # The slices apply alone, each in apply order.
    slices = vpc.manifests(SPEC) + nat.manifests(SPEC) + dns.manifests(SPEC)
    assert sorted(map(json.dumps, slices)) == sorted(map(json.dumps, manifests(SPEC)))


def test_golden_sample_project() -> None:
    objects = sample()
    check(objects, SPEC.model_copy(update={"gw_lan_ip": "10.0.0.254"}))
    text = yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)
    if os.environ.get("VPCBUS_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        f"manifests differ from {GOLDEN}; if intended, rerun with VPCBUS_REGENERATE_GOLDEN=1"
    )


# -- property: any valid project renders to valid objects ------------------------------------

LABEL = st.text("abcz09-", min_size=1, max_size=20).filter(names.is_label)


@st.composite
def projects(draw: st.DrawFn) -> tuple[ProjectSpec, dict[str, Any]]:
    org = draw(st.text("abz09-", min_size=1, max_size=30).filter(names.is_label))
    name = draw(st.text("abz09-", min_size=1, max_size=63 - len(org) - 1).filter(names.is_label))
    prefix = draw(st.integers(8, 29))
    base = draw(st.sampled_from(["10.0.0.0", "172.16.0.0", "192.168.0.0", "100.64.0.0"]))
    net = ipaddress.IPv4Network(f"{base}/{prefix}", strict=False)
    hosts = int(net.num_addresses) - 2
    host = st.integers(1, hosts).map(lambda i: str(net.network_address + i))
    spec = ProjectSpec(
        organization=org,
        name=name,
        cidr_block=str(net),
        egress_network_type=draw(st.sampled_from(["cloud", "public"])),
        gw_lan_ip=draw(st.none() | host),
    )
    ref = {"organization": org, "project": name}
    eip_names = draw(st.lists(LABEL, max_size=3, unique=True))
    eips = [EipSpec(**ref, name=n, external_network_type=draw(st.none() | st.just("public")))
            for n in eip_names]  # fmt: skip
    fips = []
    for n in draw(st.lists(LABEL, max_size=3, unique=True)):
        target = draw(st.sampled_from(["ip", "vm"]))
        kw: dict[str, Any]
        if target == "ip":
            kw = {"ip_address": draw(host)}
        else:
            iface = draw(st.none() | LABEL)
            kw = {"vm_target": VmTarget(vm_name=draw(LABEL), interface_name=iface)}
        if draw(st.booleans()) and eip_names:
            kw["eip"] = draw(st.sampled_from(eip_names))
        fips.append(FipSpec(**ref, name=n, **kw))
    services = []
    for n in draw(st.lists(LABEL, max_size=3, unique=True)):
        ports = draw(st.lists(st.tuples(st.integers(1, 65535), st.sampled_from(["TCP", "UDP"])),
                              min_size=1, max_size=3, unique=True))  # fmt: skip
        binding = draw(st.sampled_from(["gw", "eip", "own"]))
        kw = {"bind_on_default_gw_eip": True} if binding == "gw" else {}
        if binding == "eip" and eip_names:
            kw["bind_on_eip"] = draw(st.sampled_from(eip_names))
        backend = draw(st.sampled_from(["endpoints", "vm", "none"]))
        if backend == "endpoints":
            kw["endpoints"] = draw(st.lists(host, min_size=1, max_size=3, unique=True))
        elif backend == "vm":
            kw["vm_selector"] = draw(LABEL)
        services.append(LbServiceSpec(
            **ref, name=n, **kw,
            ports=[ServicePort(port=p, target_port=p, protocol=pr) for p, pr in ports],
        ))  # fmt: skip
    ns = spec.namespace
    known = [vpc.gateway_eip_name(ns, spec.egress_network_type)]
    known += [nat.eip_name(ns, n) for n in eip_names] + [
        nat.service_eip_name(ns, s.name) for s in services
    ]
    addresses = {n: "100.65.0.9" for n in known if draw(st.booleans())}
    extra = {
        "gateway_ip": draw(st.none() | st.just("100.65.0.1")),
        "exclude_ips": draw(st.lists(host, max_size=3)),
        "eips": eips, "fips": fips, "services": services, "addresses": addresses,
    }  # fmt: skip
    return spec, extra


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(projects())
def test_any_project_renders_valid_manifests(project: tuple[ProjectSpec, dict[str, Any]]) -> None:
    spec, extra = project
    companions = [
        s.name for s in extra["services"]
        if nat.service_eip_ref(spec, s) in extra["addresses"]
    ]  # fmt: skip
    if any(not is_service_name(f"{n}-ext") for n in companions):
        with pytest.raises(ValueError, match="no valid -ext companion"):
            manifests(spec, **extra)
        return
    objects = manifests(spec, **extra)
    check(objects, spec)
    kinds = {m["kind"] for m in objects}
    assert {"Vpc", "Subnet", "OvnEip", "OvnSnatRule", "VpcDns"} <= kinds
    assert len(by_kind(objects, "OvnFip")) == len(extra["fips"])


# -- the NAT service's slice from IPAM's facts ----------------------------------------------


def address(name: str, ip: str, network: str = "cloud") -> ExternalAddress:
    return ExternalAddress(
        name=name, ip_address=ip, network=network, prefix_length=24,
        gateway="100.65.0.1" if network == "cloud" else "198.51.100.1", ready=bool(ip),
        ownership_type="Shared" if ip else "Released",
    )  # fmt: skip


def port(number: int, target: int, protocol: str = "TCP", ready: bool = True) -> PortState:
    return PortState(port=number, target_port=target, protocol=protocol, ready=ready)


def test_nat_from_facts_realises_ready_fips_and_ports_on_pinned_eips() -> None:
    key = "acme.shop"
    own_fip, own_slb = names.fip_eip_name(key, "db"), names.service_eip_name(key, "api")
    facts = AddressFacts(
        cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1",
        eips=[address("default-gw", "100.65.0.10"), address("web", "100.65.0.11", "public"),
              address(own_fip, "100.65.0.12"), address(own_slb, "100.65.0.13"),
              address("no-ip", "")],
        fips=[
            FloatingIp(name="db", eip=own_fip, external_ip="100.65.0.12",
                       target_ip="10.0.0.5", ready=True),
            FloatingIp(name="ssh", eip="web", external_ip="100.65.0.11",
                       target_ip="10.0.0.6", vm_name="vm1", interface="default", ready=True),
            FloatingIp(name="lost", eip="no-ip", ready=False, reason="NoAvailableIPs"),
        ],
        services=[
            LoadBalancer(name="api", eip=own_slb, ingress_ip="100.65.0.13",
                         endpoints=["10.0.0.20", "10.0.0.3"], ready=True,
                         ports=[port(443, 8443, ready=False), port(80, 8080),
                                port(53, 5353, "UDP")]),
            LoadBalancer(name="gw", eip="default-gw", ingress_ip="100.65.0.10",
                         endpoints=["10.0.0.7"], ready=True, ports=[port(8080, 80)]),
            LoadBalancer(name="empty", eip="default-gw", ingress_ip="100.65.0.10",
                         ready=True, ports=[port(9000, 9000)]),
            LoadBalancer(name="busy", eip="web", ready=False, endpoints=["10.0.0.8"],
                         ports=[port(22, 22, ready=False)], reason="EipInUse"),
        ],
    )  # fmt: skip
    slice_ = nat.from_facts(SPEC, facts)
    whole = vpc.manifests(SPEC, gateway_ip="100.65.0.1", gateway_eip_ip="100.65.0.10") + slice_
    check(apply_sorted(whole), SPEC)  # strict schemas, labels, references applied first
    assert all(m["metadata"]["labels"]["vpcbus.io/owner"] == "nat" for m in slice_)
    got = {(m["kind"], m["metadata"]["name"]): m["spec"] for m in slice_}
    assert got == {
        # An OvnEip per EIP with an address, pinned; not default-gw (the VPC's), not no-ip.
        ("OvnEip", "acme-shop-eip-web"):
            {"externalSubnet": "ext-public", "type": "nat", "v4Ip": "100.65.0.11"},
        ("OvnEip", "acme-shop-fip-db"):
            {"externalSubnet": "ext-cloud", "type": "nat", "v4Ip": "100.65.0.12"},
        ("OvnEip", "acme-shop-slb-api"):
            {"externalSubnet": "ext-cloud", "type": "nat", "v4Ip": "100.65.0.13"},
        ("OvnSnatRule", "acme-shop"):
            {"ovnEip": "acme-shop-ext-cloud", "vpcSubnet": "acme-shop-default"},
        ("OvnFip", "acme-shop-fip-db"):
            {"ovnEip": "acme-shop-fip-db", "vpc": "acme-shop", "v4Ip": "10.0.0.5"},
        ("OvnFip", "acme-shop-fip-ssh"):
            {"ovnEip": "acme-shop-eip-web", "vpc": "acme-shop", "v4Ip": "10.0.0.6"},
        # Ready ports only, to the lowest endpoint; none for a service without endpoints.
        ("OvnDnatRule", "acme-shop-svc-api-tcp-80"):
            {"ovnEip": "acme-shop-slb-api", "protocol": "tcp", "externalPort": "80",
             "internalPort": "8080", "vpc": "acme-shop", "v4Ip": "10.0.0.3"},
        ("OvnDnatRule", "acme-shop-svc-api-udp-53"):
            {"ovnEip": "acme-shop-slb-api", "protocol": "udp", "externalPort": "53",
             "internalPort": "5353", "vpc": "acme-shop", "v4Ip": "10.0.0.3"},
        ("OvnDnatRule", "acme-shop-svc-gw-tcp-8080"):
            {"ovnEip": "acme-shop-ext-cloud", "protocol": "tcp", "externalPort": "8080",
             "internalPort": "80", "vpc": "acme-shop", "v4Ip": "10.0.0.7"},
    }  # fmt: skip


def test_nat_from_facts_names_only_ipams_own_eips_after_their_owner() -> None:
    """A user EIP whose name merely looks like a FIP's own (``fip-<fip>-xxxxx``) stays a user
    EIP: only the exact name IPAM derives makes it the FIP's."""
    lookalike = "fip-db-00000"
    assert lookalike != names.fip_eip_name("acme.shop", "db")
    facts = AddressFacts(
        cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1",
        eips=[address("default-gw", "100.65.0.10"), address(lookalike, "100.65.0.14")],
        fips=[FloatingIp(name="db", eip=lookalike, external_ip="100.65.0.14",
                         target_ip="10.0.0.5", ready=True)],
    )  # fmt: skip
    refs = nat.ovn_eip_names(SPEC, facts)
    assert refs == {"default-gw": "acme-shop-ext-cloud", lookalike: f"acme-shop-eip-{lookalike}"}
    rule = one(nat.from_facts(SPEC, facts), "OvnFip", "acme-shop-fip-db")
    assert rule["spec"]["ovnEip"] == f"acme-shop-eip-{lookalike}"
