"""Self-test of the embedded OVN stack (``vpcbus.embedded``) with real packets.

The topology is built by hand with ``ovn-nbctl``, independently of the services: two projects
A and B, each a gateway router (``options:chassis``) with SNAT to ``ext-cloud`` (a localnet
switch on network ``cloud``) and a switch with the SAME 10.0.0.0/24. A fake internet host holds
100.65.0.1/16 and 8.8.8.8. The checks: A's VMs talk to each other, reach 8.8.8.8 as A's SNAT
address (and B's as B's), and B cannot reach A's 10.0.0.11.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.datapath import hosts, peers
from vpcbus.embedded import procs
from vpcbus.embedded.chassis import Chassis, Vm
from vpcbus.embedded.ovn import OvnCentral

pytestmark = pytest.mark.datapath

PREFIX = f"vt{os.getpid() % 10000}"
CHASSIS_NAME = f"{PREFIX}-chassis"
INTERNET_GW = "100.65.0.1"
SNAT_IP = {"a": "100.65.0.115", "b": "100.65.0.116"}
ECHO_HOST, ECHO_PORT = "8.8.8.8", 7777
TOOLS = ("ip", "ethtool", "ovsdb-server", "ovs-vswitchd", "ovn-northd", "ovn-controller")


@dataclass(frozen=True)
class Stack:
    central: OvnCentral
    chassis: Chassis
    vms: dict[str, Vm]


def _skip_unless_usable() -> None:
    if os.geteuid() != 0:
        pytest.skip("datapath tests need root (network namespaces, veths, AF_PACKET)")
    hosts.skip_unless_usable(PREFIX, TOOLS)


def _build_project(central: OvnCentral, project: str, vms: list[tuple[str, str, str]]) -> None:
    """A gateway router with SNAT to ext-cloud, and a 10.0.0.0/24 switch with ``vms``."""
    ls, lr, gw_ip = f"ls-{project}", f"lr-{project}", SNAT_IP[project]
    lrp_int, lrp_ext = f"lrp-{project}-int", f"lrp-{project}-ext"
    mac_byte = {"a": "0a", "b": "0b"}[project]
    cmds = [
        ["ls-add", ls],
        ["lr-add", lr],
        ["set", "Logical_Router", lr, f"options:chassis={CHASSIS_NAME}"],
        ["lrp-add", lr, lrp_int, f"02:00:00:{mac_byte}:00:01", "10.0.0.1/24"],
        *_router_lsp(ls, f"{ls}-rtr", lrp_int),
        ["lrp-add", lr, lrp_ext, f"02:00:00:{mac_byte}:00:02", f"{gw_ip}/16"],
        *_router_lsp("ext-cloud", f"ext-cloud-{lr}", lrp_ext, "nat-addresses=router"),
        ["lr-route-add", lr, "0.0.0.0/0", INTERNET_GW],
        ["lr-nat-add", lr, "snat", gw_ip, "10.0.0.0/24"],
    ]
    for lsp, mac, ip in vms:
        cmds += [["lsp-add", ls, lsp], ["lsp-set-addresses", lsp, f"{mac} {ip}"]]
    central.nbctl(*_chain(cmds))


def _router_lsp(ls: str, lsp: str, lrp: str, *options: str) -> list[list[str]]:
    return [
        ["lsp-add", ls, lsp],
        ["lsp-set-type", lsp, "router"],
        ["lsp-set-addresses", lsp, "router"],
        ["lsp-set-options", lsp, f"router-port={lrp}", *options],
    ]


def _chain(cmds: list[list[str]]) -> list[str]:
    """One ovn-nbctl invocation (one transaction) for several commands."""
    args: list[str] = []
    for cmd in cmds:
        args += ["--", *cmd] if args else cmd
    return args


def _build_topology(central: OvnCentral) -> None:
    central.nbctl(
        *_chain(
            [
                ["ls-add", "ext-cloud"],
                ["lsp-add", "ext-cloud", "ln-cloud"],
                ["lsp-set-type", "ln-cloud", "localnet"],
                ["lsp-set-addresses", "ln-cloud", "unknown"],
                ["lsp-set-options", "ln-cloud", "network_name=cloud"],
            ]
        )
    )
    _build_project(
        central,
        "a",
        [("a-vm1", "02:aa:00:00:00:10", "10.0.0.10"), ("a-vm2", "02:aa:00:00:00:11", "10.0.0.11")],
    )
    _build_project(central, "b", [("b-vm1", "02:bb:00:00:00:10", "10.0.0.10")])


def _add_vms(chassis: Chassis) -> dict[str, Vm]:
    vms = {
        "a1": chassis.add_vm("a1", "a-vm1", "02:aa:00:00:00:10", "10.0.0.10/24", "10.0.0.1"),
        "a2": chassis.add_vm("a2", "a-vm2", "02:aa:00:00:00:11", "10.0.0.11/24", "10.0.0.1"),
        "b1": chassis.add_vm("b1", "b-vm1", "02:bb:00:00:00:10", "10.0.0.10/24", "10.0.0.1"),
    }
    vms["inet"] = chassis.add_external_host("inet", "cloud", [f"{INTERNET_GW}/16", "8.8.8.8/32"])
    return vms


def _assert_cleaned_up(chassis: Chassis, central: OvnCentral) -> None:
    assert chassis.owned_netns() == []
    assert not chassis.is_running()
    assert not central.is_running()
    assert not list(Path("/etc/netns").glob(f"{PREFIX}-*"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _skip_unless_usable()
    central = OvnCentral(tmp_path_factory.mktemp("central"))
    chassis = Chassis(
        tmp_path_factory.mktemp("chassis"), central.sb_db, name=CHASSIS_NAME, prefix=PREFIX
    )
    try:
        central.start()
        chassis.start()
        _build_topology(central)
        vms = _add_vms(chassis)
        central.wait_hv(timeout=10)
        yield Stack(central, chassis, vms)
    finally:
        chassis.stop()
        central.stop()
    _assert_cleaned_up(chassis, central)


@pytest.fixture(scope="module")
def echo_server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Server]:
    # Let each gateway router ARP-resolve 100.65.0.1 first. OVN 23.03 buffers the packet that
    # triggers the ARP, but drops the next ones until the new MAC_Binding's flows are installed
    # (a few ms): a TCP handshake right then loses its ACK and stalls 1 s on retransmission.
    # Up to three echoes: the first may be the one lost to that window (seen once in CI).
    assert stack.vms["a1"].ping(ECHO_HOST, count=3)
    assert stack.vms["b1"].ping(ECHO_HOST, count=3)
    logdir = tmp_path_factory.mktemp("peers")
    server = peers.start_server(stack.vms["inet"], "inet", ECHO_HOST, ECHO_PORT, logdir)
    try:
        yield server
    finally:
        server.stop()


def _echo(vm: Vm, proto: str) -> str:
    return peers.ask(vm, proto, ECHO_HOST, ECHO_PORT).stdout.strip()


def test_chassis_is_registered_in_sb(stack: Stack) -> None:
    names = stack.central.sbctl("--bare", "--columns=name", "list", "Chassis").split()
    assert names == [CHASSIS_NAME]


def test_vms_on_one_switch_ping_each_other(stack: Stack) -> None:
    assert stack.vms["a1"].ping("10.0.0.11")
    assert stack.vms["a2"].ping("10.0.0.10")


def test_vm_reaches_the_internet_through_snat(stack: Stack) -> None:
    assert stack.vms["a1"].ping(ECHO_HOST)


@pytest.mark.usefixtures("echo_server")
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_internet_sees_the_projects_snat_address(stack: Stack, proto: str) -> None:
    assert _echo(stack.vms["a1"], proto) == f"inet peer={SNAT_IP['a']}"
    assert _echo(stack.vms["b1"], proto) == f"inet peer={SNAT_IP['b']}"


def test_project_b_cannot_reach_project_a(stack: Stack) -> None:
    b1 = stack.vms["b1"]
    assert b1.ping("10.0.0.1"), "B's own gateway must answer, or the next check proves nothing"
    assert not b1.ping("10.0.0.11", timeout_s=1)


def test_vm_can_be_added_live_and_deleted_twice(stack: Stack) -> None:
    mac, ip = "02:aa:00:00:00:12", "10.0.0.12"
    stack.central.nbctl(
        *_chain([["lsp-add", "ls-a", "a-vm3"], ["lsp-set-addresses", "a-vm3", f"{mac} {ip}"]])
    )
    vm = stack.chassis.add_vm("a3", "a-vm3", mac, f"{ip}/24", "10.0.0.1")
    stack.chassis.wait_hv(stack.central.nb_db, timeout=10)
    resolv = Path("/etc/netns") / vm.netns / "resolv.conf"
    assert resolv.read_text() == "nameserver 10.0.0.1\noptions timeout:1 attempts:1\n"
    assert vm.ping("10.0.0.10")

    stack.chassis.del_vm("a3")
    stack.chassis.del_vm("a3")
    stack.central.nbctl("lsp-del", "a-vm3")
    assert vm.netns not in stack.chassis.owned_netns()
    assert not resolv.parent.exists()
    with pytest.raises(procs.CommandError):
        stack.chassis.vsctl("get", "Interface", vm.host_link, "name")
