"""The CLI's address commands: ``get ip|subnet|pool|eip|fip``, ``eip create|delete|get``,
``fip create|delete|get``, ``svc create|delete|get`` (LoadBalancer services) and
``workload attach|detach``.

Registered by :func:`vpcbus.__main__.build_parser` through :func:`add_get_parsers` and
:func:`add_parsers`. Reads come from IPAM's project status (``addresses``, ``members``) and
from ``vpcbus.usage.pool.<pool>``; writes publish the member events a portal or a
Kubernetes bridge would publish and wait for IPAM's verdict on that member.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import ValidationError

from vpcbus import tables
from vpcbus.client import Client, Published, RejectedError, member_at, member_gone
from vpcbus.common import EXIT_OK, EXIT_USAGE, CliError, connect, invalid, parse_ref
from vpcbus_proto.members import (
    EipRef,
    EipSpec,
    FipRef,
    FipSpec,
    LbServiceRef,
    LbServiceSpec,
    VmTarget,
    WorkloadRef,
    WorkloadSpec,
)
from vpcbus_proto.status import AddressFacts, LoadBalancer, ServiceStatus, Usage

_M = TypeVar(
    "_M", WorkloadRef, WorkloadSpec, EipRef, EipSpec, FipRef, FipSpec, LbServiceRef, LbServiceSpec
)

#: What a member waiting for an address is told: it is not lost, it is queued.
WAITS = {
    "eip": "the EIP stays recorded and becomes ready by itself when an address frees up "
    "(`vpcbus eip delete` withdraws it)",
    "workload": "the NIC stays attached and gets an address by itself when one frees up "
    "(`vpcbus workload detach` withdraws it)",
    "fip": "the FIP stays recorded and becomes ready by itself when an address frees up "
    "(`vpcbus fip delete` withdraws it)",
    "service": "the service stays recorded and becomes ready by itself when an address frees "
    "up (`vpcbus svc delete` withdraws it)",
}

# -- reading -----------------------------------------------------------------------------


async def _ipam(args: argparse.Namespace) -> tuple[ServiceStatus, AddressFacts]:
    org, name = parse_ref(args.project)
    client = await connect(args.home)
    try:
        ipam = await client.status("ipam", org, name)
    finally:
        await client.close()
    if ipam is None or ipam.addresses is None:
        raise CliError(
            f"project {org}/{name} has no addresses"
            + (f" ({ipam.state} {ipam.reason}: {ipam.message})" if ipam else "")
        )
    return ipam, ipam.addresses


def _eip_table(ipam: ServiceStatus, facts: AddressFacts) -> None:
    """Every EIP, ready or not (one refused outright has only its member state)."""
    age = tables.age(datetime.now(UTC) - ipam.observed_at)
    rows = [
        [e.name, e.ip_address or "-", e.network.capitalize(), str(e.ready).lower(), age,
         e.ownership_type, str(len(e.owners)), e.reason or "-"]
        for e in facts.eips
    ]  # fmt: skip
    listed = {f"eip.{e.name}" for e in facts.eips}
    rows += [
        [m.member.removeprefix("eip."), "-", "-", "false", age, "-", "0", m.reason]
        for m in ipam.members
        if m.member.startswith("eip.") and m.member not in listed and m.state != "Deleted"
    ]
    tables.show(
        ["NAME", "EXTERNAL IP", "NETWORK TYPE", "READY", "AGE", "OWNERSHIP", "OWNERS", "REASON"],
        rows,
    )


async def get_eip(args: argparse.Namespace) -> int:
    ipam, facts = await _ipam(args)
    _eip_table(ipam, facts)
    return EXIT_OK


async def get_fip(args: argparse.Namespace) -> int:
    """Kube-DC's FIp columns (NAME, TARGET IP, EXTERNAL IP, VM, INTERFACE, READY), then the
    EIP it uses and why it is not ready; a FIP refused outright has only its member state."""
    ipam, facts = await _ipam(args)
    rows = [
        [f.name, f.target_ip or "-", f.external_ip or "-", f.vm_name or "-", f.interface or "-",
         str(f.ready).lower(), f.eip, f.reason or "-"]
        for f in facts.fips
    ]  # fmt: skip
    listed = {f"fip.{f.name}" for f in facts.fips}
    rows += [
        [m.member.removeprefix("fip."), "-", "-", "-", "-", "false", "-", m.reason]
        for m in ipam.members
        if m.member.startswith("fip.") and m.member not in listed and m.state != "Deleted"
    ]
    head = ["NAME", "TARGET IP", "EXTERNAL IP", "VM", "INTERFACE", "READY", "EIP", "REASON"]
    tables.show(head, sorted(rows))
    return EXIT_OK


def _ports(svc: LoadBalancer) -> str:
    return ",".join(f"{p.port}:{p.target_port}/{p.protocol}" for p in svc.ports)


async def get_svc(args: argparse.Namespace) -> int:
    """NAME, EXTERNAL-IP, PORT(S) (``port:targetPort/protocol``), ENDPOINTS, READY, EIP, REASON."""
    ipam, facts = await _ipam(args)
    rows = [
        [s.name, s.ingress_ip or "<pending>", _ports(s), ",".join(s.endpoints) or "-",
         str(s.ready).lower(), s.eip, s.reason or "-"]
        for s in facts.services
    ]  # fmt: skip
    listed = {f"service.{s.name}" for s in facts.services}
    rows += [
        [m.member.removeprefix("service."), "<pending>", "-", "-", "false", "-", m.reason]
        for m in ipam.members
        if m.member.startswith("service.") and m.member not in listed and m.state != "Deleted"
    ]
    head = ["NAME", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS", "READY", "EIP", "REASON"]
    tables.show(head, sorted(rows))
    return EXIT_OK


async def get_ip(args: argparse.Namespace) -> int:
    """The subnet's addresses with their holders (router, NICs), then the EIPs."""
    ipam, facts = await _ipam(args)
    rows = [[facts.gateway_ip, "router/gateway", "-", "true", "true", "-"]]
    for w in facts.workloads:
        state = ipam.member(w.member)
        ready = state is not None and state.state == "Ready"
        rows.append([
            w.ip_address, f"{w.kind}/{w.name}/{w.interface}", w.mac_address,
            str(w.static).lower(), str(ready).lower(), "-" if ready or not state else state.reason,
        ])  # fmt: skip
    listed = {w.member for w in facts.workloads}
    rows += [
        ["-", _slashed(m.member), "-", "-", "false", m.reason]
        for m in ipam.members
        if m.member.startswith("workload.") and m.member not in listed and m.state != "Deleted"
    ]
    tables.show(["ADDRESS", "HOLDER", "MAC", "STATIC", "READY", "REASON"], rows)
    print()
    _eip_table(ipam, facts)
    return EXIT_OK


