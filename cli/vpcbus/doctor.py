"""``vpcbus doctor [-p ORG/PROJECT] [--fix] [--json]``: is everything what it should be?

Asks every service (``vpcbus.svc.<service>.doctor``, :mod:`vpcbus_proto.doctor`) to audit its
projects against its backend: VPC, NAT and DNS run their own reconcile in a dry run against
OVN NB (what it would create, change or delete is ``missing``, ``drifted``, ``extra`` or
``orphan``), IPAM audits its address book (``leak``, ``duplicate``, ``unbound``, ``dangling``,
``outside``, ``orphan``). Then it reads OVN NB itself and cross-checks it with IPAM's
published allocations and the services' records (:mod:`vpcbus.crosschecks`). Nothing is
written. With ``--backend kube-ovn`` (default: ``VPCBUS_BACKEND``, as the services read it)
there is no OVN NB to read: the services audit their Kube-OVN objects (missing, drifted,
extra, orphan, by their ownership labels) and the doctor adds no cross-check.

``--fix``: each service reconciles every project it found something wrong with (the normal
path) and audits it again; the doctor asks again, about once a second, until nothing is
left, nothing changes any more, or ``--timeout`` is over (a repair may wait for another
service's: NAT's rule for VPC's router). It prints what was fixed and what is left.

Exit codes: 0 nothing wrong (after ``--fix``: nothing left); 1 findings; 2 usage error;
4 NATS or OVN NB unreachable, or a service did not answer.

Registered by :func:`vpcbus.__main__.build_parser` through :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import nats.errors
from nats.errors import NoRespondersError
from nats.js.errors import BucketNotFoundError, NoKeysError
from pydantic import ValidationError

from vpcbus import crosschecks, tables
from vpcbus.client import Client
from vpcbus.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    connect,
    endpoints,
    parse_ref,
)
from vpcbus_proto import names, subjects
from vpcbus_proto.doctor import DOCTOR_ENDPOINT, DoctorReply, DoctorRequest, Finding
from vpcbus_proto.endpoints import ERROR_CODE_HEADER, ERROR_HEADER
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.errors import ReconcileError
from vpcbus_runtime.ovn import NbSession
from vpcbus_runtime.settings import BACKENDS

#: Seconds between two rounds of ``--fix``.
ROUND = 1.0


async def ask(
    client: Client, service: ServiceName, req: DoctorRequest, timeout: float
) -> DoctorReply:
    """One service's audit; :class:`CliError` (exit 4) when it does not answer or fails."""
    subject = DOCTOR_ENDPOINT.format(service=service)
    body = req.model_dump_json(by_alias=True, exclude_none=True).encode()
    try:
        msg = await client.nc.request(subject, body, timeout=timeout)
    except (NoRespondersError, nats.errors.TimeoutError) as exc:
        raise CliError(f"no {service} service answered {subject}", EXIT_UNREACHABLE) from exc
    headers = msg.headers or {}
    if headers.get(ERROR_HEADER):
        code = headers.get(ERROR_CODE_HEADER, "")
        raise CliError(
            f"{service} answered {code}: {headers[ERROR_HEADER]}",
            EXIT_UNREACHABLE if code == "503" else EXIT_FAILED,
        )
    try:
        return DoctorReply.model_validate_json(msg.data)
    except ValidationError as exc:
        raise CliError(f"{service} answered what is not a doctor reply: {exc}") from exc


async def record_keys(client: Client) -> set[str]:
    """Every project key any service has a record of (tombstones too)."""
    keys: set[str] = set()
    for service in subjects.SERVICES:
        try:
            kv = await client.js.key_value(subjects.kv_bucket(service))
            found = await kv.keys()
        except (NoKeysError, BucketNotFoundError):
            continue
        keys |= {k.removeprefix("project.") for k in found if k.startswith("project.")}
    return keys


async def cross_check(client: Client, nb_db: str, only: str | None) -> list[Finding]:
    """The cross-check of :mod:`vpcbus.crosschecks`, over a fresh read of NB."""
    nb = NbSession(nb_db, timeout=10.0)
    try:
        view = await nb.read(crosschecks.snapshot)
    except ReconcileError as exc:
        raise CliError(f"cannot read OVN NB at {nb_db}: {exc.message}", EXIT_UNREACHABLE) from exc
    finally:
        await asyncio.to_thread(nb.close)
    statuses = await client.all_statuses()
    return crosschecks.cross_check(view, statuses, await record_keys(client), only)


