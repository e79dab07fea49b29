"""The stand-in upstream DNS resolver of ``vpcbus up``'s fake internet.

A project's workloads name the platform's upstream resolvers in resolv.conf (the DNS
service's ``VPCBUS_DNS_UPSTREAM``); OVN answers the project zone from the chassis and lets
every other query through, via the project's SNAT, to the upstream. The embedded stack has
no real internet, so its internet host runs this small authoritative server on the public
resolver addresses it owns (8.8.8.8 and 1.1.1.1), one UDP socket per address (a reply must
leave from the address the query went to, or the SNAT conntrack entry does not match it).

It answers A queries for its table (``--record NAME=IP``, plus a few defaults such as
``dns.google``), NOERROR without answers for other types of those names, and NXDOMAIN for
every other name, EDNS0 queries included (the OPT record is ignored, the reply has none).
Run inside the host's namespace by :mod:`vpcbus.stack`::

    python -m vpcbus.embedded.resolver --listen 8.8.8.8 --listen 1.1.1.1
"""

from __future__ import annotations

import argparse
import ipaddress
import selectors
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TYPE_A, CLASS_IN = 1, 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3
#: Names every stand-in upstream answers: the resolvers' own names and the upstream gateway.
DEFAULT_RECORDS = {
    "dns.google": "8.8.8.8",
    "one.one.one.one": "1.1.1.1",
    "gateway.upstream.vpcbus.test": "100.65.0.1",
}
TTL = 30


@dataclass(frozen=True)
class Question:
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    raw: bytes  # the question section as received


def parse_name(data: bytes, offset: int) -> tuple[str, int]:
    """A (not compressed: queries never are) domain name at ``offset``, and the offset after."""
    labels: list[str] = []
    while True:
        if offset >= len(data):
            raise ValueError("name runs past the message")
        length = data[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        if length > 63:
            raise ValueError("compressed or invalid label in a query")
        labels.append(data[offset : offset + length].decode("ascii", "replace").lower())
        offset += length


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def parse_query(data: bytes) -> tuple[int, int, Question]:
    """``(id, flags, question)`` of a one-question query; ValueError otherwise."""
    if len(data) < 12:
        raise ValueError("shorter than a DNS header")
    ident, flags, qdcount = struct.unpack("!HHH", data[:6])
    if flags & 0x8000 or qdcount != 1:
        raise ValueError("not a one-question query")
    name, end = parse_name(data, 12)
    if end + 4 > len(data):
        raise ValueError("question runs past the message")
    qtype, qclass = struct.unpack("!HH", data[end : end + 4])
    return ident, flags, Question(name, qtype, qclass, data[12 : end + 4])


def answer(data: bytes, records: Mapping[str, str]) -> bytes | None:
    """The reply to one query; None for something that is not a query at all."""
    try:
        ident, flags, q = parse_query(data)
    except ValueError:
        if len(data) < 12:
            return None
        ident = struct.unpack("!H", data[:2])[0]
        return struct.pack("!HHHHHH", ident, 0x8000 | FORMERR, 0, 0, 0, 0)
    rd = flags & 0x0100
    found = records.get(q.name)
    rcode = NOERROR if found is not None else NXDOMAIN
    answers = b""
    count = 0
    if found is not None and q.qtype == TYPE_A and q.qclass == CLASS_IN:
        rdata = ipaddress.IPv4Address(found).packed
        answers = encode_name(q.name) + struct.pack("!HHIH", TYPE_A, CLASS_IN, TTL, 4) + rdata
        count = 1
    # QR, AA, RD copied, RA: an authoritative answer for our table, NXDOMAIN for the rest
    head = struct.pack("!HHHHHH", ident, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, count, 0, 0)
    return head + q.raw + answers


def serve(addresses: Sequence[str], records: Mapping[str, str], port: int = 53) -> None:
    sel = selectors.DefaultSelector()
    for address in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
        sel.register(sock, selectors.EVENT_READ, sock)
    print(f"resolver on {', '.join(addresses)}: {len(records)} names", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.data
            data, peer = sock.recvfrom(4096)
            reply = answer(data, records)
            if reply is not None:
                sock.sendto(reply, peer)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vpcbus.embedded.resolver")
    parser.add_argument("--listen", action="append", required=True, metavar="IP")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--record", action="append", default=[], metavar="NAME=IP")
    args = parser.parse_args(argv)
    records = dict(DEFAULT_RECORDS)
    for item in args.record:
        name, _, ip = item.partition("=")
        records[name.rstrip(".").lower()] = str(ipaddress.IPv4Address(ip))
    serve(args.listen, records, args.port)


if __name__ == "__main__":
    main()