def _slashed(member: str) -> str:
    """``workload.pod.web.default`` -> ``pod/web/default`` (the holder's name)."""
    return "/".join(member.split(".")[1:])


_USAGE_HEADERS = ["CAPACITY", "IN USE", "QUARANTINED", "AVAILABLE"]


def _counts(u: Usage) -> list[str]:
    return [str(u.capacity), str(u.in_use), str(u.quarantined), str(u.available)]


def _ranges(u: Usage) -> None:
    print(f"in use:     {', '.join(u.in_use_ranges) or '-'}")
    print(f"available:  {', '.join(u.available_ranges) or '-'}")


async def get_subnet(args: argparse.Namespace) -> int:
    _ipam_status, facts = await _ipam(args)
    if facts.subnet is None:
        raise CliError(f"IPAM reports no accounting for {args.project} yet")
    tables.show(
        ["CIDR", "GATEWAY", *_USAGE_HEADERS],
        [[facts.subnet.cidr, facts.gateway_ip, *_counts(facts.subnet)]],
    )
    _ranges(facts.subnet)
    return EXIT_OK


async def get_pool(args: argparse.Namespace) -> int:
    """External pools' accounting; one pool (``NAME``) also with its ranges and excludes."""
    client = await connect(args.home)
    try:
        pools = await client.pool_usages()
    finally:
        await client.close()
    if args.name is not None:
        known = ", ".join(p.pool for p in pools) or "none published yet"
        pools = [p for p in pools if p.pool == args.name]
        if not pools:
            raise CliError(f"no pool {args.name!r} (known: {known})")
    now = datetime.now(UTC)
    rows = [
        [p.pool, p.usage.cidr, p.gateway, *_counts(p.usage), tables.age(now - p.observed_at)]
        for p in pools
    ]
    tables.show(["POOL", "CIDR", "GATEWAY", *_USAGE_HEADERS, "AGE"], rows)
    if args.name is not None:
        print(f"exclude:    {', '.join(pools[0].exclude) or '-'}")
        _ranges(pools[0].usage)
    return EXIT_OK


# -- members: publish, then wait for IPAM's verdict --------------------------------------


