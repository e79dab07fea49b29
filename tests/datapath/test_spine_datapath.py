"""The spine's VPCs carry real packets (userspace OVS chassis, network-namespace VMs).

The four services run as real processes against a real OVN central and build two projects
with the SAME CIDR 10.0.0.0/24: A = ``acme/web`` and B = ``beta/web``. Nothing here writes the
topology by hand except the VM ports: IPAM does not allocate VM addresses yet (a later
issue), so each VM's logical switch port is added to ``<N>-default`` with ``ovn-nbctl`` and a
network namespace is plugged in as that port. The fake internet host sits on the ``cloud``
external network exactly as ``vpcbus up`` wires it (100.65.0.1/16, the pool's gateway, and
8.8.8.8), and runs a small TCP/UDP server that records every peer address it sees.

Proven with packets: a VM in A pings another VM in A (and its TCP reaches A's VM, not B's VM
at the same address); A's VMs reach the internet host, which sees A's EIP as the source; B's
VM reaches it as B's EIP; B's VM cannot reach A's VMs. A floating IP on B's VM takes inbound
TCP and UDP from the internet host and from A (arriving as A's EIP), and the VM's outbound
traffic leaves from it; B's default-gw EIP takes no inbound connection. LoadBalancer services
on B's default-gw EIP and on their own EIP take TCP and UDP to b1 from both, on the declared
ports only.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcs
from tests.datapath import hosts, peers
from tests.integration import helpers
from vpcbus import stack as vpcbus_stack
from vpcbus.client import Client, Statuses, member_at
from vpcbus.embedded import procs
from vpcbus.embedded.chassis import Chassis, Vm
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto.members import FipRef, FipSpec, LbServiceRef, LbServiceSpec, ServicePort

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="datapath tests need root (network namespaces, veths)"
    ),
]

# Distinct from test_embedded_chassis.py's "vt<pid>" prefix: namespaces never clash.
PREFIX = f"vs{os.getpid() % 10000}"
CHASSIS_NAME = f"{PREFIX}-gw"
CIDR, GATEWAY = "10.0.0.0/24", "10.0.0.1"
INTERNET_HOST = "8.8.8.8"
PORT = 7777
TOOLS = ("ip", "ethtool", "ping", "ovsdb-server", "ovs-vswitchd", "ovn-controller")


@dataclass(frozen=True)
class Project:
    org: str
    name: str
    eip: str

    @property
    def namespace(self) -> str:
        return f"{self.org}-{self.name}"

    @property
    def switch(self) -> str:
        return f"{self.namespace}-default"


@dataclass(frozen=True)
class Datapath:
    ovn: OvnCentral
    chassis: Chassis
    a: Project
    b: Project
    vms: dict[str, Vm]
    servers: dict[str, peers.Server]


# VM name -> (project key, MAC, IP). b1 deliberately reuses a1's address.
VMS = {
    "a1": ("a", "02:aa:00:00:00:10", "10.0.0.10"),
    "a2": ("a", "02:aa:00:00:00:11", "10.0.0.11"),
    "b1": ("b", "02:bb:00:00:00:10", "10.0.0.10"),
}


@pytest.fixture(scope="module")
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    """Pin the gateway routers to this module's chassis, as ``vpcbus up`` does."""
    return {**service_env, "VPCBUS_GATEWAY_CHASSIS": CHASSIS_NAME}


@pytest.fixture(scope="module", autouse=True)
def _usable() -> None:
    """Skip before any server or service starts when this host cannot run the chassis."""
    hosts.skip_unless_usable(PREFIX, TOOLS)


async def _create_projects(nats_url: str) -> tuple[Project, Project]:
    client = await Client.connect(nats_url, name="vpcbus-datapath-tests")
    try:
        await client.ensure_streams()
        made = []
        for org in ("acme", "beta"):
            statuses = await helpers.create_ready(client, helpers.spec(org, "web", CIDR))
            facts = statuses["ipam"].addresses
            assert facts is not None and facts.cidr_block == CIDR
            assert facts.gateway_ip == GATEWAY
            eip = facts.eip("default-gw")
            assert eip is not None and eip.network == "cloud"
            made.append(Project(org, "web", eip.ip_address))
        return made[0], made[1]
    finally:
        await client.close()


