"""What a project's VPC is, as plain data. Pure: no I/O, no clients.

Names follow Kube-OVN, so operators find what they expect in the NB (``N`` is the backing
namespace ``<org>-<project>``):

* router ``N`` (a gateway router pinned to the gateway chassis; neighbour routers resolved by
  ARP, see :data:`NEIGHBOUR_OPTIONS`)
* switch ``N-default``, router port ``N-N-default`` at the gateway address, switch port
  ``N-default-N``
* router port ``N-ext-<network>`` at the gateway EIP (Kube-DC's ``<N>-ext-cloud`` OvnEip),
  switch port ``ext-<network>-N`` on the shared external switch ``ext-<network>``
* static route ``0.0.0.0/0`` via the external network's gateway
* with egress network isolation on: a drop ACL on ``N-default`` (see :func:`isolation_acls`)
* one switch port per NIC that IPAM addressed, named as Kube-OVN names pod and VM ports
  (:func:`vpcbus_proto.names.workload_port`), with its MAC and IP as ``addresses`` and as
  ``port_security`` (anti-spoofing, as Neutron does by default)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vpcbus_proto import names
from vpcbus_proto.projects import ProjectSpec
from vpcbus_proto.status import AddressFacts, ExternalAddress, WorkloadAddress


@dataclass(frozen=True)
class PortPair:
    """A router port and the switch port patched to it."""

    router_port: str
    switch_port: str
    switch: str
    mac: str
    network: str  # "<ip>/<prefix>" of the router port
    nat_addresses: bool = False


@dataclass(frozen=True)
class Route:
    prefix: str
    nexthop: str


@dataclass(frozen=True)
class Acl:
    direction: str  # "from-lport" | "to-lport"
    priority: int
    match: str
    action: str  # "allow-related" | "drop" | ...


#: The priority of the egress isolation ACL.
ISOLATION_DROP = 1001


@dataclass(frozen=True)
class Isolation:
    """Egress network isolation, as the platform configures it (Kube-DC's
    ``egress_network_isolation``): off, or on with a global allowlist of IPv4 CIDRs."""

    enabled: bool = False
    allow: tuple[str, ...] = ()


def isolation_acls(isolation: Isolation, spec: ProjectSpec, facts: AddressFacts) -> tuple[Acl, ...]:
    """Packets from the project's workloads to addresses of the external networks are dropped,
    except to the project's own EIPs (FIP and load balancer EIPs included), the networks'
    gateways and the allowlists (global, and the project's ``egressAllowlist``); the internet
    beyond the external networks is not touched. Stateless, and so in both directions of a
    conversation: a project answers a client on another project's EIP only if that EIP is
    allowlisted too (OVN's switch conntrack skips traffic from router ports, so a stateful ACL
    could not tell the reply of an inbound connection from a new one). Two isolated projects
    talk when each allowlists the other."""
    if not isolation.enabled or not facts.external_networks:
        return ()
    nets = sorted({n.cidr for n in facts.external_networks})
    allowed = sorted(
        {f"{e.ip_address}/32" for e in facts.eips if e.ip_address}
        | {f"{n.gateway}/32" for n in facts.external_networks}
        | set(isolation.allow)
        | set(spec.egress_allowlist or ())
    )
    match = f"ip4.dst == {{{', '.join(nets)}}}"
    if allowed:
        match += f" && ip4.dst != {{{', '.join(allowed)}}}"
    return (Acl("from-lport", ISOLATION_DROP, match, "drop"),)


#: Egress isolation off (the default, as in Kube-DC).
NO_ISOLATION = Isolation()


@dataclass(frozen=True)
class WorkloadPort:
    """The switch port of one NIC on the project switch."""

    name: str
    member: str  # workload.<kind>.<name>.<interface>
    mac: str
    ip: str

    @property
    def address(self) -> str:
        """``"<mac> <ip>"``: the value of both ``addresses`` and ``port_security``."""
        return f"{self.mac} {self.ip}"


#: Options of every project router besides its chassis. Every router has a port on the shared
#: external switch. With OVN's default, static neighbour entries, ovn-northd gives each router
#: an ARP-resolve flow for every other router's port there: O(projects^2) logical flows (300
#: projects: 102k flows and 7 CPU-s of ovn-northd on this machine; 5,000: minutes per
#: recompute and 11 GiB). ``dynamic_neigh_routers`` resolves them by ARP when traffic needs
#: it (12k flows, 0.8 CPU-s), and ``always_learn_from_arp_request=false`` keeps a router
#: from learning a MAC binding from every router's broadcast ARP on that switch (again
#: O(projects^2), in SB's MAC_Binding): it learns from requests for its own addresses and
#: from replies, and updates the bindings it has.
#:
#: A learned binding outlives its address: an EIP that a deleted project released and
#: another took would still be sent to the old router port's MAC, a black hole (OVN issue
#: 238). ``mac_binding_age_threshold`` removes learned bindings after 300 s. Before OVN 23.09
#: (Debian 12 has 23.03) that happens to bindings in use too, and the router resolves the
#: address again; ovn-kubernetes took that trade on its gateway routers, at the same 300 s.
#: ovn-kubernetes and Kube-OVN set all three options (Kube-OVN the second unless configured
#: to learn from every request); Neutron too, with the age from its configuration (off by
#: default).
NEIGHBOUR_OPTIONS = {
    "dynamic_neigh_routers": "true",
    "always_learn_from_arp_request": "false",
    "mac_binding_age_threshold": "300",
}


@dataclass(frozen=True)
class DesiredVpc:
    key: str
    namespace: str
    router: str
    chassis: str
    switch: str
    lan: PortPair
    external: PortPair
    external_network: str
    routes: tuple[Route, ...]
    workloads: tuple[WorkloadPort, ...] = ()
    acls: tuple[Acl, ...] = ()

    @property
    def router_options(self) -> dict[str, str]:
        return {"chassis": self.chassis, **NEIGHBOUR_OPTIONS}

    def objects(self) -> list[str]:
        return [
            f"Logical_Router/{self.router}",
            f"Logical_Switch/{self.switch}",
            f"Logical_Router_Port/{self.lan.router_port}",
            f"Logical_Router_Port/{self.external.router_port}",
        ]


def mac_for(name: str) -> str:
    """A stable, locally administered unicast MAC derived from a port name."""
    digest = hashlib.sha256(name.encode()).digest()
    return "0a:" + ":".join(f"{b:02x}" for b in digest[:5])


def external_switch(network: str) -> str:
    return names.external_switch(network)


def workload_ports(namespace: str, nics: list[WorkloadAddress]) -> tuple[WorkloadPort, ...]:
    """One port per NIC, by port name. IPAM refuses a second NIC with the same name and
    interface, so names are unique; should two ever meet, the first by member key wins."""
    ports: dict[str, WorkloadPort] = {}
    for nic in sorted(nics, key=lambda n: n.member):
        name = names.workload_port(namespace, nic.name, nic.interface)
        ports.setdefault(name, WorkloadPort(name, nic.member, nic.mac_address, nic.ip_address))
    return tuple(ports.values())


def build(
    key: str, namespace: str, spec: ProjectSpec, gw: ExternalAddress, facts: AddressFacts,
    *, chassis: str, isolation: Isolation = NO_ISOLATION,
) -> DesiredVpc:  # fmt: skip
    """The VPC of one project from its spec, IPAM's gateway EIP and its addressed NICs."""
    router = namespace
    switch = f"{namespace}-default"
    ext_switch = external_switch(gw.network)
    lan_port = f"{router}-{switch}"
    ext_port = f"{router}-{ext_switch}"
    return DesiredVpc(
        key=key,
        namespace=namespace,
        router=router,
        chassis=chassis,
        switch=switch,
        lan=PortPair(
            router_port=lan_port,
            switch_port=f"{switch}-{router}",
            switch=switch,
            mac=mac_for(lan_port),
            network=f"{facts.gateway_ip}/{spec.network.prefixlen}",
        ),
        external=PortPair(
            router_port=ext_port,
            switch_port=f"{ext_switch}-{router}",
            switch=ext_switch,
            mac=mac_for(ext_port),
            network=f"{gw.ip_address}/{gw.prefix_length}",
            nat_addresses=True,
        ),
        external_network=gw.network,
        routes=(Route("0.0.0.0/0", gw.gateway),),
        workloads=workload_ports(namespace, facts.workloads),
        acls=isolation_acls(isolation, spec, facts),
    )
