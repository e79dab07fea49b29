"""What the fuzz and chaos suites check the system against: the NB as it is, read in one
OVSDB query, and compared row by row with what the services' statuses say it must be; and
IPAM's address bucket, audited for duplicates and leaks.

Independent of the services' own desired-state code on purpose (VPC, NAT and load-balancer
rows are derived here from IPAM's status by the rules of docs/architecture.md), except for
the DNS zone, whose naming rules belong to the DNS service (:func:`vpcbus_dns.desired.build`).
A future ``vpcbus doctor`` answers the same questions from the operator's side.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NoKeysError

from vpcbus.embedded import procs
from vpcbus_dns import desired as dns_desired
from vpcbus_proto import names, subjects
from vpcbus_proto.status import AddressFacts, ServiceStatus
from vpcbus_vpc.desired import NEIGHBOUR_OPTIONS

#: Every NB table a service writes rows of a project into.
TABLES = (
    "Logical_Router",
    "Logical_Router_Port",
    "Logical_Router_Static_Route",
    "Logical_Switch",
    "Logical_Switch_Port",
    "NAT",
    "Load_Balancer",
    "DNS",
    "ACL",
)
OWNER = "vpcbus-owner"
PROJECT = "vpcbus-project"

Row = dict[str, Any]
Dump = dict[str, list[Row]]


# -- reading the NB --------------------------------------------------------------------------


def _atom(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and value[0] in ("uuid", "named-uuid"):
        return value[1]
    return value


def _value(value: Any) -> Any:
    """OVSDB JSON to Python: a set becomes a list, a map a dict, a UUID its string. A set of
    one element is sent bare, so read set columns with :func:`members`."""
    if isinstance(value, list) and len(value) == 2:
        if value[0] == "set":
            return [_atom(v) for v in value[1]]
        if value[0] == "map":
            return {_atom(k): _atom(v) for k, v in value[1]}
    return _atom(value)


def members(row: Row, column: str) -> list[Any]:
    """A set column as a list, whether the NB sent it as a set or as its one bare element."""
    value = row.get(column)
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def nb_dump(nb_db: str) -> Dump:
    """Every row (every column, ``_uuid`` and ``_version`` too) of :data:`TABLES` in one
    read-only OVSDB transaction, so the tables agree with each other."""
    ops = [{"op": "select", "table": table, "where": []} for table in TABLES]
    out = procs.run(["ovsdb-client", "query", nb_db, json.dumps(["OVN_Northbound", *ops])])
    results = json.loads(out.stdout)
    return {
        table: [{col: _value(v) for col, v in row.items()} for row in result["rows"]]
        for table, result in zip(TABLES, results, strict=True)
    }


def project_of(row: Row) -> str | None:
    ids = row.get("external_ids")
    return ids.get(PROJECT) if isinstance(ids, dict) else None


def owned(dump: Dump, key: str) -> dict[str, list[Row]]:
    """The rows of one project (``external_ids:vpcbus-project``), by table, sorted by UUID."""
    out: dict[str, list[Row]] = {}
    for table, rows in dump.items():
        mine = sorted((r for r in rows if project_of(r) == key), key=lambda r: str(r["_uuid"]))
        if mine:
            out[table] = mine
    return out


def projects_in(dump: Dump) -> set[str]:
    return {key for rows in dump.values() for r in rows if (key := project_of(r)) is not None}


# -- what the NB must hold for a project ------------------------------------------------------


def _by_uuid(dump: Dump, table: str) -> dict[str, Row]:
    return {str(r["_uuid"]): r for r in dump[table]}


def _named(dump: Dump, table: str, name: str) -> list[Row]:
    return [r for r in dump[table] if r.get("name") == name]


def nb_problems(
    dump: Dump,
    key: str,
    ipam: ServiceStatus | None,
    *,
    chassis: str,
    upstream: Iterable[str] = (),
) -> list[str]:
    """How the NB rows of a project differ from what IPAM's Ready status says they must be:
    the router, switch, ports, route, SNAT and FIP rules, load balancers and DNS zone, and
    nothing else of the project. ``ipam`` None: the project must have no row at all."""
    rows = owned(dump, key)
    if ipam is None or ipam.state != "Ready" or ipam.addresses is None:
        return [f"{key}: rows left in {table}" for table in rows]
    facts = ipam.addresses
    org, project = names.split_key(key)
    ns = names.namespace(org, project)
    problems: list[str] = []

    def fail(what: str) -> None:
        problems.append(f"{key}: {what}")

    gw = facts.eip("default-gw")
    if gw is None:
        return [f"{key}: IPAM reports no default-gw EIP"]
    prefix = IPv4Network(facts.cidr_block).prefixlen
    ext = names.external_switch(gw.network)
    lan_lrp, ext_lrp = f"{ns}-{ns}-default", f"{ns}-{ext}"
    lan_lsp, ext_lsp = f"{ns}-default-{ns}", f"{ext}-{ns}"

    # Router, its two ports and its default route.
    routers = [r for r in rows.get("Logical_Router", []) if r["name"] == ns]
    if len(routers) != 1 or len(rows.get("Logical_Router", [])) != 1:
        fail(f"routers {[r['name'] for r in rows.get('Logical_Router', [])]}, want [{ns}]")
        return problems
    router = routers[0]
    if router["options"] != {"chassis": chassis, **NEIGHBOUR_OPTIONS}:
        fail(f"router options {router['options']}")
    lrps = _by_uuid(dump, "Logical_Router_Port")
    ports = {lrps[u]["name"]: lrps[u] for u in members(router, "ports") if u in lrps}
    want_lrps = {
        lan_lrp: f"{facts.gateway_ip}/{prefix}",
        ext_lrp: f"{gw.ip_address}/{gw.prefix_length}",
    }
    got_lrps = {name: members(p, "networks") for name, p in ports.items()}
    if got_lrps != {n: [net] for n, net in want_lrps.items()}:
        fail(f"router ports {got_lrps}, want {want_lrps}")
    if {r["name"] for r in rows.get("Logical_Router_Port", [])} != set(want_lrps):
        fail(f"owned router ports {[r['name'] for r in rows.get('Logical_Router_Port', [])]}")
    routes = _by_uuid(dump, "Logical_Router_Static_Route")
    got_routes = sorted(
        (routes[u]["ip_prefix"], routes[u]["nexthop"])
        for u in members(router, "static_routes")
        if u in routes
    )
    if got_routes != [("0.0.0.0/0", gw.gateway)]:
        fail(f"routes {got_routes}, want 0.0.0.0/0 via {gw.gateway}")

    # The project switch: its router port, one port per addressed NIC, nothing else.
    switches = [s for s in rows.get("Logical_Switch", []) if s["name"] == f"{ns}-default"]
    if len(switches) != 1 or len(rows.get("Logical_Switch", [])) != 1:
        fail(f"switches {[s['name'] for s in rows.get('Logical_Switch', [])]}")
        return problems
    switch = switches[0]
    lsps = _by_uuid(dump, "Logical_Switch_Port")
    on_switch = {lsps[u]["name"]: lsps[u] for u in members(switch, "ports") if u in lsps}
    want_ports = {
        names.workload_port(ns, w.name, w.interface): f"{w.mac_address} {w.ip_address}"
        for w in facts.workloads
    }
    got_ports = {
        n: (members(p, "addresses"), members(p, "port_security"))
        for n, p in on_switch.items()
        if n != lan_lsp
    }
    expect_ports = {n: ([a], [a]) for n, a in want_ports.items()}
    if got_ports != expect_ports:
        diff = sorted(set(got_ports) ^ set(expect_ports))[:6]
        wrong = [n for n in set(got_ports) & set(expect_ports) if got_ports[n] != expect_ports[n]]
        fail(f"workload ports differ: missing/extra {diff}, wrong {sorted(wrong)[:6]}")
    lan = on_switch.get(lan_lsp)
    if lan is None or lan["type"] != "router" or lan["options"].get("router-port") != lan_lrp:
        fail(f"switch port {lan_lsp}: {lan and (lan['type'], lan['options'])}")
    ext_ports = [p for p in _named(dump, "Logical_Switch_Port", ext_lsp) if project_of(p) == key]
    ext_switch = _named(dump, "Logical_Switch", ext)
    attached = ext_switch and any(
        str(p["_uuid"]) in members(ext_switch[0], "ports") for p in ext_ports
    )
    if len(ext_ports) != 1 or not attached or ext_ports[0]["options"].get("router-port") != ext_lrp:
        fail(f"external switch port {ext_lsp} missing or not on {ext}")
    owned_lsps = {p["name"] for p in rows.get("Logical_Switch_Port", [])}
    if owned_lsps != {lan_lsp, ext_lsp, *want_ports}:
        fail(f"owned switch ports differ by {sorted(owned_lsps ^ {lan_lsp, ext_lsp, *want_ports})}")

    # NAT: SNAT of the subnet to default-gw, one dnat_and_snat per ready FIP; nothing else.
    nats = _by_uuid(dump, "NAT")
    got_nat = sorted(
        (nats[u]["type"], nats[u]["logical_ip"], nats[u]["external_ip"])
        for u in members(router, "nat")
        if u in nats
    )
    want_nat = sorted(
        [("snat", facts.cidr_block, gw.ip_address)]
        + [
            ("dnat_and_snat", f.target_ip, f.external_ip)
            for f in facts.fips
            if f.ready and f.external_ip and f.target_ip
        ]
    )
    if got_nat != want_nat:
        fail(f"NAT {got_nat}, want {want_nat}")
    if len(rows.get("NAT", [])) != len(want_nat):
        fail(f"{len(rows.get('NAT', []))} NAT rows of the project, want {len(want_nat)}")

    # Load balancers: per ready service and protocol, attached to the router.
    want_lbs = _balancers(ns, facts)
    got_lbs = {lb["name"]: (lb["protocol"], lb["vips"]) for lb in rows.get("Load_Balancer", [])}
    if got_lbs != want_lbs:
        fail(f"load balancers {got_lbs}, want {want_lbs}")
    lb_uuids = {str(lb["_uuid"]) for lb in rows.get("Load_Balancer", [])}
    if set(members(router, "load_balancer")) != lb_uuids:
        fail("load balancers not attached to the router exactly")

    # DNS: one row, on the project switch only, with the zone the DNS service's rules give.
    zones = rows.get("DNS", [])
    want_zone = dns_desired.build(
        key, ns, facts.gateway_ip, facts.workloads, facts.services, tuple(upstream)
    ).records
    if len(zones) != 1 or zones[0]["records"] != want_zone:
        got = [z["records"] for z in zones]
        fail(f"DNS rows {got}, want {want_zone}")
    elif members(switch, "dns_records") != [str(zones[0]["_uuid"])]:
        fail("the DNS row is not (only) on the project switch")
    if rows.get("ACL"):
        fail("ACLs present while egress isolation is off")
    return problems


def _balancers(ns: str, facts: AddressFacts) -> dict[str, tuple[str, dict[str, str]]]:
    out = {}
    for svc in facts.services:
        if not (svc.ready and svc.ingress_ip and svc.endpoints):
            continue
        for protocol in ("tcp", "udp"):
            vips = {
                f"{svc.ingress_ip}:{p.port}": ",".join(
                    f"{ep}:{p.target_port}" for ep in svc.endpoints
                )
                for p in svc.ports
                if p.protocol.lower() == protocol and p.ready
            }
            if vips:
                out[f"{ns}-svc-{svc.name}-{protocol}"] = (protocol, vips)
    return out


# -- IPAM's address bucket --------------------------------------------------------------------


async def read_addresses(js: JetStreamContext) -> dict[str, dict[str, Any]]:
    """Every live key of IPAM's address bucket with its value (one watch replay): JSON, or
    ``{"value": text}`` for a namespace claim."""
    try:
        kv = await js.key_value(subjects.IPAM_ADDRESSES_BUCKET)
    except BucketNotFoundError:
        return {}
    watcher = await kv.watchall(ignore_deletes=True)
    out = {}
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                try:
                    out[entry.key] = json.loads(entry.value)
                except ValueError:  # ns.<namespace>: the project key as text
                    out[entry.key] = {"value": entry.value.decode()}
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return out


def address_problems(bucket: dict[str, dict[str, Any]]) -> list[str]:
    """Duplicates anywhere in the bucket: an address bound to two holders, a holder holding
    two addresses of one space, or a binding its address key does not confirm."""
    problems = []
    held: dict[str, list[str]] = {}  # "<space> <holder>" -> its held addresses
    binds: dict[str, dict[str, Any]] = {}
    for key, value in bucket.items():
        if key.startswith("bind."):
            binds[key.removeprefix("bind.")] = value
            continue
        space = _space_of(key)
        if space is not None and value.get("held"):
            held.setdefault(f"{space} {value['holder']}", []).append(key.removeprefix(space + "."))
    for who, ips in held.items():
        if len(ips) > 1:
            problems.append(f"{who} holds {sorted(ips)}")
    per_space: dict[str, Counter[str]] = {}
    for rest, value in binds.items():
        space = _space_of(rest)
        if space is None:
            continue
        holder = rest.removeprefix(space + ".")
        per_space.setdefault(space, Counter())[str(value["ip"])] += 1
        if held.get(f"{space} {holder}") != [value["ip"]]:
            problems.append(
                f"{space} {holder} bound to {value['ip']}, holds {held.get(f'{space} {holder}')}"
            )
    for space, counts in per_space.items():
        problems += [f"{space}: {ip} bound {n} times" for ip, n in counts.items() if n > 1]
    return problems


def _space_of(key: str) -> str | None:
    parts = key.split(".")
    width = {"pool": 2, "subnet": 3}.get(parts[0])
    return ".".join(parts[:width]) if width is not None and len(parts) > width else None


def holders(bucket: dict[str, dict[str, Any]], space: str) -> dict[str, str]:
    """Who holds which address of ``space`` (``pool.cloud``, ``subnet.<org>.<project>``)."""
    out = {}
    for key, value in bucket.items():
        if _space_of(key) == space and value.get("held"):
            out[str(value["holder"])] = key.removeprefix(space + ".")
    return out


def keys_of(bucket: dict[str, dict[str, Any]], org: str) -> list[str]:
    """Keys of the bucket that belong to ``org``'s projects: their subnets, bindings,
    namespace claims and any pool address one of them holds or released."""
    out = []
    for key, value in bucket.items():
        named = f".{org}." in f".{key}." or key.startswith(f"ns.{org}-")
        if named or str(value.get("holder", "")).startswith(f"project/{org}."):
            out.append(key)
    return sorted(out)


async def bucket_keys(js: JetStreamContext, bucket: str) -> list[str]:
    try:
        kv = await js.key_value(bucket)
        return list(await kv.keys())
    except (BucketNotFoundError, NoKeysError):
        return []


def usable(ip: str, cidr: str, gateway: str) -> bool:
    net = IPv4Network(cidr)
    addr = IPv4Address(ip)
    return (
        addr in net and addr not in (net.network_address, net.broadcast_address) and (ip != gateway)
    )