def _plug_vm(ovn: OvnCentral, chassis: Chassis, project: Project, name: str) -> Vm:
    """A VM port added by hand: IPAM does not allocate VM addresses yet (a later issue)."""
    _, mac, ip = VMS[name]
    lsp = f"{project.namespace}-{name}"
    ovn.nbctl("lsp-add", project.switch, lsp, "--", "lsp-set-addresses", lsp, f"{mac} {ip}")
    prefix_len = CIDR.split("/")[1]
    return chassis.add_vm(name, lsp, mac, f"{ip}/{prefix_len}", GATEWAY)


def _warm_up(vm: Vm, ip: str) -> None:
    # The first packet through a gateway router makes it ARP for 100.65.0.1; OVN 23.03 drops
    # the packets that follow until the learned MAC_Binding's flows are in (a TCP handshake
    # then stalls ~1 s on a retransmission). Pings settle ARP/MAC learning before the checks.
    assert procs.wait_until(lambda: vm.ping(ip, timeout_s=1), timeout=10), f"{vm.name} -> {ip}"


@pytest.fixture(scope="module")
def datapath(
    services: ServiceProcs,
    service_env: dict[str, str],
    ovn: OvnCentral,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Datapath]:
    chassis = Chassis(
        tmp_path_factory.mktemp("chassis"), ovn.sb_db, name=CHASSIS_NAME, prefix=PREFIX
    )
    servers: dict[str, peers.Server] = {}
    try:
        chassis.start()
        a, b = asyncio.run(_create_projects(service_env["NATS_URL"]))
        by_key = {"a": a, "b": b}
        vms = {name: _plug_vm(ovn, chassis, by_key[key], name) for name, (key, *_) in VMS.items()}
        vms["inet"] = chassis.add_external_host(
            vpcbus_stack.INTERNET_HOST,
            "cloud",
            vpcbus_stack.INTERNET_ADDRESSES,
            mac=vpcbus_stack.INTERNET_MAC,
        )
        ovn.wait_hv(timeout=10)
        for name in ("a1", "a2", "b1"):
            _warm_up(vms[name], INTERNET_HOST)
        logdir = tmp_path_factory.mktemp("peers")
        servers["inet"] = peers.start_server(vms["inet"], "inet", INTERNET_HOST, PORT, logdir)
        for name, (_, _, ip) in VMS.items():
            servers[name] = peers.start_server(vms[name], name, ip, PORT, logdir)
        yield Datapath(ovn, chassis, a, b, vms, servers)
    finally:
        for server in servers.values():
            server.stop()
        chassis.stop()
    assert chassis.owned_netns() == []
    assert not list(Path("/etc/netns").glob(f"{PREFIX}-*"))


def _ask(vm: Vm, proto: str, ip: str, wait: float = 3.0) -> subprocess.CompletedProcess[str]:
    return peers.ask(vm, proto, ip, PORT, wait)


def _answer(vm: Vm, proto: str, ip: str) -> str:
    result = _ask(vm, proto, ip)
    assert result.returncode == 0, f"{vm.name} -> {ip} ({proto}): {result.stderr}"
    return result.stdout.strip()


def test_both_projects_share_the_cidr_and_own_distinct_eips(datapath: Datapath) -> None:
    a, b = datapath.a, datapath.b
    assert a.eip != b.eip
    for project in (a, b):
        assert project.eip.startswith("100.65.")
        nat = datapath.ovn.nbctl("lr-nat-list", project.namespace)
        assert "snat" in nat and project.eip in nat and CIDR in nat
        router = datapath.ovn.nbctl("get", "Logical_Router", project.namespace, "options:chassis")
        assert router.strip('"') == CHASSIS_NAME


