"""``vpcbus render kube-ovn ORG/PROJECT --cidr CIDR ...``: a project as the Kube-OVN
manifests of :mod:`vpcbus_kubeovn`, printed as one YAML stream in apply order
(``kubectl apply -f -`` takes it as is).

Offline: it reads nothing from the bus or OVN, so what it prints is what the arguments say,
not what IPAM allocated (EIP addresses are left to Kube-OVN unless known). ``--gateway`` is
the egress network's gateway, the VPC's default route; without it there is none.

Exit codes: 0 printed; 1 the arguments make no valid project (``error: ...``); 2 usage.

Registered by :func:`vpcbus.__main__.build_parser` through :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import sys

import yaml
from pydantic import ValidationError

from vpcbus.common import EXIT_FAILED, EXIT_OK, CliError, invalid, parse_ref
from vpcbus_kubeovn import manifests
from vpcbus_proto.members import EipSpec
from vpcbus_proto.projects import ProjectSpec


def render_kube_ovn(args: argparse.Namespace) -> int:
    org, project = parse_ref(args.project)
    try:
        spec = ProjectSpec(
            organization=org,
            name=project,
            cidr_block=args.cidr,
            egress_network_type=args.egress,
            gw_lan_ip=args.gw_lan_ip,
        )
    except ValidationError as exc:
        raise invalid("project", exc) from None
    try:
        eips = [EipSpec(organization=org, project=project, name=n) for n in args.eip]
    except ValidationError as exc:
        raise invalid("EIP", exc) from None
    try:
        objects = manifests(spec, gateway_ip=args.gateway, eips=eips, exclude_ips=args.exclude)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True))
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``vpcbus render kube-ovn``."""
    render = sub.add_parser("render", help="print a project as manifests of another system")
    rsub = render.add_subparsers(dest="target", required=True)
    ko = rsub.add_parser(
        "kube-ovn", help="the project's Kube-OVN objects (Vpc, Subnet, OvnEip, NAT, VpcDns)"
    )
    ko.add_argument("project", metavar="ORG/PROJECT")
    ko.add_argument("--cidr", required=True, help="cidrBlock, e.g. 10.0.0.0/24")
    ko.add_argument("--egress", default="cloud", choices=["cloud", "public"])
    ko.add_argument("--gateway", metavar="IP", help="the egress network's gateway (default route)")
    ko.add_argument("--gw-lan-ip", metavar="IP", help="gateway address inside the CIDR")
    ko.add_argument(
        "--exclude", action="append", default=[], metavar="IP",
        help="address or range a..b the subnet must not hand out (repeatable)",
    )  # fmt: skip
    ko.add_argument(
        "--eip", action="append", default=[], metavar="NAME", help="a user EIP (repeatable)"
    )
    ko.set_defaults(func=render_kube_ovn)
