"""Gratuitous ARP announcer for the stand-in upstream gateway of ``vpcbus up``.

Real upstream gateways of a cloud network are usually VRRP pairs that announce their address
with gratuitous ARP (keepalived's ``garp_master_refresh``). The embedded stack's fake internet
host does the same, so that a new project's gateway router learns the upstream MAC (an SB
``MAC_Binding``) before its first packet, and ``vpcbus trace`` shows the SNAT verdict rather
than "ARP first".

Project routers learn only from ARP requests for their own addresses
(``always_learn_from_arp_request=false``, see ``vpcbus_vpc.desired.NEIGHBOUR_OPTIONS``); a
gratuitous ARP updates a binding they have but makes no new one. So when the host hears an
ARP from another address (a new router announcing its EIP) it asks that address for its MAC,
as an upstream gateway does before it sends to it, and the router learns the host's MAC from
the request. It announces at start, every ``--every`` seconds, and right after it hears such
an ARP, at most once per 0.2 s; it asks each address at most once per ``--every`` seconds.
Run inside the host's network namespace by :mod:`vpcbus.stack`::

    python -m vpcbus.embedded.announce --iface eth0 --ip 100.65.0.1
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import select
import socket
import time
from pathlib import Path

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
MIN_GAP = 0.2


def mac_of(iface: str) -> bytes:
    text = Path(f"/sys/class/net/{iface}/address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))


def garp(mac: bytes, ip: bytes) -> bytes:
    """An Ethernet frame with a gratuitous ARP request (sender = target = ``ip``)."""
    return request(mac, ip, ip)


def request(mac: bytes, ip: bytes, target: bytes) -> bytes:
    """An Ethernet frame with an ARP request from ``mac``/``ip`` for ``target``'s MAC."""
    header = BROADCAST + mac + ETH_P_ARP.to_bytes(2, "big")
    arp = (
        (1).to_bytes(2, "big")  # hardware type: Ethernet
        + (0x0800).to_bytes(2, "big")  # protocol type: IPv4
        + bytes([6, 4])
        + (1).to_bytes(2, "big")  # opcode: request
        + mac
        + ip
        + b"\x00" * 6
        + target
    )
    return header + arp


def sender_ip(frame: bytes) -> bytes | None:
    """The ARP sender protocol address of ``frame``, or None if it is no IPv4 ARP."""
    if len(frame) < 42 or frame[12:14] != ETH_P_ARP.to_bytes(2, "big"):
        return None
    return frame[28:32]


def run(iface: str, ip: str, every: float) -> None:
    own = ipaddress.IPv4Address(ip).packed
    mac = mac_of(iface)
    frame = garp(mac, own)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((iface, ETH_P_ARP))
        last = 0.0
        asked: dict[bytes, float] = {}  # address -> when it was last asked for its MAC
        while True:
            now = time.monotonic()
            if now - last >= every:
                sock.send(frame)
                last = now
            ready, _, _ = select.select([sock], [], [], max(0.0, every - (now - last)))
            if not ready:
                continue
            heard = sender_ip(sock.recv(2048))
            if heard is None or heard == own or heard == bytes(4):
                continue
            if time.monotonic() - asked.get(heard, -every) >= every:
                sock.send(request(mac, own, heard))
                asked[heard] = time.monotonic()
            if time.monotonic() - last >= MIN_GAP:
                sock.send(frame)
                last = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--ip", required=True)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between announcements")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(args.iface, args.ip, args.every)


if __name__ == "__main__":
    main()
