"""The DNS zone's pure parts: which names a project has and who owns each (desired), how a
stub resolver expands a name (proto.zones), and the stand-in upstream's wire format."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from vpcbus.embedded import resolver as upstream
from vpcbus_dns import desired
from vpcbus_proto.status import LoadBalancer, Resolver, WorkloadAddress
from vpcbus_proto.zones import ZoneRecord, ZoneReply

NS = "acme-shop"
ZONE = f"{NS}.svc.cluster.local"


def nic(name: str, ip: str, *, kind: str = "vm", interface: str = "default") -> WorkloadAddress:
    return WorkloadAddress(
        member=f"workload.{kind}.{name}.{interface}", kind=kind, name=name,
        interface=interface, ip_address=ip, mac_address="0e:00:00:00:00:01",
    )  # fmt: skip


def lb(name: str, *, endpoints: list[str], ingress: str = "", ready: bool = True) -> LoadBalancer:
    return LoadBalancer(name=name, eip="default-gw", ingress_ip=ingress, endpoints=endpoints,
                        ready=ready)  # fmt: skip


def test_services_answer_with_endpoints_and_ext_with_their_ingress_ip() -> None:
    want = desired.build(
        "acme.shop", NS, "10.0.0.1",
        [nic("db", "10.0.0.2")],
        [lb("web", endpoints=["10.0.0.12", "10.0.0.3"], ingress="100.65.0.9"),
         lb("new", endpoints=["10.0.0.4"], ingress="100.65.0.10", ready=False),
         lb("noip", endpoints=["10.0.0.5"])],
    )  # fmt: skip
    assert want.records == {
        f"gateway.{ZONE}": "10.0.0.1",
        f"db.{ZONE}": "10.0.0.2",
        f"web.{ZONE}": "10.0.0.3 10.0.0.12",
        f"web-ext.{ZONE}": "100.65.0.9",
        f"noip.{ZONE}": "10.0.0.5",
    }, "a service not ready has no name; one without an EIP address has no -ext name"
    assert want.objects() == sorted(f"DNS/{n}" for n in want.records if not n.startswith("db."))
    assert (want.count("service"), want.count("service-ext"), want.count("workload")) == (2, 1, 1)


def test_one_name_one_owner_router_then_services_then_workloads() -> None:
    want = desired.build(
        "acme.shop", NS, "10.0.0.1",
        [nic("web", "10.0.0.2"), nic("gateway", "10.0.0.3"), nic("web", "10.0.0.4", kind="pod"),
         nic("db", "10.0.0.5", kind="pod"), nic("db", "10.0.0.6")],
        [lb("web", endpoints=["10.0.0.9"], ingress="100.65.0.9"),
         lb("gateway", endpoints=["10.0.0.8"]), lb("web-ext", endpoints=["10.0.0.7"])],
    )  # fmt: skip
    assert want.records == {
        f"gateway.{ZONE}": "10.0.0.1",
        f"web.{ZONE}": "10.0.0.9",
        f"web-ext.{ZONE}": "100.65.0.9",  # service web (by name first) before service web-ext
        f"db.{ZONE}": "10.0.0.6",  # a VM before a pod of the same name
    }
    assert want.shadowed == (
        f"pod/db (db.{ZONE})",
        f"pod/web (web.{ZONE})",
        f"service/gateway (gateway.{ZONE})",
        f"service/web-ext (web-ext.{ZONE})",
        f"vm/gateway (gateway.{ZONE})",
        f"vm/web (web.{ZONE})",
    )


def test_resolver_names_the_upstream_else_the_router_and_the_kubernetes_search_list() -> None:
    plain = desired.build("acme.shop", NS, "10.0.0.1").resolver
    assert plain.nameservers == ["10.0.0.1"]
    assert plain.search == [ZONE, "svc.cluster.local", "cluster.local"]
    assert plain.options == ["timeout:1", "attempts:1"]
    up = desired.build("acme.shop", NS, "10.0.0.1", upstream=["8.8.8.8", "1.1.1.1"]).resolver
    assert up.nameservers == ["8.8.8.8", "1.1.1.1"] and up.zone == ZONE


def test_listing_names_owners_and_marks_what_the_zone_no_longer_wants() -> None:
    want = desired.build("acme.shop", NS, "10.0.0.1", [nic("db", "10.0.0.2")])
    served = {f"db.{ZONE}": "10.0.0.9", f"gateway.{ZONE}": "10.0.0.1", f"old.{ZONE}": "10.0.0.3"}
    assert want.listing(served) == [
        ZoneRecord(name=f"db.{ZONE}", addresses=["10.0.0.9"], source="stale"),
        ZoneRecord(
            name=f"gateway.{ZONE}", addresses=["10.0.0.1"], source="gateway", owner="router"
        ),
        ZoneRecord(name=f"old.{ZONE}", addresses=["10.0.0.3"], source="stale"),
    ]


labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
addresses = st.integers(2, 250).map(lambda n: f"10.0.0.{n}")


@given(
    st.lists(st.tuples(labels, addresses, st.sampled_from(["vm", "pod"])), max_size=12),
    st.lists(
        st.tuples(labels, st.lists(addresses, min_size=1, max_size=3), st.booleans()), max_size=6
    ),
)
def test_every_owner_named_once_and_every_name_owned(
    nics: list[tuple[str, str, str]], services: list[tuple[str, list[str], bool]]
) -> None:
    """Nothing is lost or invented: each wanted name is in the zone or reported shadowed, and
    each record answers with exactly its owner's addresses."""
    wl = [nic(n, ip, kind=k) for n, ip, k in nics]
    lbs = [lb(n, endpoints=sorted(set(eps)), ingress="100.65.0.9", ready=True)
           for n, eps, _ in {s[0]: s for s in services}.values()]  # fmt: skip
    want = desired.build("acme.shop", NS, "10.0.0.1", wl, lbs)
    wanted = 1 + 2 * len(lbs) + len(wl)
    assert len(want.names) + len(want.shadowed) == wanted
    for name, rec in want.names.items():
        assert name == name.lower() and name.endswith(f".{ZONE}")
        if rec.source == "workload":
            kind, _, owner = rec.owner.partition("/")
            assert any(w.name == owner and w.kind == kind and (w.ip_address,) == rec.addresses
                       for w in wl)  # fmt: skip
        elif rec.source == "service":
            svc = next(s for s in lbs if f"service/{s.name}" == rec.owner)
            assert set(rec.addresses) == set(svc.endpoints)


