"""What NAT waits for before it builds SNAT (``vpcbus_nat.reconciler.peers_ready``): VPC
Ready at the record's generation, then IPAM Ready with the default-gw EIP. IPAM's status
is not read while VPC is not Ready: VPC waits for IPAM itself (issue 9)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.test_desired import eip
from tests.unit.test_ipam_reconciler import record
from vpcbus_nat.reconciler import peers_ready
from vpcbus_proto.status import AddressFacts, ExternalAddress, ServiceStatus, State
from vpcbus_proto.subjects import ServiceName
from vpcbus_runtime.reconciling import Context, Result


class Peers:
    """The statuses a test sets, and which services a reconcile asked for."""

    def __init__(self, **statuses: ServiceStatus) -> None:
        self.statuses = statuses
        self.asked: list[str] = []

    async def status(self, service: ServiceName, org: str, project: str) -> ServiceStatus | None:
        self.asked.append(service)
        return self.statuses.get(service)


def status(
    service: str, generation: int = 1, state: State = "Ready", facts: AddressFacts | None = None
) -> ServiceStatus:
    return ServiceStatus.model_validate(
        {"service": service, "organization": "acme", "project": "shop",
         "namespace": "acme-shop", "generation": generation, "state": state, "reason": "x",
         "observed_at": datetime.now(UTC), "addresses": facts}
    )  # fmt: skip


def facts(*, gateway: bool = True) -> AddressFacts:
    return AddressFacts(
        cidr_block="10.0.0.0/24", egress_network_type="cloud", gateway_ip="10.0.0.1",
        eips=[eip()] if gateway else [],
    )  # fmt: skip


async def ready(
    peers: Peers, generation: int = 1
) -> tuple[ServiceStatus, ExternalAddress] | Result:
    rec = record(generation=generation)
    return await peers_ready(Context("acme.shop", "acme", "shop", rec, peers), rec)


async def test_nothing_reported_waits_for_vpc_without_reading_ipam() -> None:
    peers = Peers(ipam=status("ipam", facts=facts()))
    result = await ready(peers)
    assert isinstance(result, Result)
    assert (result.state, result.reason, result.waiting_for) == ("Pending", "WaitingForVpc", "vpc")
    assert result.message == "vpc: not Ready yet"
    assert peers.asked == ["vpc"]


async def test_vpc_pending_or_of_an_older_generation_is_waited_for_alike() -> None:
    """One result for all three: a Pending status of VPC need not run NAT again."""
    for vpc in (None, status("vpc", state="Pending"), status("vpc", generation=1)):
        peers = Peers(**({"vpc": vpc} if vpc else {}), ipam=status("ipam", 2, facts=facts()))
        result = await ready(peers, generation=2)
        assert result == Result("Pending", "WaitingForVpc", "vpc: not Ready yet",
                                waiting_for="vpc")  # fmt: skip
        assert peers.asked == ["vpc"]


async def test_vpc_in_error_or_deleted_is_named_and_not_waited_for_alone() -> None:
    """Any status of it runs NAT again: a Pending one means it is on its way back."""
    for state in ("Error", "Deleted"):
        result = await ready(Peers(vpc=status("vpc", state=state)))
        assert result == Result("Pending", "WaitingForVpc", f"vpc: {state} x")


async def test_vpc_ready_and_ipam_not_waits_for_ipam() -> None:
    for ipam in (None, status("ipam", state="Pending")):
        peers = Peers(vpc=status("vpc"), **({"ipam": ipam} if ipam else {}))
        result = await ready(peers)
        assert isinstance(result, Result)
        assert (result.reason, result.waiting_for) == ("WaitingForIpam", "ipam")
        assert peers.asked == ["vpc", "ipam"]


async def test_ipam_ready_without_the_gateway_eip_is_not_waited_for_alone() -> None:
    """An IPAM Pending status would change this message: every IPAM status runs NAT."""
    peers = Peers(vpc=status("vpc"), ipam=status("ipam", facts=facts(gateway=False)))
    result = await ready(peers)
    assert result == Result("Pending", "WaitingForIpam", "ipam reports no default-gw EIP")


async def test_both_ready_give_ipam_and_the_gateway_eip() -> None:
    ipam = status("ipam", facts=facts())
    result = await ready(Peers(vpc=status("vpc"), ipam=ipam))
    assert not isinstance(result, Result)
    got, gw = result
    assert got == ipam and gw.name == "default-gw"