async def audit(
    client: Client, nb_db: str | None, req: DoctorRequest, timeout: float
) -> tuple[list[DoctorReply], list[Finding]]:
    """Every service's reply, and every finding: the services', then the cross-check's of
    OVN NB at ``nb_db`` (None: no NB, the Kube-OVN backend) that no service reported (a row
    is named once)."""
    replies = list(await asyncio.gather(*(ask(client, s, req, timeout) for s in subjects.SERVICES)))
    found = [f for r in replies for f in r.findings]
    if nb_db is None:
        return replies, found
    seen = {(f.project, f.object) for f in found}
    found += [
        f for f in await cross_check(client, nb_db, req.key) if (f.project, f.object) not in seen
    ]
    return replies, found


async def doctor_cmd(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project) if args.project else (None, None)
    req = DoctorRequest(organization=org, project=project, fix=args.fix)
    if args.backend not in BACKENDS:  # a bad VPCBUS_BACKEND (argparse checks only --backend)
        want = ", ".join(BACKENDS)
        raise CliError(f"backend {args.backend!r}: want one of {want}", EXIT_USAGE)
    nb_db = endpoints(args.home)["nb"] if args.backend == "ovn" else None
    client = await connect(args.home)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        replies, found = await audit(client, nb_db, req, args.timeout)
        seen = [*found, *(f for r in replies for f in r.fixed)]  # before any repair
        while args.fix and found and loop.time() + ROUND < deadline:
            await asyncio.sleep(ROUND)
            before = found
            replies, found = await audit(client, nb_db, req, max(deadline - loop.time(), 1.0))
            seen += [f for r in replies for f in r.fixed]
            if found == before and not any(r.fixed for r in replies):
                break  # no progress: what is left needs more than a reconcile
    finally:
        await client.close()
    fixed = [f for f in dict.fromkeys(seen) if f not in set(found)] if args.fix else []
    show(replies, found, fixed, as_json=args.json)
    return EXIT_FAILED if found else EXIT_OK


def _project(key: str) -> str:
    try:
        return "/".join(names.split_key(key))
    except ValueError:
        return key


def show(
    replies: list[DoctorReply], found: list[Finding], fixed: list[Finding], *, as_json: bool
) -> None:
    counts = {r.service: r.projects for r in replies}
    if as_json:
        print(json.dumps({
            "findings": [f.model_dump(mode="json", by_alias=True) for f in found],
            "fixed": [f.model_dump(mode="json", by_alias=True) for f in fixed],
            "projects": counts,
            "truncated": any(r.truncated for r in replies),
        }, indent=2))  # fmt: skip
        return
    heads = ["SERVICE", "PROJECT", "KIND", "OBJECT", "DETAIL"]

    def rows(items: list[Finding]) -> list[list[str]]:
        return [[f.service, _project(f.project), f.kind, f.object, f.detail] for f in items]

    if fixed:
        print(f"fixed {len(fixed)}:")
        tables.show(heads, rows(fixed))
        print()
    if found:
        tables.show(heads, rows(found))
        print()
    audited = ", ".join(f"{s} {n}" for s, n in counts.items())
    more = " (more than the replies hold: truncated)" if any(r.truncated for r in replies) else ""
    verdict = f"{len(found)} findings{more}" if found else "nothing wrong"
    print(f"doctor: {verdict}; projects audited: {audited}")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus doctor``."""
    d = sub.add_parser(
        "doctor",
        help="compare desired state with OVN NB and IPAM's allocations; --fix repairs",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    d.add_argument("-p", "--project", metavar="ORG/PROJECT", help="only this project")
    d.add_argument("--fix", action="store_true", help="reconcile what is wrong, then audit again")
    d.add_argument("--json", action="store_true", help="print the findings as JSON")
    d.add_argument(
        "--backend", choices=BACKENDS,
        default=os.environ.get("VPCBUS_BACKEND", "ovn").strip().lower() or "ovn",
        help="the services' backend: ovn also cross-checks OVN NB (default: $VPCBUS_BACKEND "
        "or ovn)",
    )  # fmt: skip
    d.add_argument(
        "--timeout", type=float, default=60.0,
        help="seconds for an audit, and for --fix altogether (default %(default)s)",
    )  # fmt: skip
    d.set_defaults(func=doctor_cmd)