def test_a_stub_resolver_tries_the_search_list_as_glibc_does() -> None:
    zone = ZoneReply(
        project="acme.shop", zone=ZONE, served=True,
        resolver=Resolver(zone=ZONE, nameservers=["8.8.8.8"],
                          search=[ZONE, "svc.cluster.local", "cluster.local"]),
        records=[ZoneRecord(name=f"web.{ZONE}", addresses=["10.0.0.3"], source="service")],
    )  # fmt: skip
    assert zone.candidates("web") == [f"web.{ZONE}", "web.svc.cluster.local",
                                      "web.cluster.local", "web"]  # fmt: skip
    assert zone.candidates("web.acme-shop")[0] == "web.acme-shop", "a dotted name first as is"
    assert zone.candidates("Web.Example.") == ["web.example"]
    assert zone.lookup(f"WEB.{ZONE}.") is not None and zone.lookup("web") is None


# -- the stand-in upstream resolver --------------------------------------------------------


def query(name: str, qtype: int = 1, *, edns: bool = False, ident: int = 0x1234) -> bytes:
    extra = 1 if edns else 0
    msg = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, extra)
    msg += upstream.encode_name(name) + struct.pack("!HH", qtype, 1)
    if edns:
        msg += b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 0)  # OPT
    return msg


def reply(data: bytes) -> tuple[int, int, list[str]]:
    """``(id, rcode, A answers)``."""
    ident, flags, _qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    _, offset = upstream.parse_name(data, 12)
    offset += 4
    answers = []
    for _ in range(an):
        _, offset = upstream.parse_name(data, offset)
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        if rtype == 1:
            answers.append(str(ipaddress.IPv4Address(data[offset : offset + length])))
        offset += length
    return ident, flags & 0xF, answers


def test_upstream_answers_its_table_and_nxdomain_for_the_rest_edns_or_not() -> None:
    table = dict(upstream.DEFAULT_RECORDS)
    assert reply(upstream.answer(query("DNS.Google"), table) or b"") == (0x1234, 0, ["8.8.8.8"])
    assert reply(upstream.answer(query("dns.google", 28), table) or b"") == (0x1234, 0, [])
    for edns in (False, True):
        nx = upstream.answer(query(f"db.{ZONE}", edns=edns, ident=7), table)
        assert reply(nx or b"") == (7, 3, [])
    assert upstream.answer(b"\x00\x01", table) is None
    garbage = upstream.answer(b"\x00\x05" + b"\xff" * 20, table)
    assert garbage is not None and reply(garbage[:12] + b"\x00\x00\x00\x00")[1] == 1  # FORMERR
