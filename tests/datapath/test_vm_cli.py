"""``vpcbus vm create|delete|exec|list`` against a real ``vpcbus up``, with real packets.

The module starts the embedded stack exactly as a user does (``vpcbus up`` as root, in a
private home, its chassis namespaces under this module's own prefix) and drives it only with
the CLI as a subprocess (``python -m vpcbus``). Two projects share 10.0.0.0/24: acme/web with
VMs ``a`` and ``b``, beta/web with a VM ``a`` of its own. Nothing is wired by hand: IPAM hands
out the addresses, VPC makes the switch ports, ``vm create`` plugs the namespaces.

Proven: A's VMs ping each other by IP, and B's VM, holding the same address as A's ``a``,
cannot open a TCP connection to A's ``b`` (A's listener never sees it, while A's own VM gets
through); a static ``--ip`` is honoured; a conflicting one is refused naming the holder and
leaves nothing; ``vm delete`` removes the namespace and the IPAM address; ``vpcbus down``
removes every VM namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.datapath import hosts, peers, stackcli
from tests.datapath.stackcli import Cli

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.slow,  # one `vpcbus up` for the module: about 40 s in all
    pytest.mark.skipif(
        os.geteuid() != 0, reason="datapath tests need root (network namespaces, veths)"
    ),
]

# Distinct from the other data-path modules' "vs<pid>" and "vt<pid>": namespaces never clash.
PREFIX = f"vc{os.getpid() % 10000}"
CIDR, GATEWAY = "10.0.0.0/24", "10.0.0.1"
A, B = "acme/web", "beta/web"
PORT = 7777
TOOLS = ("ip", "ethtool", "ping", "ovsdb-server", "ovs-vswitchd", "ovn-northd", "ovn-controller")


def _our_netns() -> list[str]:
    return stackcli.our_netns(PREFIX)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """``vpcbus up`` in a private home; two projects with the same CIDR; VMs A/a, A/b, B/a."""
    hosts.skip_unless_usable(PREFIX, TOOLS)
    c = stackcli.for_module(tmp_path_factory.mktemp("vm-cli") / "home", PREFIX)
    try:
        stackcli.up(c, (A, B), CIDR, (f"{A}/a", f"{A}/b", f"{B}/a"))
        yield c
    finally:
        c.run("down", timeout=120)
    assert _our_netns() == [], "vpcbus down leaves no VM namespace behind"
    assert not list(Path("/etc/netns").glob(f"{PREFIX}-*"))


def _ip(cli: Cli, project: str, vm: str) -> str:
    return cli.vms()[(project, vm)]["IP"]


def test_vms_get_ipam_addresses_and_ping_each_other_by_ip(cli: Cli) -> None:
    listed = cli.vms()
    workloads = cli.workloads(A)
    for vm in ("a", "b"):
        row = listed[(A, vm)]
        assert (row["IP"], row["MAC"]) == (workloads[vm].ip_address, workloads[vm].mac_address)
        assert row["STATE"] == "running" and row["NAMESPACE"] in _our_netns()
    a_ip, b_ip = listed[(A, "a")]["IP"], listed[(A, "b")]["IP"]
    assert a_ip != b_ip and GATEWAY not in (a_ip, b_ip)
    cli.ok("vm", "exec", "-p", A, "a", "--", "ping", "-c", "3", "-W", "2", b_ip)
    cli.ok("vm", "exec", "-p", A, "b", "--", "ping", "-c", "3", "-W", "2", a_ip)


def test_vm_exec_returns_the_command_exit_code_and_needs_p_when_ambiguous(cli: Cli) -> None:
    ambiguous = cli.run("vm", "exec", "a", "--", "true")
    assert ambiguous.returncode == 2
    assert A in ambiguous.stderr and B in ambiguous.stderr
    assert cli.run("vm", "exec", "b", "--", "sh", "-c", "exit 7").returncode == 7
    assert cli.run("vm", "exec", "-p", B, "b", "--", "true").returncode == 1


def test_vm_of_another_project_with_the_same_cidr_cannot_reach_a(cli: Cli, tmp_path: Path) -> None:
    a_ip, b_ip = _ip(cli, A, "a"), _ip(cli, A, "b")
    assert _ip(cli, B, "a") == a_ip, "B's a holds A's a's address: the spaces overlap"
    log = tmp_path / "b.peers"
    server = subprocess.Popen(
        cli.popen_argv("vm", "exec", "-p", A, "b", "--", sys.executable, "-c",
                       peers.PEER_SERVER, "b", b_ip, str(PORT), str(log)),
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        answer = _ask(cli, A, "a", b_ip)
        assert answer.returncode == 0 and answer.stdout.strip() == f"b peer={a_ip}"
        cli.ok("vm", "exec", "-p", B, "a", "--", "ping", "-c", "1", "-W", "2", GATEWAY)
        assert _ask(cli, B, "a", b_ip).returncode != 0
        assert log.read_text().split() == [a_ip], "A's b only ever heard from A's a"
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the CLI and the server it runs in the VM
        server.communicate(timeout=10)


def _ask(cli: Cli, project: str, vm: str, ip: str) -> subprocess.CompletedProcess[str]:
    client = (sys.executable, "-c", peers.PEER_CLIENT, "tcp", ip, str(PORT), "2")
    return cli.run("vm", "exec", "-p", project, vm, "--", *client)


def test_static_ip_is_honoured(cli: Cli) -> None:
    out = cli.ok("vm", "create", A, "s", "--ip", "10.0.0.50")
    assert "10.0.0.50/24" in out
    eth0 = cli.ok("vm", "exec", "-p", A, "s", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert " 10.0.0.50/24 " in eth0
    s = cli.workloads(A)["s"]
    assert (s.ip_address, s.static) == ("10.0.0.50", True)
    cli.ok("vm", "exec", "-p", A, "a", "--", "ping", "-c", "1", "-W", "2", "10.0.0.50")
    cli.ok("vm", "delete", A, "s")


def test_conflicting_ip_is_refused_naming_the_holder_and_leaves_nothing(cli: Cli) -> None:
    before = _our_netns()
    refused = cli.run("vm", "create", A, "x", "--ip", _ip(cli, A, "a"))
    assert refused.returncode == 1
    assert "IPConflict" in refused.stderr and "vm/a/default" in refused.stderr
    assert _our_netns() == before
    assert (A, "x") not in cli.vms()
    assert "x" not in cli.workloads(A)
    member = cli.ipam(A).member("workload.vm.x.default")
    assert member is None or member.state == "Deleted"


def test_delete_removes_the_namespace_and_the_address(cli: Cli) -> None:
    cli.ok("vm", "create", A, "d")
    netns = cli.vms()[(A, "d")]["NAMESPACE"]
    assert netns in _our_netns()
    assert "d" in cli.workloads(A)
    cli.ok("vm", "delete", A, "d")
    assert netns not in _our_netns()
    assert (A, "d") not in cli.vms()
    assert "d" not in cli.workloads(A)
    assert cli.run("vm", "exec", "-p", A, "d", "--", "true").returncode == 1
