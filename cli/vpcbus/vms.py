"""``vpcbus vm create|delete|exec|list``: network-namespace VMs on the embedded stack's chassis.

A VM is made through the same events as any other workload. ``vm create`` publishes
``workload.attached`` (kind ``vm``, interface ``default``), waits until IPAM holds its address
and VPC its logical switch port ``<name>.<namespace>``, then plugs a network namespace into
the chassis of ``vpcbus up`` as that port: IPAM's MAC and address, the project gateway as the
default route and the DNS server. ``vm delete`` removes the namespace, publishes
``workload.detached`` and waits until both services let go of the NIC. A create that fails
(a refused request, a timeout) withdraws the NIC again, so it leaves nothing behind.

The chassis belongs to the stack's supervisor (:mod:`vpcbus.vmhost` opens it from here), so a
VM outlives the CLI and ``vpcbus down`` removes it with the chassis. ``vm list`` and ``vm exec``
read only the local VM records; one whose namespace is gone (after ``vpcbus down``) lists as
``stopped`` until ``vm delete`` or another ``vm create``.

Registered by :func:`vpcbus.__main__.build_parser` through :func:`add_parsers`. Root only,
like the chassis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from vpcbus import tables, vmhost
from vpcbus.client import (
    Client,
    Statuses,
    WaitTimeoutError,
    Watch,
    member_at,
    member_gone,
)
from vpcbus.common import (
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    invalid,
    parse_ref,
)
from vpcbus.embedded import procs
from vpcbus.embedded.chassis import Vm
from vpcbus_proto import names
from vpcbus_proto.members import WorkloadRef, WorkloadSpec
from vpcbus_proto.status import AddressFacts, Resolver, WorkloadAddress
from vpcbus_proto.subjects import ServiceName

#: The services that act on a VM NIC: IPAM gives the address, VPC the switch port.
SERVICES: tuple[ServiceName, ...] = ("ipam", "vpc")
#: How long a failed create waits for its NIC to be withdrawn.
ROLLBACK_TIMEOUT = 15.0


# -- create ------------------------------------------------------------------------------


def _refusals(statuses: Statuses, nic: WorkloadRef, generation: int) -> list[str]:
    """``<service>: <reason>: <message>`` for each service that refused the NIC."""
    out = []
    for service in SERVICES:
        st = statuses.get(service)
        state = st.member(nic.member) if st is not None else None
        if state is None or state.generation < generation:
            continue
        if state.state in ("Error", "Deleted"):
            message = state.message.removeprefix(f"{nic.holder}: ")
            out.append(f"{service}: {state.reason}: {message}")
    return out


def _settled(nic: WorkloadRef, generation: int) -> Callable[[Statuses], bool]:
    """Every service has the NIC at ``generation``, or one of them refused it already."""
    everywhere = member_at(nic.member, generation, services=SERVICES)
    return lambda st: bool(_refusals(st, nic, generation)) or everywhere(st)


async def _attached(
    watch: Watch, client: Client, nic: WorkloadSpec, timeout: float
) -> tuple[WorkloadAddress, AddressFacts, Resolver | None]:
    """Publish ``workload.attached``; IPAM's address once VPC has the port too, and how the
    project resolves names (the DNS service's status; None before DNS reported one)."""
    published = await client.attach(nic)
    statuses = await watch.until(
        _settled(nic, published.generation), timeout=timeout, event_id=published.event_id
    )
    refused = _refusals(statuses, nic, published.generation)
    if refused:
        raise CliError(f"{nic.holder}: " + "; ".join(refused))
    facts = statuses["ipam"].addresses
    found = [w for w in facts.workloads if w.member == nic.member] if facts else []
    if facts is None or not found:
        raise CliError(f"{nic.holder}: IPAM lists no address for it")
    dns = statuses.get("dns")
    return found[0], facts, dns.resolver if dns is not None else None


def _plug(host: vmhost.Host, nic: WorkloadSpec, addr: WorkloadAddress, facts: AddressFacts,
          resolver: Resolver | None, timeout: float) -> vmhost.VmRecord:  # fmt: skip
    """The namespace VM as port ``<name>.<namespace>``, once ovn-controller has bound it; its
    resolv.conf as the DNS service says (else the gateway, which answers the zone)."""
    org, project = nic.organization, nic.project
    port = names.workload_port(names.namespace(org, project), nic.name, nic.interface)
    prefix_length = ipaddress.ip_network(facts.cidr_block).prefixlen
    vm = host.chassis.add_vm(
        vmhost.chassis_vm_name(org, project, nic.name), port, addr.mac_address,
        f"{addr.ip_address}/{prefix_length}", facts.gateway_ip,
        **_resolv_args(resolver),
    )  # fmt: skip
    _wait_bound(host, vm, port, timeout)
    return vmhost.VmRecord(
        organization=org, project=project, name=nic.name, ip_address=addr.ip_address,
        prefix_length=prefix_length, mac_address=addr.mac_address, gateway=facts.gateway_ip,
        port=port, netns=vm.netns,
    )  # fmt: skip


def _resolv_args(resolver: Resolver | None) -> dict[str, list[str]]:
    if resolver is None:
        return {}
    return {"nameservers": resolver.nameservers, "search": resolver.search,
            "options": resolver.options}  # fmt: skip


def _wait_bound(host: vmhost.Host, vm: Vm, port: str, timeout: float) -> None:
    """ovn-controller marks the interface ``ovn-installed`` once the port's flows are in;
    ``--wait=hv sync`` then makes sure every chassis caught up with the NB."""

    def installed() -> bool:
        get = ("--if-exists", "get", "Interface", vm.host_link, "external_ids:ovn-installed")
        return host.chassis.vsctl(*get) == '"true"'

    if not procs.wait_until(installed, timeout, interval=0.1):
        raise CliError(
            f"ovn-controller did not bind port {port} within {timeout:g}s "
            f"(see {host.chassis.dirs.log})",
            EXIT_TIMEOUT,
        )
    host.chassis.wait_hv(host.state.ovn_nb_db, timeout=timeout)


async def _withdraw(host: vmhost.Host, watch: Watch, client: Client, nic: WorkloadSpec) -> None:
    """Undo a failed create: the namespace, the record, and the NIC on the bus."""
    await asyncio.to_thread(host.remove, nic.organization, nic.project, nic.name)
    await client.detach(nic)
    # The detach is published: on a timeout the services finish it on their own.
    with contextlib.suppress(WaitTimeoutError):
        await watch.until(member_gone(nic.member, services=SERVICES), timeout=ROLLBACK_TIMEOUT)


async def vm_create(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project)
    try:
        nic = WorkloadSpec(organization=org, project=project, kind="vm", name=args.name,
                           ip=args.ip, mac=args.mac)  # fmt: skip
    except ValidationError as exc:
        raise invalid("VM", exc) from exc
    host = vmhost.open_host(args.home)
    netns = host.netns(org, project, nic.name)
    if netns in vmhost.live_namespaces():
        raise CliError(f"VM {nic.name} already exists in {org}/{project} (namespace {netns})")
    client = await host.connect()
    try:
        watch = await client.watch(org, project)
        try:
            addr, facts, resolver = await _attached(watch, client, nic, args.timeout)
            rec = await asyncio.to_thread(_plug, host, nic, addr, facts, resolver, args.timeout)
            vmhost.save(host.home, rec)
        except Exception:
            await _withdraw(host, watch, client, nic)
            raise
        finally:
            await watch.stop()
    except (RuntimeError, ValueError) as exc:  # the chassis' tools failed (procs.CommandError)
        raise CliError(f"VM {nic.name}: {exc}") from exc
    finally:
        await client.close()
    print(f"vm {rec.name} created in {rec.project_ref}: {rec.ip_address}/{rec.prefix_length} "
          f"mac {rec.mac_address} (namespace {rec.netns})")  # fmt: skip
    return EXIT_OK


# -- delete, exec, list ------------------------------------------------------------------


async def vm_delete(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project)
    try:
        nic = WorkloadRef(organization=org, project=project, kind="vm", name=args.name)
    except ValidationError as exc:
        raise invalid("VM", exc) from exc
    host = vmhost.open_host(args.home)
    await asyncio.to_thread(host.remove, org, project, nic.name)
    client = await host.connect()
    try:
        watch = await client.watch(org, project)
        try:
            published = await client.detach(nic)
            gone = member_gone(nic.member, services=SERVICES)
            await watch.until(gone, timeout=args.timeout, event_id=published.event_id)
        finally:
            await watch.stop()
    finally:
        await client.close()
    print(f"vm {nic.name} deleted from {org}/{project}")
    return EXIT_OK


def _find(home: Path, name: str, project: str | None) -> vmhost.VmRecord:
    where = parse_ref(project) if project else None
    found = [
        r for r in vmhost.records(home)
        if r.name == name and where in (None, (r.organization, r.project))
    ]  # fmt: skip
    if not found:
        scope = f" in {project}" if project else ""
        raise CliError(f"no VM {name!r}{scope} (see `vpcbus vm list`)")
    if len(found) > 1:
        projects = ", ".join(r.project_ref for r in found)
        raise CliError(f"VM {name!r} exists in {projects}: choose with -p ORG/PROJECT", EXIT_USAGE)
    return found[0]


def vm_exec(args: argparse.Namespace) -> int:
    """Run the command in the VM's namespace with this terminal; its exit code is ours."""
    rec = _find(args.home, args.name, args.project)
    if rec.netns not in vmhost.live_namespaces():
        raise CliError(f"VM {rec.name} of {rec.project_ref} is not running (namespace "
                       f"{rec.netns} is gone); `vpcbus vm create` makes it again")  # fmt: skip
    code = subprocess.run(procs.netns_argv(rec.netns, args.cmd), check=False).returncode
    return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it


def vm_list(args: argparse.Namespace) -> int:
    where = parse_ref(args.project) if args.project else None
    live = vmhost.live_namespaces()
    rows = [
        [r.name, r.project_ref, r.ip_address, r.mac_address, r.netns,
         "running" if r.netns in live else "stopped"]
        for r in vmhost.records(args.home)
        if where in (None, (r.organization, r.project))
    ]  # fmt: skip
    tables.show(["NAME", "PROJECT", "IP", "MAC", "NAMESPACE", "STATE"], rows)
    return EXIT_OK


# -- parsers -----------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus vm create|delete|exec|list``."""
    vm = sub.add_parser("vm", help="network-namespace VMs on the local chassis (root)")
    vsub = vm.add_subparsers(dest="verb", required=True)
    c = vsub.add_parser("create", help="attach a VM NIC and plug a namespace VM as its port")
    c.add_argument("--ip", default=None, help="requested static address")
    c.add_argument("--mac", default=None, help="requested MAC")
    d = vsub.add_parser("delete", help="remove the namespace and detach the VM NIC")
    for p, func in ((c, vm_create), (d, vm_delete)):
        p.add_argument("project", metavar="ORG/PROJECT")
        p.add_argument("name", metavar="NAME")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
        p.set_defaults(func=func)
    e = vsub.add_parser("exec", help="run a command inside a VM: vm exec NAME -- CMD...")
    e.add_argument("-p", "--project", default=None, metavar="ORG/PROJECT",
                   help="the VM's project, when two projects have a VM of that name")  # fmt: skip
    e.add_argument("name", metavar="NAME")
    e.add_argument("cmd", nargs="+", metavar="CMD")
    e.set_defaults(func=vm_exec)
    ls = vsub.add_parser("list", help="the VMs made with vm create")
    ls.add_argument("-p", "--project", default=None, metavar="ORG/PROJECT")
    ls.set_defaults(func=vm_list)
