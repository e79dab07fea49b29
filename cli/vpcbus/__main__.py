"""``vpcbus``: publish lifecycle events, read status, trace packets, run the stack.

Exit codes: 0 success; 1 the request was rejected or failed (the message says why);
2 usage error; 3 timed out waiting; 4 cannot reach NATS or OVN.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from vpcbus import (
    addressing,
    auth,
    dashboard,
    doctor,
    rendering,
    stack,
    tables,
    tracing,
    vms,
    watching,
    zones,
)
from vpcbus.client import NotAllowedError, RejectedError, WaitTimeoutError, deleted_at, ready_at
from vpcbus.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    connect,
    endpoints,
    invalid,
    parse_ref,
)
from vpcbus.progress import Progress
from vpcbus_proto import names, subjects
from vpcbus_proto.projects import ProjectRef, ProjectSpec
from vpcbus_proto.status import project_ready
from vpcbus_runtime import logs


async def project_upsert(args: argparse.Namespace, *, update: bool) -> int:
    org, name = parse_ref(args.project)
    try:
        spec = ProjectSpec(
            organization=org,
            name=name,
            cidr_block=args.cidr,
            egress_network_type=args.egress,
            gw_lan_ip=args.gw_lan_ip,
        )
    except ValidationError as exc:
        raise invalid("project", exc) from exc
    client = await connect(args.home)
    try:
        watch = await client.watch(org, name)
        published = await client.upsert(spec, update=update, generation=args.generation)
        verb = "updated" if update else "created"
        print(f"project {org}/{name} {verb} (generation {published.generation})")
        if not args.wait:
            return EXIT_OK
        await watch.until(
            ready_at(published.generation), timeout=args.timeout, event_id=published.event_id,
            progress=Progress(f"{org}/{name}", published.generation),
        )  # fmt: skip
        print(f"project {org}/{name} is Ready")
        return EXIT_OK
    finally:
        await client.close()


async def project_delete(args: argparse.Namespace) -> int:
    org, name = parse_ref(args.project)
    client = await connect(args.home)
    try:
        watch = await client.watch(org, name)
        published = await client.delete(ProjectRef(organization=org, name=name))
        print(f"project {org}/{name} deletion requested (generation {published.generation})")
        if args.wait:
            await watch.until(
                deleted_at(published.generation), timeout=args.timeout,
                event_id=published.event_id,
                progress=Progress(f"{org}/{name}", published.generation),
            )  # fmt: skip
            print(f"project {org}/{name} deleted")
        return EXIT_OK
    finally:
        await client.close()


async def project_list(args: argparse.Namespace) -> int:
    client = await connect(args.home)
    try:
        everything = await client.all_statuses()
    finally:
        await client.close()
    rows = []
    now = datetime.now(UTC)
    for key in sorted(everything):
        st = everything[key]
        if st and all(s.state == "Deleted" for s in st.values()):
            continue
        ipam = st.get("ipam")
        facts = ipam.addresses if ipam else None
        first = min(s.observed_at for s in st.values())
        org, name = names.split_key(key)
        rows.append([
            f"{org}/{name}", names.namespace(org, name),
            facts.cidr_block if facts else "-", facts.egress_network_type if facts else "-",
            str(project_ready(st)).lower(), tables.age(now - first),
        ])  # fmt: skip
    tables.show(["NAME", "NAMESPACE", "CIDR", "EGRESS", "READY", "AGE"], rows)
    return EXIT_OK


async def project_get(args: argparse.Namespace) -> int:
    org, name = parse_ref(args.project)
    client = await connect(args.home)
    try:
        st = await client.statuses(org, name)
    finally:
        await client.close()
    if not st:
        raise CliError(f"project {org}/{name} not found")
    rows = [
        [s, v.state, str(v.generation), v.reason, v.message]
        for s, v in sorted(st.items(), key=lambda kv: subjects.SERVICES.index(kv[0]))
    ]
    tables.show(["SERVICE", "STATE", "GENERATION", "REASON", "MESSAGE"], rows)
    print(f"ready: {str(project_ready(st)).lower()}")
    return EXIT_OK


def trace_cmd(args: argparse.Namespace) -> int:
    org, name = parse_ref(args.project)
    ep = endpoints(args.home)
    protocol, port = "icmp", None
    if args.tcp is not None:
        protocol, port = "tcp", args.tcp
    elif args.udp is not None:
        protocol, port = "udp", args.udp
    for address in (args.src, args.dst):
        try:
            ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise CliError(f"{address!r} is not an IPv4 address", EXIT_USAGE) from exc
    packet = tracing.Packet(args.src, args.dst, protocol, port)
    try:
        verdict = tracing.trace(ep["nb"], ep["sb"], org, name, packet)
    except tracing.ProjectNotFoundError as exc:
        raise CliError(
            f"project {org}/{name} has no VPC in OVN ({exc}): not created, not Ready yet, "
            "or deleted; see `vpcbus project get`"
        ) from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip() or str(exc)
        code = EXIT_UNREACHABLE if "connection" in detail.lower() else EXIT_FAILED
        raise CliError(f"trace failed: {detail}", code) from exc
    if args.verbose:
        print(verdict.raw)
    print(verdict.words())
    return EXIT_OK if verdict.delivered else EXIT_FAILED


async def errors_cmd(args: argparse.Namespace) -> int:
    client = await connect(args.home)
    try:
        errs = await client.errors(args.limit)
    finally:
        await client.close()
    rows = [
        [
            e.time.strftime("%H:%M:%S"),
            e.service,
            e.kind,
            f"{e.organization or '_'}/{e.project or '_'}",
            e.reason,
            e.message[:80],
        ]
        for e in errs
    ]
    tables.show(["TIME", "SERVICE", "KIND", "PROJECT", "REASON", "MESSAGE"], rows)
    return EXIT_OK


def up_cmd(args: argparse.Namespace) -> int:
    with_chassis = not args.no_chassis and os.geteuid() == 0
    if args.foreground:
        stack.run(args.home, nats_port=args.nats_port, with_chassis=with_chassis)
        return EXIT_OK
    started = time.monotonic()
    try:
        state = stack.up(args.home, nats_port=args.nats_port, with_chassis=with_chassis)
    except TimeoutError as exc:
        raise CliError(str(exc), EXIT_TIMEOUT) from exc
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    print(f"vpcbus is up in {time.monotonic() - started:.1f}s (home {state.home})")
    print(f"  NATS_URL={state.nats_url}")
    print(f"  OVN_NB_DB={state.ovn_nb_db}")
    cli_password = auth.password_file(Path(state.home) / auth.AUTH_DIR, auth.CLI_PRINCIPAL)
    print(f"  NATS_USER={auth.CLI_PRINCIPAL} NATS_PASSWORD_FILE={cli_password}")
    print(f"  chassis: {state.chassis or 'none (run as root for a local data path)'}")
    return EXIT_OK


def down_cmd(args: argparse.Namespace) -> int:
    print("vpcbus stopped" if stack.down(args.home) else "vpcbus was not running")
    return EXIT_OK


def service_cmd(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", f"vpcbus_{args.name}"]
    os.execv(argv[0], argv)


def ovn_central_cmd(args: argparse.Namespace) -> int:
    """Run OVN NB + SB + northd in the foreground (the compose ovn-central container)."""
    from vpcbus.embedded import procs
    from vpcbus.embedded.ovn import OvnCentral

    central = OvnCentral(
        Path(args.rundir), nb_remotes=args.nb_remote or (), sb_remotes=args.sb_remote or ()
    )
    # Before start(): a SIGTERM while the daemons come up must still stop them (they detach).
    stopping = procs.stop_requested()
    try:
        central.start()
        print(f"ovn-central ready: OVN_NB_DB={central.nb_db} OVN_SB_DB={central.sb_db}", flush=True)
        while not stopping() and central.is_running():
            time.sleep(0.5)
    finally:
        central.stop()
    return EXIT_OK


def chassis_cmd(args: argparse.Namespace) -> int:
    """Run a userspace OVN chassis in the foreground (the compose chassis container)."""
    if os.geteuid() != 0:
        raise CliError("vpcbus chassis needs root (network namespaces, OVS)")
    endpoints_ = endpoints(args.home)
    try:
        stack.run_chassis(
            args.home, sb_db=args.sb_db, nb_db=endpoints_["nb"], nats_url=endpoints_["nats"],
            name=args.name, upstream=not args.no_upstream,
        )  # fmt: skip
    except RuntimeError as exc:  # procs.StartupError / CommandError, or a home in use
        raise CliError(str(exc)) from exc
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpcbus", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--home",
        type=Path,
        default=stack.default_home(),
        help="embedded stack directory (default: %(default)s; env VPCBUS_HOME)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the embedded stack (nats, OVN, chassis, services)")
    up.add_argument("--foreground", action="store_true", help="run the supervisor here")
    up.add_argument("--no-chassis", action="store_true", help="no local data path")
    up.add_argument("--nats-port", type=int, default=4222)
    up.set_defaults(func=up_cmd)
    sub.add_parser("down", help="stop the embedded stack").set_defaults(func=down_cmd)

    svc = sub.add_parser("service", help="run one service in the foreground")
    svc.add_argument("name", choices=subjects.SERVICES)
    svc.set_defaults(func=service_cmd)

    ch = sub.add_parser("chassis", help="run a userspace OVN chassis in the foreground")
    ch.add_argument("--sb-db", required=True, help="OVN SB database, e.g. tcp:ovn-central:6642")
    ch.add_argument("--name", default=stack.CHASSIS_NAME, help="system-id (chassis name)")
    ch.add_argument("--no-upstream", action="store_true",
                    help="no stand-in upstream host on the cloud network")  # fmt: skip
    ch.set_defaults(func=chassis_cmd)

    oc = sub.add_parser("ovn-central", help="run OVN NB/SB/northd in the foreground")
    oc.add_argument("--rundir", required=True)
    oc.add_argument("--nb-remote", action="append", help="extra NB listener, e.g. ptcp:6641")
    oc.add_argument("--sb-remote", action="append", help="extra SB listener, e.g. ptcp:6642")
    oc.set_defaults(func=ovn_central_cmd)

    proj = sub.add_parser("project", help="create, update, delete, list projects")
    psub = proj.add_subparsers(dest="verb", required=True)
    for verb in ("create", "update"):
        c = psub.add_parser(verb, help=f"{verb} a project (publishes project.{verb}d)")
        c.add_argument("project", metavar="ORG/PROJECT")
        c.add_argument("--cidr", required=True, help="cidrBlock, e.g. 10.0.0.0/24")
        c.add_argument("--egress", default="cloud", choices=["cloud", "public"])
        c.add_argument("--gw-lan-ip", default=None, help="gateway address inside the CIDR")
        c.add_argument("--generation", type=int, default=None, help="explicit generation")
        _wait_args(c)
        c.set_defaults(func=lambda a, u=(verb == "update"): project_upsert(a, update=u))
    d = psub.add_parser("delete", help="delete a project (publishes project.deleted)")
    d.add_argument("project", metavar="ORG/PROJECT")
    _wait_args(d)
    d.set_defaults(func=project_delete)
    psub.add_parser("list", help="list projects").set_defaults(func=project_list)
    g = psub.add_parser("get", help="per-service conditions of one project")
    g.add_argument("project", metavar="ORG/PROJECT")
    g.set_defaults(func=project_get)

    get = sub.add_parser("get", help="show resources")
    gsub = get.add_subparsers(dest="kind", required=True)
    addressing.add_get_parsers(gsub)
    addressing.add_parsers(sub)
    vms.add_parsers(sub)
    dashboard.add_parsers(sub)
    watching.add_parsers(sub)
    zones.add_parsers(sub)
    rendering.add_parsers(sub)
    doctor.add_parsers(sub)
    auth.add_parsers(sub)

    tr = sub.add_parser("trace", help="explain a packet's path with ovn-trace")
    tr.add_argument("project", metavar="ORG/PROJECT")
    tr.add_argument("src")
    tr.add_argument("dst")
    proto = tr.add_mutually_exclusive_group()
    proto.add_argument("--tcp", type=int, metavar="PORT")
    proto.add_argument("--udp", type=int, metavar="PORT")
    tr.add_argument("-v", "--verbose", action="store_true", help="print the full trace")
    tr.set_defaults(func=trace_cmd)

    er = sub.add_parser("errors", help="recent rejected and dead-lettered events")
    er.add_argument("--limit", type=int, default=20)
    er.set_defaults(func=errors_cmd)
    return p


def _wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="wait until done (or rejected)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Libraries the CLI runs in-process (the doctor's NB session) log to stderr, warnings up:
    # stdout is the command's output (JSON for --json), which a log line would corrupt.
    logs.configure("cli", fmt="console", level="warning")
    try:
        result = args.func(args)
        code = asyncio.run(result) if asyncio.iscoroutine(result) else result
    except RejectedError as exc:
        for err in exc.errors:
            print(f"error: {err.service}: {err.reason}: {err.message}", file=sys.stderr)
        code = EXIT_FAILED
    except WaitTimeoutError as exc:
        print(f"error: timed out waiting: {exc}", file=sys.stderr)
        code = EXIT_TIMEOUT
    except NotAllowedError as exc:  # the server's permissions (vpcbus_proto.permissions)
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:  # Ctrl-C: what was published stays published; no traceback
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