async def _settle(
    args: argparse.Namespace,
    member: str,
    publish: Callable[[Client], Awaitable[Published]],
    *,
    removal: bool = False,
) -> ServiceStatus | None:
    """Publish a member event and wait until IPAM settled it; CliError when it refused."""
    org, name = parse_ref(args.project)
    kind = member.partition(".")[0]
    what = f"{kind} {member.partition('.')[2]}" if kind != "workload" else _slashed(member)
    client = await connect(args.home)
    try:
        watch = await client.watch(org, name)
        try:
            published = await publish(client)
            done = member_gone(member) if removal else member_at(member, published.generation)
            statuses = await watch.until(done, timeout=args.timeout, event_id=published.event_id)
        except RejectedError as exc:
            err = next((e for e in exc.errors if e.service == "ipam"), exc.errors[0])
            raise _refused(what, kind, err.reason, err.message) from exc
        finally:
            await watch.stop()
    finally:
        await client.close()
    ipam = statuses.get("ipam")
    state = ipam.member(member) if ipam is not None else None
    if state is not None and state.state == "Error":
        raise _refused(what, kind, state.reason, state.message)
    return ipam


def _refused(what: str, kind: str, reason: str, message: str) -> CliError:
    text = f"{what}: {reason}: {message.removeprefix(f'{what}: ')}"
    if reason == "NoAvailableIPs":
        text += f"; {WAITS[kind]}"
    return CliError(text)


def _spec(what: str, model: type[_M], **fields: object) -> _M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid(what, exc) from exc


async def eip_create(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project)
    eip = _spec(
        "EIP", EipSpec, organization=org, project=project, name=args.name,
        external_network_type=args.network,
    )  # fmt: skip
    ipam = await _settle(args, eip.member, lambda c: c.create_eip(eip))
    found = ipam.addresses.eip(eip.name) if ipam and ipam.addresses else None
    if found is None:  # settled, yet not listed: the project itself is not admitted
        raise CliError(f"eip {eip.name}: IPAM lists no address for it")
    print(f"eip {eip.name}: {found.ip_address} on {found.network}")
    return EXIT_OK


async def eip_delete(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project)
    eip = _spec("EIP", EipRef, organization=org, project=project, name=args.name)
    await _settle(args, eip.member, lambda c: c.delete_eip(eip), removal=True)
    print(f"eip {eip.name} deleted")
    return EXIT_OK


async def _until_nat_carries(
    args: argparse.Namespace, org: str, project: str, carried: Callable[[list[str]], bool]
) -> None:
    """Wait until NAT's status of the project lists what ``carried`` looks for in its objects
    (a FIP's rule, a service's VIPs): the user's traffic flows from then on."""
    client = await connect(args.home)
    try:
        watch = await client.watch(org, project)
        try:
            await watch.until(
                lambda st: "nat" in st and carried(st["nat"].objects), timeout=args.timeout
            )
        finally:
            await watch.stop()
    finally:
        await client.close()


async def fip_create(args: argparse.Namespace) -> int:
    """Publish ``fip.created``, wait for IPAM to resolve it and NAT to carry it."""
    org, project = parse_ref(args.project)
    target = None
    if args.vm is not None:
        target = VmTarget(vm_name=args.vm, interface_name=args.interface)
    fip = _spec(
        "FIP", FipSpec, organization=org, project=project, name=args.name,
        ip_address=args.ip, vm_target=target, eip=args.eip, external_network_type=args.network,
    )  # fmt: skip
    ipam = await _settle(args, fip.member, lambda c: c.create_fip(fip))
    found = ipam.addresses.fip(fip.name) if ipam and ipam.addresses else None
    if found is None or not found.ready:
        raise CliError(f"fip {fip.name}: IPAM lists no address for it")
    rule = f"NAT/dnat_and_snat:{found.target_ip}->{found.external_ip}"
    await _until_nat_carries(args, org, project, lambda objects: rule in objects)
    on = f" ({found.vm_name}/{found.interface})" if found.vm_name else ""
    print(f"fip {fip.name}: {found.external_ip} -> {found.target_ip}{on} via eip {found.eip}")
    return EXIT_OK


async def fip_delete(args: argparse.Namespace) -> int:
    """Publish ``fip.deleted``, wait for IPAM to release it and NAT to drop its rule (NAT
    acts on IPAM's status, after it: waiting for IPAM alone returned while the FIP still
    answered)."""
    org, project = parse_ref(args.project)
    fip = _spec("FIP", FipRef, organization=org, project=project, name=args.name)
    client = await connect(args.home)
    try:
        ipam = await client.status("ipam", org, project)
    finally:
        await client.close()
    found = ipam.addresses.fip(fip.name) if ipam and ipam.addresses else None
    await _settle(args, fip.member, lambda c: c.delete_fip(fip), removal=True)
    if found is not None and found.ready:
        rule = f"NAT/dnat_and_snat:{found.target_ip}->{found.external_ip}"
        await _until_nat_carries(args, org, project, lambda objects: rule not in objects)
    print(f"fip {fip.name} deleted")
    return EXIT_OK


