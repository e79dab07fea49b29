"""LoadBalancer services end to end through ``vpcbus svc ...``: real nats-server, real OVN,
the four services as processes. A service becomes an OVN load balancer on the project's router,
services share the default-gw EIP on distinct ports, a taken port is refused naming its
holder, a service without binding gets (and gives back) its own EIP, and deleting leaves no
load balancer behind. Packets through them: tests/datapath/test_spine_datapath.py.
"""

from __future__ import annotations

import pytest

from tests.conftest import ServiceProcs
from tests.integration import helpers
from vpcbus.client import Client
from vpcbus.embedded.ovn import OvnCentral

pytestmark = [pytest.mark.connected]

ORG, PROJECT = "lbs", "shop"
REF = f"{ORG}/{PROJECT}"


vpcbus = helpers.vpcbus  # the CLI, as a user runs it


def balancers(ovn: OvnCentral) -> dict[str, dict[str, str]]:
    """Our load balancers by name: their VIPs."""
    rows = helpers.nb_rows(ovn, "Load_Balancer", "name,vips,external_ids")
    out = {}
    for row in rows:
        if helpers.ids(row).get("vpcbus-project") == f"{ORG}.{PROJECT}":
            vips = row["vips"]
            assert isinstance(vips, list)
            out[str(row["name"])] = dict(vips[1])
    return out


def attached(ovn: OvnCentral) -> int:
    lbs = ovn.nbctl(
        "--bare", "--columns=load_balancer", "list", "Logical_Router", f"{ORG}-{PROJECT}"
    )
    return len(lbs.split())


async def test_services_share_default_gw_and_a_taken_port_is_refused(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    statuses = await helpers.create_ready(client, helpers.spec(ORG, PROJECT))
    gw = statuses["ipam"].addresses.eip("default-gw")  # type: ignore[union-attr]
    assert gw is not None
    done = await vpcbus(service_env, "svc", "create", "-p", REF, "web", "--port", "80:8080/tcp",
                        "--port", "53:5353/udp", "--endpoint", "10.0.0.5", "--endpoint",
                        "10.0.0.6", "--bind-default-gw")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"service web: {gw.ip_address} 80:8080/TCP,53:5353/UDP via eip default-gw"
    )
    assert balancers(ovn) == {
        f"{ORG}-{PROJECT}-svc-web-tcp": {f"{gw.ip_address}:80": "10.0.0.5:8080,10.0.0.6:8080"},
        f"{ORG}-{PROJECT}-svc-web-udp": {f"{gw.ip_address}:53": "10.0.0.5:5353,10.0.0.6:5353"},
    }
    assert attached(ovn) == 2

    taken = await vpcbus(service_env, "svc", "create", "-p", REF, "www", "--port", "80:8081",
                         "--endpoint", "10.0.0.7", "--bind-default-gw")  # fmt: skip
    assert taken.returncode == 1
    assert "service www: PortInUse: port 80/TCP of EIP default-gw is used by service web" in (
        taken.stderr
    )
    other = await vpcbus(service_env, "svc", "create", "-p", REF, "www", "--port", "81:8081",
                         "--endpoint", "10.0.0.7", "--bind-default-gw")  # fmt: skip
    assert other.returncode == 0, other.stderr  # fixed by the user: ready, no restart

    listed = await vpcbus(service_env, "svc", "get", "-p", REF)
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["web"][1:5] == [gw.ip_address, "80:8080/TCP,53:5353/UDP", "10.0.0.5,10.0.0.6",
                                "true"]  # fmt: skip
    assert rows["www"][1:3] == [gw.ip_address, "81:8081/TCP"]
    eips = await vpcbus(service_env, "get", "eip", "-p", REF)
    gw_row = next(line for line in eips.stdout.splitlines() if line.startswith("default-gw"))
    assert "Shared" in gw_row and gw_row.split()[6] == "3"  # SNAT and the two services


async def test_a_service_without_binding_gets_its_own_eip_and_gives_it_back(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    done = await vpcbus(service_env, "svc", "create", "-p", REF, "ssh", "--port", "2222:22",
                        "--endpoint", "10.0.0.8")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ip, eip = done.stdout.split()[2], done.stdout.split()[-1]
    assert eip.startswith("slb-ssh-")
    assert balancers(ovn)[f"{ORG}-{PROJECT}-svc-ssh-tcp"] == {f"{ip}:2222": "10.0.0.8:22"}

    bad = await vpcbus(service_env, "svc", "create", "-p", REF, "x", "--port", "80:http")
    assert bad.returncode == 2 and "want PORT[:TARGET][/tcp|udp]" in bad.stderr
    nope = await vpcbus(service_env, "svc", "create", "-p", REF, "y", "--port", "90",
                        "--endpoint", "10.0.0.9", "--bind-eip", "nope")  # fmt: skip
    assert nope.returncode == 1 and "service y: EipNotFound: " in nope.stderr
    assert (await vpcbus(service_env, "svc", "delete", "-p", REF, "y")).returncode == 0

    assert (await vpcbus(service_env, "svc", "delete", "-p", REF, "ssh")).returncode == 0
    assert f"{ORG}-{PROJECT}-svc-ssh-tcp" not in balancers(ovn)
    eips = await vpcbus(service_env, "get", "eip", "-p", REF)
    assert "slb-ssh-" not in eips.stdout


async def test_deleting_services_and_the_project_leaves_no_load_balancer(
    services: ServiceProcs, client: Client, ovn: OvnCentral, service_env: dict[str, str]
) -> None:
    assert (await vpcbus(service_env, "svc", "delete", "-p", REF, "web")).returncode == 0
    assert set(balancers(ovn)) == {f"{ORG}-{PROJECT}-svc-www-tcp"}
    await helpers.delete_done(client, ORG, PROJECT)  # www goes with the project
    assert balancers(ovn) == {}
    assert helpers.nb_rows(ovn, "Load_Balancer", "name") == []
