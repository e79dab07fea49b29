"""``vpcbus trace``: run ``ovn-trace`` for a packet from a project and say what happens.

The packet starts at the project's switch when a workload port holds the source address,
otherwise at the router's LAN port (as if sent by a workload at that address). The verdict
lists the datapaths the packet crossed, where it was output, and the SNAT address applied.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from vpcbus_proto import names


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: str = "icmp"  # icmp | tcp | udp
    port: int | None = None

    def match(self) -> str:
        parts = [f"ip4.src == {self.src}", f"ip4.dst == {self.dst}", "ip.ttl == 64"]
        if self.protocol == "icmp":
            parts.append("icmp4 && icmp4.type == 8")
        else:
            parts.append(self.protocol)
            parts.append(f"{self.protocol}.src == 40000")
            if self.port is not None:
                parts.append(f"{self.protocol}.dst == {self.port}")
        return " && ".join(parts)


@dataclass
class Verdict:
    datapaths: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    snat: str | None = None
    dnat: str | None = None
    arp_for: str | None = None
    dropped: bool = False
    raw: str = ""

    @property
    def delivered(self) -> bool:
        return bool(self.outputs) and not self.dropped

    def words(self) -> str:
        where = ", ".join(self.outputs) or "nowhere"
        if self.arp_for:
            text = f"not sent yet: the router first ARPs for {self.arp_for} (no MAC learned)"
        else:
            text = f"{'delivered' if self.delivered else 'dropped'}: output to {where}"
        if self.snat:
            text += f"; source NAT to {self.snat}"
        if self.dnat:
            text += f"; destination NAT to {self.dnat}"
        return text + f"; datapaths: {' -> '.join(self.datapaths)}"


_DP = re.compile(r'^\s*(?:ingress|egress)\(dp="([^"]+)"', re.M)
_OUT = re.compile(r'/\* output to "([^"]+)"(?:, type "([^"]*)")?')
#: Port types that hand the packet to another logical datapath, not out of OVN.
_INTERNAL_TYPES = {"l3gateway", "patch", "router", "chassisredirect"}
_SNAT = re.compile(r"ct_snat\(ip4\.src=([0-9.]+)\)")
_DNAT = re.compile(r"ct_dnat\(ip4\.dst=([0-9.]+)\)")
_ARP_TPA = re.compile(r"arp\.tpa = (0x[0-9a-f]+|[0-9.]+);")


def parse(detailed: str, minimal: str) -> Verdict:
    """A verdict from ovn-trace's detailed and ``--minimal`` outputs."""
    v = Verdict(raw=detailed)
    for dp in _DP.findall(detailed):
        if not v.datapaths or v.datapaths[-1] != dp:
            v.datapaths.append(dp)
    if m := _SNAT.search(minimal):
        v.snat = m.group(1)
    if m := _DNAT.search(minimal):
        v.dnat = m.group(1)
    if "arp {" in minimal and (m := _ARP_TPA.search(minimal)):
        # The packet is parked until the next hop's MAC is known; only an ARP request left.
        raw = m.group(1)
        v.arp_for = (
            ".".join(str((int(raw, 16) >> s) & 255) for s in (24, 16, 8, 0))
            if raw.startswith("0x")
            else raw
        )
        v.dropped = True
        return v
    final = [port for port, kind in _OUT.findall(detailed) if kind not in _INTERNAL_TYPES]
    v.outputs = list(dict.fromkeys(final))
    v.dropped = not v.outputs
    return v


def _nbctl(nb_db: str, *args: str) -> str:
    return subprocess.run(
        ["ovn-nbctl", f"--db={nb_db}", "--timeout=10", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class ProjectNotFoundError(LookupError):
    """The project has no VPC in OVN NB (never created, not built yet, or deleted)."""


def _inport(nb_db: str, namespace: str, src: str) -> tuple[str, str, str, str]:
    """(datapath, inport, eth.src, eth.dst) for a packet sent from ``src`` in the project."""
    switch = f"{namespace}-default"
    router_lan = f"{namespace}-{switch}"
    router_mac = _nbctl(
        nb_db, "--if-exists", "get", "Logical_Router_Port", router_lan, "mac"
    ).strip('"')
    if not router_mac:
        raise ProjectNotFoundError(f"OVN NB has no router port {router_lan}")
    listing = _nbctl(nb_db, "--bare", "--columns=name,addresses", "list", "Logical_Switch_Port")
    blocks = [b.split("\n") for b in listing.split("\n\n") if b.strip()]
    ports = set(
        _nbctl(nb_db, "--bare", "--columns=ports", "list", "Logical_Switch", switch).split()
    )
    for block in blocks:
        if len(block) < 2:
            continue
        name, addresses = block[0].strip(), block[1].strip()
        fields = addresses.split()
        if len(fields) >= 2 and src in fields[1:]:
            uuid = _nbctl(nb_db, "--bare", "--columns=_uuid", "find", "Logical_Switch_Port",
                          f"name={name}")  # fmt: skip
            if uuid in ports:
                return switch, name, fields[0], router_mac
    return namespace, router_lan, "02:00:00:00:00:fe", router_mac


def trace(nb_db: str, sb_db: str, organization: str, project: str, packet: Packet) -> Verdict:
    namespace = names.namespace(organization, project)
    datapath, inport, eth_src, eth_dst = _inport(nb_db, namespace, packet.src)
    flow = f'inport == "{inport}" && eth.src == {eth_src} && eth.dst == {eth_dst} && ' + (
        packet.match()
    )
    base = ["ovn-trace", f"--db={sb_db}"]
    detailed = subprocess.run(
        [*base, datapath, flow], check=True, capture_output=True, text=True
    ).stdout
    minimal = subprocess.run(
        [*base, "--minimal", datapath, flow], check=True, capture_output=True, text=True
    ).stdout
    return parse(detailed, minimal)