def _service_ports(texts: list[str]) -> list[dict[str, object]]:
    """``80:8080/tcp`` (or ``80`` for 80:80/TCP) as ServicePort fields; CliError else."""
    out: list[dict[str, object]] = []
    for text in texts:
        ports, _, protocol = text.partition("/")
        port, _, target = ports.partition(":")
        try:
            out.append({"port": int(port), "target_port": int(target or port),
                        "protocol": (protocol or "tcp").upper()})  # fmt: skip
        except ValueError:
            raise CliError(f"--port {text!r}: want PORT[:TARGET][/tcp|udp]", EXIT_USAGE) from None
    return out


async def svc_create(args: argparse.Namespace) -> int:
    """Publish ``service.created``; wait for IPAM's verdict and NAT's load balancer."""
    org, project = parse_ref(args.project)
    selector = None
    if args.selector is not None:
        key, _, value = args.selector.partition("=")
        if key != "vm" or not value:
            raise CliError(f"--selector {args.selector!r}: want vm=NAME", EXIT_USAGE)
        selector = value
    svc = _spec(
        "service", LbServiceSpec, organization=org, project=project, name=args.name,
        ports=_service_ports(args.port), endpoints=args.endpoint or [], vm_selector=selector,
        bind_on_default_gw_eip=args.bind_default_gw, bind_on_eip=args.bind_eip,
        external_network_type=args.network,
    )  # fmt: skip
    ipam = await _settle(args, svc.member, lambda c: c.upsert_service(svc))
    found = ipam.addresses.service(svc.name) if ipam and ipam.addresses else None
    if found is None or not found.ready:
        raise CliError(f"service {svc.name}: IPAM lists no address for it")
    if found.endpoints:  # NAT programs a load balancer only for a service with endpoints
        vips = {f"{p.protocol.lower()}:{found.ingress_ip}:{p.port}" for p in found.ports}
        await _until_nat_carries(
            args, org, project,
            lambda objects: vips <= {o.removeprefix("LB/").split("->")[0] for o in objects},
        )  # fmt: skip
    print(f"service {svc.name}: {found.ingress_ip} {_ports(found)} via eip {found.eip}")
    return EXIT_OK


async def svc_delete(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project)
    svc = _spec("service", LbServiceRef, organization=org, project=project, name=args.name)
    await _settle(args, svc.member, lambda c: c.delete_service(svc), removal=True)
    print(f"service {svc.name} deleted")
    return EXIT_OK


def _nic(args: argparse.Namespace) -> dict[str, object]:
    org, project = parse_ref(args.project)
    return {"organization": org, "project": project, "kind": args.kind, "name": args.name,
            "interface": args.interface}  # fmt: skip


async def workload_attach(args: argparse.Namespace) -> int:
    nic = _spec("workload", WorkloadSpec, **_nic(args), ip=args.ip, mac=args.mac)
    ipam = await _settle(args, nic.member, lambda c: c.attach(nic))
    facts = ipam.addresses if ipam else None
    found = next((w for w in facts.workloads if w.member == nic.member), None) if facts else None
    if found is None:
        raise CliError(f"{nic.holder}: IPAM lists no address for it")
    static = " (static)" if found.static else ""
    print(f"{nic.holder}: {found.ip_address}{static} mac {found.mac_address}")
    return EXIT_OK


async def workload_detach(args: argparse.Namespace) -> int:
    nic = _spec("workload", WorkloadRef, **_nic(args))
    await _settle(args, nic.member, lambda c: c.detach(nic), removal=True)
    print(f"{nic.holder} detached")
    return EXIT_OK


# -- parsers -----------------------------------------------------------------------------


def _project_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--project", required=True, metavar="ORG/PROJECT")


def _timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for IPAM")


