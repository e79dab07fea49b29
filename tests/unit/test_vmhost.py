"""``vpcbus vm``'s local side: chassis names of VMs and the VM records (pure, no chassis)."""

from __future__ import annotations

import re
from pathlib import Path

from vpcbus import vmhost

# What Chassis.add_vm accepts as a VM name (chassis.py, _NAME_RE).
CHASSIS_VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
LONGEST_LABEL = "v" * 63


def test_chassis_names_fit_the_chassis_and_keep_projects_apart() -> None:
    for name in ("a", "ubuntu", LONGEST_LABEL):
        chassis_name = vmhost.chassis_vm_name(LONGEST_LABEL, LONGEST_LABEL, name)
        assert CHASSIS_VM_NAME.fullmatch(chassis_name), chassis_name
        assert chassis_name.startswith(name[:31] + "-")
    same_name = {vmhost.chassis_vm_name(org, "web", "a") for org in ("acme", "beta")}
    assert len(same_name) == 2
    long_names = {vmhost.chassis_vm_name("acme", "web", LONGEST_LABEL[:-1] + c) for c in "xy"}
    assert len(long_names) == 2, "names that share their first 31 characters still differ"


def test_records_round_trip_sorted_by_project_and_name(tmp_path: Path) -> None:
    assert vmhost.records(tmp_path) == []
    made = [_record(org, name) for org, name in (("beta", "a"), ("acme", "b"), ("acme", "a"))]
    for rec in made:
        vmhost.save(tmp_path, rec)
    vmhost.save(tmp_path, made[0])  # saving again replaces
    got = vmhost.records(tmp_path)
    assert [(r.project_ref, r.name) for r in got] == [
        ("acme/web", "a"), ("acme/web", "b"), ("beta/web", "a"),
    ]  # fmt: skip
    assert got[2] == made[0]


def _record(org: str, name: str) -> vmhost.VmRecord:
    return vmhost.VmRecord(
        organization=org, project="web", name=name, ip_address="10.0.0.2", prefix_length=24,
        mac_address="0e:00:00:00:00:01", gateway="10.0.0.1", port=f"{name}.{org}-web",
        netns=f"vpcbus-{name}",
    )  # fmt: skip
