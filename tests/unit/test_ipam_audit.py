"""IPAM's doctor (``IpamReconciler.audit``) over an address book on the in-memory KV fake: a
converged project is clean; leaks, crash leftovers and orphans are named by their KV keys,
never written; and what the audit calls a leak is what the sweep of a repair run frees."""

from __future__ import annotations

from collections.abc import Sequence

from tests.unit.fakes import FakeKV
from tests.unit.ipam_fixtures import Clock, crashed_claim
from tests.unit.test_ipam_fips import fip
from tests.unit.test_ipam_reconciler import (
    SUBNET,
    Peers,
    ctx,
    eip,
    ipam,
    nic,
    record,
    removed,
    vpc_status,
)
from vpcbus_ipam.addresses import Binding
from vpcbus_ipam.reconciler import SWEEP_GRACE, IpamReconciler
from vpcbus_proto.doctor import Finding
from vpcbus_runtime.reconciling import Context

__all__ = ["ipam"]  # the fixture

A = "vm/a/default"


async def found(ipam: IpamReconciler, context: Context) -> set[tuple[str, str]]:
    return {(f.kind, f.object) for f in await ipam.audit(context)}


def details(findings: Sequence[Finding]) -> str:
    return "; ".join(f"{f.kind} {f.object}: {f.detail}" for f in findings)


async def test_a_converged_project_is_clean(ipam: IpamReconciler, kv: FakeKV) -> None:
    members = [nic("a"), nic("b"), eip("web"), fip("ssh", ipAddress="10.0.0.2")]
    result = await ipam.reconcile(ctx(record(), members))
    assert result.state == "Ready" and all(m.state == "Ready" for m in result.members)
    before = dict(kv.data)
    assert await ipam.audit(ctx(record(), members)) == []
    assert kv.data == before  # the audit writes nothing


async def test_an_unnamed_address_is_a_leak_after_the_grace_and_a_repair_sweeps_it(
    ipam: IpamReconciler, kv: FakeKV, clock: Clock
) -> None:
    members = [nic("a")]
    await ipam.reconcile(ctx(record(), members))
    await crashed_claim(kv, f"{SUBNET.prefix}.10.0.0.7", "pod/lost/default", clock.now)
    assert await ipam.audit(ctx(record(), members)) == []  # its record may be in flight
    clock.advance(SWEEP_GRACE)
    leak = ("leak", f"{SUBNET.prefix}.10.0.0.7")
    assert await found(ipam, ctx(record(), members)) == {leak}
    await ipam.reconcile(ctx(record(), members))  # the sweep is due: it frees the leak
    assert await ipam.audit(ctx(record(), members)) == []
    # An old leak right after a sweep: the memo skips the next sweep, a repair does not.
    await crashed_claim(kv, f"{SUBNET.prefix}.10.0.0.8", "pod/old/default", clock.now - 3600)
    await ipam.reconcile(ctx(record(), members))
    assert await found(ipam, ctx(record(), members)) == {("leak", f"{SUBNET.prefix}.10.0.0.8")}
    ipam.will_repair("acme.shop")
    swept = await ipam.reconcile(ctx(record(), members))
    assert "swept 1: pod/old/default=10.0.0.8" in swept.message
    assert await ipam.audit(ctx(record(), members)) == []


async def test_a_removed_members_address_is_a_leak_until_the_reconcile_releases_it(
    ipam: IpamReconciler,
) -> None:
    await ipam.reconcile(ctx(record(), [nic("a"), eip("web")]))
    gone = [removed(nic("a")), removed(eip("web"))]
    findings = await ipam.audit(ctx(record(), gone))
    assert {(f.kind, f.object) for f in findings} == {
        ("leak", f"{SUBNET.prefix}.10.0.0.2"), ("leak", "pool.cloud.100.65.0.3"),
    }, details(findings)  # fmt: skip
    assert all("member removed" in f.detail for f in findings)
    await ipam.reconcile(ctx(record(), gone))
    assert await ipam.audit(ctx(record(), gone)) == []


async def test_crash_leftovers_are_named_by_their_keys(
    ipam: IpamReconciler, kv: FakeKV, clock: Clock
) -> None:
    members = [nic("a"), nic("b"), nic("c")]
    await ipam.reconcile(ctx(record(), members))  # a .2, b .3, c .4
    clock.advance(SWEEP_GRACE)  # (a claim younger than that may be an allocation in flight)
    old = clock.now - 3600
    await crashed_claim(kv, f"{SUBNET.prefix}.10.0.0.9", A, old)  # a holds two
    await kv.delete(f"bind.{SUBNET.prefix}.vm/b/default")  # b's binding lost
    await kv.put(f"{SUBNET.prefix}.10.0.0.4", b'{"holder": "vm/c/default", "held": false, '
                 + f'"at": {old}}}'.encode())  # fmt: skip  # c released, binding left behind
    await crashed_claim(kv, f"{SUBNET.prefix}.10.1.0.5", "vm/a/net1", old)  # outside the /24
    same_mac = Binding(ip="10.0.0.3", mac="0e:00:00:00:00:01").model_dump_json().encode()
    await kv.put(f"bind.{SUBNET.prefix}.vm/a/default", same_mac)  # a's MAC is c's ...
    await kv.put(f"bind.{SUBNET.prefix}.vm/c/default", same_mac)
    await kv.settle()
    with_net1 = [*members, nic("a", interface="net1")]
    findings = await ipam.audit(ctx(record(), with_net1))
    assert {(f.kind, f.object) for f in findings} == {
        ("duplicate", f"{SUBNET.prefix}.10.0.0.2"),  # a is bound to .3 now: .2 and .9 are extra
        ("duplicate", f"{SUBNET.prefix}.10.0.0.9"),
        ("unbound", f"{SUBNET.prefix}.10.0.0.3"),  # b holds .3 without a binding
        ("unbound", f"{SUBNET.prefix}.10.1.0.5"),
        ("outside", f"{SUBNET.prefix}.10.1.0.5"),
        ("dangling", f"bind.{SUBNET.prefix}.vm/a/default"),  # .3 is b's
        ("dangling", f"bind.{SUBNET.prefix}.vm/c/default"),  # .3 is b's, .4 released
        ("duplicate", f"{SUBNET.prefix} mac 0e:00:00:00:00:01"),
    }, details(findings)  # fmt: skip


async def test_keys_of_a_project_without_a_live_record_are_orphans(ipam: IpamReconciler) -> None:
    members = [nic("a"), eip("web")]
    await ipam.reconcile(ctx(record(), members))
    everything = {
        ("orphan", f"{SUBNET.prefix}.*"),
        ("orphan", "pool.cloud.100.65.0.2"),  # default-gw
        ("orphan", "pool.cloud.100.65.0.3"),  # the EIP web
        ("orphan", "ns.acme-shop"),
    }
    assert await found(ipam, ctx(None, members)) == everything
    deleted = record().model_copy(update={"spec": None})
    waiting = Peers()
    assert await ipam.audit(ctx(deleted, members, waiting)) == []  # VPC still tears down
    waiting.vpc = vpc_status("Deleted", deleted.generation)
    assert await found(ipam, ctx(deleted, members, waiting)) == everything
    ipam.will_repair("acme.shop")
    assert (await ipam.reconcile(ctx(deleted, members, waiting))).state == "Deleted"
    assert await ipam.audit(ctx(deleted, members, waiting)) == []