def test_vm_in_a_pings_another_vm_in_a(datapath: Datapath) -> None:
    a1, a2 = datapath.vms["a1"], datapath.vms["a2"]
    assert a1.ping("10.0.0.11")
    assert a2.ping("10.0.0.10")
    # Directly, with no NAT on the way; and 10.0.0.10, which is also B's b1, is A's a1 here.
    assert _answer(a1, "tcp", "10.0.0.11") == "a2 peer=10.0.0.10"
    assert _answer(a2, "tcp", "10.0.0.10") == "a1 peer=10.0.0.11"
    assert _answer(a2, "udp", "10.0.0.10") == "a1 peer=10.0.0.11"
    assert datapath.servers["b1"].peers() == []


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_internet_host_sees_a_eip_as_the_source(datapath: Datapath, proto: str) -> None:
    assert datapath.vms["a1"].ping(INTERNET_HOST)
    eip = datapath.a.eip
    assert _answer(datapath.vms["a1"], proto, INTERNET_HOST) == f"inet peer={eip}"
    assert _answer(datapath.vms["a2"], proto, INTERNET_HOST) == f"inet peer={eip}"
    peers = datapath.servers["inet"].peers()
    assert eip in peers
    assert not any(peer.startswith("10.") for peer in peers), peers


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_vm_in_b_reaches_the_internet_host_as_b_eip(datapath: Datapath, proto: str) -> None:
    assert datapath.vms["b1"].ping(INTERNET_HOST)
    answer = _answer(datapath.vms["b1"], proto, INTERNET_HOST)
    assert answer == f"inet peer={datapath.b.eip}"
    assert datapath.b.eip != datapath.a.eip


def test_vm_in_b_cannot_reach_a(datapath: Datapath) -> None:
    b1 = datapath.vms["b1"]
    assert b1.ping(GATEWAY), "B's own gateway must answer, or the next checks prove nothing"
    before = datapath.servers["a2"].peers()
    # 10.0.0.11 is a2's address in A; from B it stays on B's switch, where nobody holds it.
    assert not b1.ping("10.0.0.11", timeout_s=1)
    assert _ask(b1, "tcp", "10.0.0.11", wait=1).returncode != 0
    assert _ask(b1, "udp", "10.0.0.11", wait=1).returncode != 0
    assert datapath.servers["a2"].peers() == before
    assert b1.ping(INTERNET_HOST), "B itself still works"


# -- floating IPs (issue 4) --------------------------------------------------------------------

FIP = "b1-in"


async def _fip(nats_url: str, *, delete: bool = False) -> str:
    """Create (or delete) FIP ``b1-in`` on b1's address through the bus; returns its external
    address once NAT carries it (or, deleting, once NAT no longer does)."""
    client = await Client.connect(nats_url, name="vpcbus-datapath-tests")
    try:
        watch = await client.watch("beta", "web")
        try:
            if delete:
                await client.delete_fip(FipRef(organization="beta", project="web", name=FIP))
                await watch.until(
                    lambda st: "nat" in st and not any("dnat" in o for o in st["nat"].objects),
                    timeout=30,
                )
                return ""
            spec = FipSpec(organization="beta", project="web", name=FIP, ip_address="10.0.0.10")
            published = await client.create_fip(spec)
            done = await watch.until(member_at(spec.member, published.generation), timeout=30)
            facts = done["ipam"].addresses
            found = facts.fip(FIP) if facts else None
            assert found is not None and found.ready, done["ipam"].members
            rule = f"NAT/dnat_and_snat:10.0.0.10->{found.external_ip}"
            await watch.until(lambda st: "nat" in st and rule in st["nat"].objects, timeout=30)
            return found.external_ip
        finally:
            await watch.stop()
    finally:
        await client.close()


def test_a_fip_takes_b1_inbound_from_outside_and_from_a_and_outbound(
    datapath: Datapath, service_env: dict[str, str]
) -> None:
    a1, b1, inet = datapath.vms["a1"], datapath.vms["b1"], datapath.vms["inet"]
    assert _ask(inet, "tcp", datapath.b.eip, wait=1).returncode != 0  # no DNAT on default-gw
    fip = asyncio.run(_fip(service_env["NATS_URL"]))
    assert fip not in (datapath.a.eip, datapath.b.eip)
    assert procs.wait_until(lambda: inet.ping(fip, timeout_s=1), timeout=10), "inet -> FIP"
    for proto in ("tcp", "udp"):
        # From outside: DNAT to b1, which sees the real source (no SNAT on the way in).
        assert _answer(inet, proto, fip) == "b1 peer=100.65.0.1"
        # From project A: only through B's external address, arriving as A's EIP.
        assert _answer(a1, proto, fip) == f"b1 peer={datapath.a.eip}"
        # b1's own traffic now leaves from its FIP, not from B's default-gw EIP.
        assert _answer(b1, proto, INTERNET_HOST) == f"inet peer={fip}"
    # B's default-gw EIP still takes no inbound connection, and A still has no path to B's
    # private address.
    assert _ask(a1, "tcp", datapath.b.eip, wait=1).returncode != 0
    # b1 saw only external addresses: the upstream's and A's EIP, never a private one of A.
    assert set(datapath.servers["b1"].peers()) == {"100.65.0.1", datapath.a.eip}

    asyncio.run(_fip(service_env["NATS_URL"], delete=True))

    # NAT reports the rule gone once NB has committed; northd and ovn-controller follow.
    def gone() -> bool:
        return _ask(inet, "tcp", fip, wait=1).returncode != 0

    assert procs.wait_until(gone, timeout=10), "the deleted FIP still takes connections"
    assert _answer(b1, "tcp", INTERNET_HOST) == f"inet peer={datapath.b.eip}"


