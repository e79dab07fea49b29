"""Egress network isolation (``VPCBUS_EGRESS_ISOLATION=true``) with real packets.

The module's own stack runs with isolation on: two projects with the same CIDR, A =
``acme/iso`` and B = ``beta/iso``, a VM in each (10.0.0.10), a FIP on each, and the internet
host on the cloud network. A project then reaches no address of the external networks but its
own EIPs and the gateway: A's VM cannot open a connection to B's FIP, while the internet
beyond the external networks and inbound connections from the gateway to its own FIP work.
The isolation is stateless: allowlisting B's FIP in A's ``egressAllowlist`` (a
``project.updated``) lets A's packets out, but B's answers to A's EIP stay dropped until B
allowlists A's EIP too; then they talk.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SERVICE_ENV
from tests.datapath import hosts, peers
from tests.integration import helpers
from vpcbus import stack as vpcbus_stack
from vpcbus.client import Client, ready_at
from vpcbus.embedded import procs
from vpcbus.embedded.chassis import Chassis, Vm
from vpcbus.embedded.natsd import NatsServer
from vpcbus.embedded.ovn import OvnCentral
from vpcbus_proto.members import FipSpec
from vpcbus_proto.projects import ProjectSpec

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="datapath tests need root (network namespaces, veths)"
    ),
]

PREFIX = f"vi{os.getpid() % 10000}"  # this module's namespaces only
CHASSIS_NAME = f"{PREFIX}-gw"
CIDR, GATEWAY, VM_IP, VM_MAC = "10.0.0.0/24", "10.0.0.1", "10.0.0.10", "02:aa:00:00:00:10"
INTERNET_HOST = "8.8.8.8"
PORT = 7777
TOOLS = ("ip", "ethtool", "ping", "ovsdb-server", "ovs-vswitchd", "ovn-controller")


@dataclass(frozen=True)
class Side:
    spec: ProjectSpec
    eip: str
    fip: str
    vm: Vm
    server: peers.Server


@dataclass(frozen=True)
class Isolated:
    a: Side
    b: Side
    inet: Vm
    nats_url: str


@pytest.fixture(scope="module")
def service_env(nats_server: NatsServer, ovn: OvnCentral) -> dict[str, str]:
    return {
        **os.environ, **SERVICE_ENV, "NATS_URL": nats_server.url, "OVN_NB_DB": ovn.nb_db,
        "VPCBUS_GATEWAY_CHASSIS": CHASSIS_NAME, "VPCBUS_EGRESS_ISOLATION": "true",
    }  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _usable() -> None:
    hosts.skip_unless_usable(PREFIX, TOOLS)


async def _project(url: str, org: str) -> tuple[ProjectSpec, str, str]:
    """The project, its default-gw EIP and the external address of FIP ``vm`` on its VM."""
    client = await Client.connect(url, name="vpcbus-isolation-tests")
    try:
        await client.ensure_streams()
        spec = helpers.spec(org, "iso", CIDR)
        statuses = await helpers.create_ready(client, spec)
        gw = statuses["ipam"].addresses.eip("default-gw")  # type: ignore[union-attr]
        assert gw is not None
        watch = await client.watch(org, "iso")
        try:
            fip = FipSpec(organization=org, project="iso", name="vm", ip_address=VM_IP)
            await client.create_fip(fip)
            done = await watch.until(
                lambda st: "ipam" in st and st["ipam"].addresses is not None
                and any(f.ready for f in st["ipam"].addresses.fips), timeout=30,
            )  # fmt: skip
            external = done["ipam"].addresses.fips[0].external_ip  # type: ignore[union-attr]
            rule = f"NAT/dnat_and_snat:{VM_IP}->{external}"
            await watch.until(lambda st: "nat" in st and rule in st["nat"].objects, timeout=30)
        finally:
            await watch.stop()
        return spec, gw.ip_address, external
    finally:
        await client.close()


@pytest.fixture(scope="module")
def isolated(
    services: object,
    service_env: dict[str, str],
    ovn: OvnCentral,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Isolated]:
    chassis = Chassis(tmp_path_factory.mktemp("chassis"), ovn.sb_db, name=CHASSIS_NAME,
                      prefix=PREFIX)  # fmt: skip
    servers: list[peers.Server] = []
    try:
        chassis.start()
        logdir = tmp_path_factory.mktemp("peers")
        sides = []
        for org, name in (("acme", "a1"), ("beta", "b1")):
            spec, eip, fip = asyncio.run(_project(service_env["NATS_URL"], org))
            lsp = f"{spec.namespace}-{name}"
            switch = f"{spec.namespace}-default"
            ovn.nbctl("lsp-add", switch, lsp, "--", "lsp-set-addresses", lsp, f"{VM_MAC} {VM_IP}")
            vm = chassis.add_vm(name, lsp, VM_MAC, f"{VM_IP}/24", GATEWAY)
            sides.append((spec, eip, fip, vm))
        inet = chassis.add_external_host(
            vpcbus_stack.INTERNET_HOST, "cloud", vpcbus_stack.INTERNET_ADDRESSES,
            mac=vpcbus_stack.INTERNET_MAC,
        )  # fmt: skip
        ovn.wait_hv(timeout=10)
        servers.append(peers.start_server(inet, "inet", INTERNET_HOST, PORT, logdir))
        made = []
        for spec, eip, fip, vm in sides:
            warm = functools.partial(vm.ping, INTERNET_HOST, timeout_s=1)
            assert procs.wait_until(warm, timeout=10), f"{vm.name} -> {INTERNET_HOST}"
            server = peers.start_server(vm, vm.name, VM_IP, PORT, logdir)
            servers.append(server)
            made.append(Side(spec, eip, fip, vm, server))
        yield Isolated(made[0], made[1], inet, service_env["NATS_URL"])
    finally:
        for server in servers:
            server.stop()
        chassis.stop()
    assert chassis.owned_netns() == []
    assert not list(Path("/etc/netns").glob(f"{PREFIX}-*"))


def _answer(vm: Vm, ip: str) -> str:
    result = peers.ask(vm, "tcp", ip, PORT)
    assert result.returncode == 0, f"{vm.name} -> {ip}: {result.stderr}"
    return result.stdout.strip()


def test_a_project_reaches_no_other_projects_eip_but_the_internet_and_its_own(
    isolated: Isolated,
) -> None:
    a, b = isolated.a, isolated.b
    assert peers.ask(a.vm, "tcp", b.fip, PORT, wait=1).returncode != 0  # B's FIP: dropped
    assert peers.ask(b.vm, "tcp", a.fip, PORT, wait=1).returncode != 0  # and the other way
    assert b.server.peers() == [] and a.server.peers() == []
    assert _answer(a.vm, INTERNET_HOST) == f"inet peer={a.fip}"  # beyond the pools: allowed
    assert a.vm.ping(vpcbus_stack.INTERNET_ADDRESSES[0].split("/")[0])  # the gateway
    assert _answer(isolated.inet, a.fip) == "a1 peer=100.65.0.1"  # inbound to its own FIP


def test_two_isolated_projects_talk_once_each_allowlists_the_other(isolated: Isolated) -> None:
    a, b = isolated.a, isolated.b

    async def allow(side: Side, cidr: str) -> None:
        client = await Client.connect(isolated.nats_url, name="vpcbus-isolation-tests")
        try:
            spec = side.spec.model_copy(update={"egress_allowlist": [cidr]})
            org = side.spec.organization
            watch = await client.watch(org, "iso")
            try:
                published = await client.upsert(spec, update=True)
                await watch.until(ready_at(published.generation), timeout=30)
            finally:
                await watch.stop()
        finally:
            await client.close()

    asyncio.run(allow(a, f"{b.fip}/32"))
    # A's packets leave now, but b1's answers to A's address are B's egress: still dropped.
    assert peers.ask(a.vm, "tcp", b.fip, PORT, wait=1).returncode != 0
    asyncio.run(allow(b, f"{a.fip}/32"))
    assert procs.wait_until(
        lambda: peers.ask(a.vm, "tcp", b.fip, PORT, wait=1).returncode == 0, timeout=10
    )
    assert _answer(a.vm, b.fip) == f"b1 peer={a.fip}"
    assert _answer(b.vm, a.fip) == f"a1 peer={b.fip}"  # and the other way round
