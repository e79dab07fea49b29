"""Project DNS with real packets: names resolve inside their project and nowhere else.

One ``vpcbus up`` for the module, driven only through the CLI. Two projects share
10.0.0.0/24: acme/dns with VMs ``a`` and ``b`` and a LoadBalancer service ``web`` (backend
``b``, on an EIP of its own), and beta/dns with a VM ``a`` of its own. The VMs' resolv.conf
comes from the DNS service's status: the stand-in upstream resolvers (8.8.8.8, 1.1.1.1 on
the fake internet) and the project's search list. Queries are made inside the VMs with the
system resolver (glibc, ``getent``) and with ``dig``; OVN answers the zone from the chassis,
the upstream everything else.

Proven: A's VM resolves A's workload, service, ``-ext`` and gateway names (short and full,
``getent hosts`` with A+AAAA included) and an upstream name; B's VM, with the same address,
resolves none of A's names but its own; ``dig`` gets OVN's answer without EDNS and the
upstream's NXDOMAIN with it (OVN 23.03 leaves EDNS queries alone); ``vpcbus dns list|resolve``
show the same; moving the service to another EIP changes ``web-ext``, deleting it removes both
names, deleting a project removes its zone from NB.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.datapath import hosts, stackcli
from tests.datapath.stackcli import Cli

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.slow,  # one `vpcbus up` for the module
    pytest.mark.skipif(
        os.geteuid() != 0, reason="datapath tests need root (network namespaces, veths)"
    ),
]

PREFIX = f"vd{os.getpid() % 10000}"
CIDR, GATEWAY = "10.0.0.0/24", "10.0.0.1"
A, B = "acme/dns", "beta/dns"
ZONE_A, ZONE_B = "acme-dns.svc.cluster.local", "beta-dns.svc.cluster.local"
TOOLS = ("ip", "ethtool", "ovs-vswitchd", "ovn-northd", "ovn-controller", "getent", "dig")


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    hosts.skip_unless_usable(PREFIX, TOOLS)
    c = stackcli.for_module(tmp_path_factory.mktemp("dns") / "home", PREFIX)
    try:
        stackcli.up(c, (A, B), CIDR, (f"{A}/a", f"{A}/b", f"{B}/a"))
        c.ok("svc", "create", "-p", A, "web", "--port", "80", "--selector", "vm=b")
        yield c
    finally:
        c.run("down", timeout=120)
    assert stackcli.our_netns(PREFIX) == []


def _in(cli: Cli, project: str, vm: str, *cmd: str) -> tuple[int, str]:
    done = cli.run("vm", "exec", "-p", project, vm, "--", *cmd)
    return done.returncode, done.stdout


def getent(cli: Cli, project: str, vm: str, name: str) -> list[str]:
    """The addresses glibc resolves ``name`` to in the VM (``getent hosts``: A and AAAA
    queries, the search list); [] when not found."""
    code, out = _in(cli, project, vm, "getent", "hosts", name)
    return sorted(line.split()[0] for line in out.splitlines()) if code == 0 else []


def dig(cli: Cli, project: str, vm: str, *args: str) -> tuple[str, list[str]]:
    """``(status, answers)`` of ``dig`` in the VM, e.g. ("NOERROR", ["10.0.0.3"])."""
    code, out = _in(cli, project, vm, "dig", "+tries=1", "+time=2", *args)
    assert code in (0, 9), f"dig failed ({code}): {out}"  # 9: no reply
    status = next((ln.split("status: ")[1].split(",")[0] for ln in out.splitlines()
                   if "status: " in ln), "NOREPLY")  # fmt: skip
    answers = [ln.split()[-1] for ln in out.splitlines()
               if ln and not ln.startswith(";") and " IN A " in ln.replace("\t", " ")]  # fmt: skip
    return status, sorted(answers)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _ip(cli: Cli, project: str, vm: str) -> str:
    return cli.workloads(project)[vm].ip_address


def _ingress(cli: Cli, project: str, service: str) -> str:
    facts = cli.ipam(project).addresses
    assert facts is not None
    svc = facts.service(service)
    assert svc is not None and svc.ready and svc.ingress_ip
    return svc.ingress_ip


def test_vms_name_the_upstream_resolvers_and_the_project_search_list(cli: Cli) -> None:
    netns = cli.vms()[(A, "a")]["NAMESPACE"]
    resolv = (Path("/etc/netns") / netns / "resolv.conf").read_text().splitlines()
    assert resolv == [
        "nameserver 8.8.8.8",
        "nameserver 1.1.1.1",
        f"search {ZONE_A} svc.cluster.local cluster.local",
        "options timeout:1 attempts:1",
    ]


def test_a_vm_resolves_its_projects_names_with_the_system_resolver(cli: Cli) -> None:
    b = _ip(cli, A, "b")
    assert getent(cli, A, "a", f"b.{ZONE_A}") == [b]
    assert getent(cli, A, "a", "b") == [b], "the short name, through the search list"
    assert getent(cli, A, "a", "web") == [b], "a service answers with its endpoints"
    assert getent(cli, A, "a", "web-ext") == [_ingress(cli, A, "web")]
    assert getent(cli, A, "a", "gateway") == [GATEWAY]
    assert getent(cli, A, "a", "dns.google") == ["8.8.8.8"], "other names go upstream"
    assert getent(cli, A, "a", "nosuch") == []


def test_dig_gets_the_zone_from_ovn_and_other_names_from_upstream(cli: Cli) -> None:
    b = _ip(cli, A, "b")
    assert dig(cli, A, "a", "+noedns", f"b.{ZONE_A}") == ("NOERROR", [b])
    assert dig(cli, A, "a", "+noedns", "@1.1.1.1", f"web.{ZONE_A}") == ("NOERROR", [b])
    assert dig(cli, A, "a", "dns.google") == ("NOERROR", ["8.8.8.8"])  # EDNS0 is fine upstream
    # OVN 23.03 does not answer EDNS0 queries: they reach the upstream, which knows no zone
    assert dig(cli, A, "a", f"b.{ZONE_A}") == ("NXDOMAIN", [])


def test_another_project_resolves_none_of_its_names_but_its_own(cli: Cli) -> None:
    assert _ip(cli, B, "a") == _ip(cli, A, "a"), "the two projects' spaces overlap"
    for name in (f"b.{ZONE_A}", f"web.{ZONE_A}", f"web-ext.{ZONE_A}", f"a.{ZONE_A}"):
        assert getent(cli, B, "a", name) == [], name
        assert dig(cli, B, "a", "+noedns", name)[0] == "NXDOMAIN", name
    assert getent(cli, B, "a", "b") == [], "A's b is no short name in B"
    assert getent(cli, B, "a", f"a.{ZONE_B}") == [_ip(cli, B, "a")]
    assert getent(cli, A, "a", f"a.{ZONE_B}") == [], "nor B's names in A"


def test_dns_list_and_resolve_show_what_the_switch_answers(cli: Cli) -> None:
    zone = json.loads(cli.ok("dns", "list", "-p", A, "-o", "json"))
    records = {r["name"]: (r["source"], r["owner"], r["addresses"]) for r in zone["records"]}
    b = _ip(cli, A, "b")
    assert records == {
        f"gateway.{ZONE_A}": ("gateway", "router", [GATEWAY]),
        f"a.{ZONE_A}": ("workload", "vm/a", [_ip(cli, A, "a")]),
        f"b.{ZONE_A}": ("workload", "vm/b", [b]),
        f"web.{ZONE_A}": ("service", "service/web", [b]),
        f"web-ext.{ZONE_A}": ("service-ext", "service/web", [_ingress(cli, A, "web")]),
    }
    assert zone["resolver"]["nameservers"] == ["8.8.8.8", "1.1.1.1"]
    table = cli.ok("dns", "list", "-p", A)
    assert f"zone {ZONE_A}: 5 names" in table and "service-ext" in table
    answer = cli.ok("dns", "resolve", "-p", A, "web").split()
    assert answer == [f"web.{ZONE_A}", "A", b, "(service", "service/web)"]
    missing = cli.run("dns", "resolve", "-p", A, "dns.google")
    assert missing.returncode == 1 and "8.8.8.8, 1.1.1.1" in missing.stderr
    unknown = cli.run("dns", "list", "-p", "nobody/here")
    assert unknown.returncode == 1 and "not served" in unknown.stdout


def test_names_follow_the_service_and_the_project_lifecycle(cli: Cli) -> None:
    before = _ingress(cli, A, "web")
    cli.ok("eip", "create", "-p", A, "moved")
    cli.ok("svc", "create", "-p", A, "web", "--port", "80", "--selector", "vm=b",
           "--bind-eip", "moved")  # fmt: skip
    after = _ingress(cli, A, "web")
    assert after != before
    assert eventually(lambda: getent(cli, A, "a", "web-ext") == [after])

    cli.ok("svc", "delete", "-p", A, "web")
    assert eventually(lambda: getent(cli, A, "a", "web-ext") == [])
    assert getent(cli, A, "a", "web") == []
    served = json.loads(cli.ok("dns", "list", "-p", A, "-o", "json"))["records"]
    assert {r["source"] for r in served} == {"gateway", "workload"}

    cli.ok("vm", "delete", B, "a")
    cli.ok("project", "delete", B, "--wait", "--timeout", "60")
    dns_rows = cli.nbctl("--bare", "--columns=external_ids", "list", "DNS")
    assert "beta.dns" not in dns_rows and "acme.dns" in dns_rows
    assert cli.run("dns", "list", "-p", B).returncode == 1