# -- LoadBalancer services (issue 4) -----------------------------------------------------------


vip_of: dict[str, str] = {}  # service -> its first TCP VIP, while it exists


async def _service(nats_url: str, spec: LbServiceSpec | None, name: str = "") -> str:
    """Create ``spec`` (or delete service ``name``) through the bus; returns its ingress
    address once NAT programs it (or, deleting, once NAT has no load balancer for it)."""
    client = await Client.connect(nats_url, name="vpcbus-datapath-tests")
    try:
        watch = await client.watch("beta", "web")
        try:
            if spec is None:
                ref = LbServiceRef(organization="beta", project="web", name=name)
                await client.delete_service(ref)
                lb = f"LB/tcp:{vip_of.pop(name)}:"

                def unprogrammed(st: Statuses) -> bool:
                    return "nat" in st and not any(o.startswith(lb) for o in st["nat"].objects)

                await watch.until(unprogrammed, timeout=30)
                return ""
            published = await client.upsert_service(spec)
            done = await watch.until(member_at(spec.member, published.generation), timeout=30)
            facts = done["ipam"].addresses
            found = facts.service(spec.name) if facts else None
            assert found is not None and found.ready, done["ipam"].members
            vip_of[spec.name] = f"{found.ingress_ip}:{spec.ports[0].port}"
            vip = f"LB/tcp:{found.ingress_ip}:{spec.ports[0].port}->"
            await watch.until(
                lambda st: "nat" in st and any(o.startswith(vip) for o in st["nat"].objects),
                timeout=30,
            )
            return found.ingress_ip
        finally:
            await watch.stop()
    finally:
        await client.close()


def _lb(name: str, port: int, **binding: Any) -> LbServiceSpec:
    return LbServiceSpec(
        organization="beta", project="web", name=name, endpoints=["10.0.0.10"],
        ports=[ServicePort(port=port, target_port=PORT),
               ServicePort(port=port, target_port=PORT, protocol="UDP")], **binding,
    )  # fmt: skip


def test_load_balancers_on_default_gw_and_on_their_own_eip_reach_b1(
    datapath: Datapath, service_env: dict[str, str]
) -> None:
    a1, inet, b = datapath.vms["a1"], datapath.vms["inet"], datapath.b
    url = service_env["NATS_URL"]
    shared = asyncio.run(_service(url, _lb("b1-shared", 8080, bind_on_default_gw_eip=True)))
    own = asyncio.run(_service(url, _lb("b1-own", 9090)))
    assert shared == b.eip and own not in (b.eip, datapath.a.eip)
    for proto in ("tcp", "udp"):
        for ip, port in ((shared, 8080), (own, 9090)):
            answer = peers.ask(inet, proto, ip, port)
            assert answer.stdout.strip() == "b1 peer=100.65.0.1", (ip, port, answer.stderr)
            # From project A: through B's EIP only, arriving as A's EIP.
            answer = peers.ask(a1, proto, ip, port)
            assert answer.stdout.strip() == f"b1 peer={datapath.a.eip}", (ip, port, answer.stderr)
    # Only the declared ports: the shared EIP's other ports take nothing.
    assert peers.ask(inet, "tcp", shared, 8081, wait=1).returncode != 0

    for name in ("b1-shared", "b1-own"):
        asyncio.run(_service(url, None, name))

    # NAT reports the LB gone once NB has committed; northd and ovn-controller follow.
    def refused() -> bool:
        return peers.ask(inet, "tcp", shared, 8080, wait=1).returncode != 0

    assert procs.wait_until(refused, timeout=10), "the deleted LB still answers"