def add_get_parsers(gsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus get eip|ip|subnet|pool``."""
    for kind, text, func in (
        ("eip", "EIPs of a project (default-gw and user EIPs, ready or not)", get_eip),
        ("fip", "floating IPs of a project (ready or not)", get_fip),
        ("svc", "LoadBalancer services of a project (ready or not)", get_svc),
        ("ip", "every address of a project with its holder", get_ip),
        ("subnet", "a project subnet's accounting and ranges", get_subnet),
    ):
        g = gsub.add_parser(kind, help=text)
        _project_arg(g)
        g.set_defaults(func=func)
    pool = gsub.add_parser("pool", help="external pools' accounting")
    pool.add_argument("name", nargs="?", help="one pool, with its ranges and excludes")
    pool.set_defaults(func=get_pool)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus eip|fip create|delete|get`` and ``vpcbus workload attach|detach``."""
    eip = sub.add_parser("eip", help="create, delete and list user EIPs")
    esub = eip.add_subparsers(dest="verb", required=True)
    c = esub.add_parser("create", help="publish eip.created and wait for its address")
    c.add_argument("--network", default=None, help="external network (default: the platform's)")
    d = esub.add_parser("delete", help="publish eip.deleted and wait until it is released")
    for p, func in ((c, eip_create), (d, eip_delete)):
        _project_arg(p)
        p.add_argument("name", metavar="NAME")
        _timeout_arg(p)
        p.set_defaults(func=func)
    g = esub.add_parser("get", help="the project's EIPs (as `vpcbus get eip`)")
    _project_arg(g)
    g.set_defaults(func=get_eip)

    fip = sub.add_parser("fip", help="create, delete and list floating IPs (1:1 NAT)")
    fsub = fip.add_subparsers(dest="verb", required=True)
    c = fsub.add_parser("create", help="publish fip.created; wait for IPAM and NAT")
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--ip", default=None, help="target address in the project subnet")
    target.add_argument("--vm", default=None, metavar="VM", help="target VM")
    c.add_argument("--interface", default=None, help="the VM's interface (default: default)")
    source = c.add_mutually_exclusive_group()
    source.add_argument("--eip", default=None, help="an existing EIP of the project")
    source.add_argument("--network", default=None,
                        help="network of the FIP's own EIP (default: the platform's)")  # fmt: skip
    d = fsub.add_parser("delete", help="publish fip.deleted and wait until it is gone")
    for p, func in ((c, fip_create), (d, fip_delete)):
        _project_arg(p)
        p.add_argument("name", metavar="NAME")
        _timeout_arg(p)
        p.set_defaults(func=func)
    g = fsub.add_parser("get", help="the project's FIPs (as `vpcbus get fip`)")
    _project_arg(g)
    g.set_defaults(func=get_fip)

    svc = sub.add_parser("svc", help="create, delete and list LoadBalancer services on EIPs")
    ssub = svc.add_subparsers(dest="verb", required=True)
    c = ssub.add_parser("create", help="publish service.created; wait for IPAM and NAT")
    c.add_argument("--port", action="append", required=True, metavar="PORT[:TARGET][/PROTO]",
                   help="e.g. 80:8080/tcp (repeatable)")  # fmt: skip
    backends = c.add_mutually_exclusive_group()
    backends.add_argument("--endpoint", action="append", metavar="IP", help="repeatable")
    backends.add_argument("--selector", metavar="vm=NAME", help="the VM's default interface")
    binding = c.add_mutually_exclusive_group()
    binding.add_argument("--bind-default-gw", action="store_true",
                         help="share the project's default-gw EIP")  # fmt: skip
    binding.add_argument("--bind-eip", metavar="EIP", help="share a named EIP of the project")
    binding.add_argument(
        "--network", default=None, help="network of the service's own EIP (default: the platform's)"
    )
    d = ssub.add_parser("delete", help="publish service.deleted and wait until it is gone")
    for p, func in ((c, svc_create), (d, svc_delete)):
        _project_arg(p)
        p.add_argument("name", metavar="NAME")
        _timeout_arg(p)
        p.set_defaults(func=func)
    g = ssub.add_parser("get", help="the project's LoadBalancer services")
    _project_arg(g)
    g.set_defaults(func=get_svc)

    wl = sub.add_parser("workload", help="attach and detach VM or pod NICs")
    wsub = wl.add_subparsers(dest="verb", required=True)
    a = wsub.add_parser("attach", help="publish workload.attached and wait for its address")
    a.add_argument("--ip", default=None, help="requested static address")
    a.add_argument("--mac", default=None, help="requested MAC")
    d = wsub.add_parser("detach", help="publish workload.detached and wait until released")
    for p, func in ((a, workload_attach), (d, workload_detach)):
        _project_arg(p)
        p.add_argument("--kind", required=True, choices=["pod", "vm"])
        p.add_argument("name", metavar="NAME")
        p.add_argument("--interface", default="default", help="interface (network) name")
        _timeout_arg(p)
        p.set_defaults(func=func)
