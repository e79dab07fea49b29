"""``vpcbus dns list|resolve``: a project's DNS zone, as its workloads see it.

Both ask the DNS service (``vpcbus.svc.dns.zone``), which answers from the OVN ``DNS`` row on
the project's switch: what the chassis really answers, not what was asked for. ``list``
prints every name with its addresses and owner (``stale`` for a served name the project no
longer wants: a drift the next reconcile removes) and the resolver the workloads use.
``resolve`` answers a name the way a workload's stub resolver would: the name and its
search-list expansions, in glibc's order, looked up in the zone; a name outside the zone
goes to the project's upstream resolvers, which ``resolve`` names but does not ask (they are
reachable from the project's network, not necessarily from here).

Exit codes: 0 found (``list``: the project has a zone); 1 not in the zone, or no zone;
4 no DNS service answered.

Registered by :func:`vpcbus.__main__.build_parser` through :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import json

from vpcbus import tables
from vpcbus.client import EndpointError
from vpcbus.common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, CliError, connect, parse_ref
from vpcbus_proto.zones import ZoneReply


async def _zone(args: argparse.Namespace) -> ZoneReply:
    org, project = parse_ref(args.project)
    client = await connect(args.home)
    try:
        return await client.zone(org, project)
    except EndpointError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from exc
    finally:
        await client.close()


def _resolver_lines(zone: ZoneReply) -> list[str]:
    if zone.resolver is None:
        return []
    r = zone.resolver
    return [
        f"nameservers: {' '.join(r.nameservers)}",
        f"search: {' '.join(r.search)}",
        f"options: {' '.join(r.options) or '-'}",
    ]


async def dns_list(args: argparse.Namespace) -> int:
    zone = await _zone(args)
    if args.output == "json":
        print(zone.model_dump_json(by_alias=True, indent=2))
        return EXIT_OK if zone.served else EXIT_FAILED
    if not zone.served:
        print(f"zone {zone.zone}: not served (no project, or not built yet)")
        return EXIT_FAILED
    print(f"zone {zone.zone}: {len(zone.records)} names")
    for line in _resolver_lines(zone):
        print(line)
    print()
    rows = [[r.name, "A", " ".join(r.addresses), r.source, r.owner or "-"] for r in zone.records]
    tables.show(["NAME", "TYPE", "ADDRESSES", "SOURCE", "OWNER"], rows)
    return EXIT_OK


async def dns_resolve(args: argparse.Namespace) -> int:
    zone = await _zone(args)
    tried = zone.candidates(args.name)
    for name in tried:
        record = zone.lookup(name)
        if record is not None:
            if args.output == "json":
                print(json.dumps({"query": args.name, **record.model_dump(mode="json")}))
            else:
                owner = f" ({record.source} {record.owner})" if record.owner else ""
                print(f"{record.name} A {' '.join(record.addresses)}{owner}")
            return EXIT_OK
    upstream = zone.resolver.nameservers if zone.resolver else []
    where = f"the project's resolvers ({', '.join(upstream)})" if upstream else "no resolver"
    raise CliError(
        f"{args.name}: not in zone {zone.zone} (tried {', '.join(tried)}); "
        f"a workload's query goes on to {where}",
        EXIT_FAILED,
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus dns list|resolve``."""
    dns = sub.add_parser("dns", help="a project's DNS zone, as its workloads see it")
    dsub = dns.add_subparsers(dest="verb", required=True)
    ls = dsub.add_parser("list", help="every name the project's switch answers, with its owner")
    ls.set_defaults(func=dns_list)
    rs = dsub.add_parser("resolve", help="answer a name as a workload of the project would")
    rs.add_argument("name", metavar="NAME")
    rs.set_defaults(func=dns_resolve)
    for p in (ls, rs):
        p.add_argument("-p", "--project", required=True, metavar="ORG/PROJECT")
        p.add_argument("-o", "--output", choices=["table", "json"], default="table")
