"""IPAM's reconcile remembers what it found about a project (the NICs that are addressed,
the last sweep) and skips it on the next run when nothing changed. These tests reuse the
same member records from run to run, as the member index does, and check that what
changed in between is still seen: an address another replica moved, a new NIC that takes a
name, a NIC that went away."""

from __future__ import annotations

from tests.unit.fakes import FakeKV
from tests.unit.ipam_fixtures import Clock, check_store
from tests.unit.test_ipam_reconciler import SUBNET, ctx, ipam, nic, nics, record, removed, states
from vpcbus_ipam.addresses import Holding, binding_key
from vpcbus_ipam.reconciler import IpamReconciler

__all__ = ["ipam"]  # the fixture


async def test_a_nic_whose_address_another_replica_released_is_addressed_again(
    ipam: IpamReconciler, kv: FakeKV, clock: Clock
) -> None:
    a = nic("a")
    await ipam.reconcile(ctx(record(), [a]))  # addresses it
    assert nics(await ipam.reconcile(ctx(record(), [a]))) == {"workload.vm.a.default": "10.0.0.2"}
    # Another replica released it meanwhile (say it served a detach and a re-attach that
    # this one has not seen yet): the address says released, the binding is gone.
    key = f"{SUBNET.prefix}.10.0.0.2"
    released = Holding(holder="vm/a/default", held=False, at=clock.now)
    await kv.update(key, released.model_dump_json().encode(), last=kv.data[key][1])
    await kv.delete(binding_key(SUBNET.prefix, "vm/a/default"))
    await kv.settle()

    again = await ipam.reconcile(ctx(record(), [a]))  # the same record object

    bound = check_store(kv, SUBNET)["vm/a/default"]
    assert nics(again) == {"workload.vm.a.default": bound.ip}
    assert states(again)["workload.vm.a.default"] == ("Ready", "Allocated")


async def test_a_new_nic_with_the_same_name_still_wins_over_an_addressed_one(
    ipam: IpamReconciler,
) -> None:
    vm = nic("web", kind="vm")
    await ipam.reconcile(ctx(record(), [vm]))

    result = await ipam.reconcile(ctx(record(), [vm, nic("web", kind="pod")]))

    assert states(result) == {
        "workload.pod.web.default": ("Ready", "Allocated"),  # pod/… sorts before vm/…
        "workload.vm.web.default": ("Error", "NameConflict"),
    }


async def test_a_nic_that_goes_away_right_after_a_run_is_released_by_the_next(
    ipam: IpamReconciler, kv: FakeKV
) -> None:
    a, b = nic("a"), nic("b")
    await ipam.reconcile(ctx(record(), [a, b]))
    await ipam.reconcile(ctx(record(), [a, b]))  # nothing changed: no sweep needed

    result = await ipam.reconcile(ctx(record(), [removed(a), b]))

    assert states(result)["workload.vm.a.default"] == ("Deleted", "Released")
    assert set(check_store(kv, SUBNET)) == {"vm/b/default"}
