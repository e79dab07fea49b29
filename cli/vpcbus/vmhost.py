"""The embedded stack's chassis as ``vpcbus vm`` sees it, and the records of its VMs.

The chassis belongs to the supervisor of ``vpcbus up``; :func:`open_host` opens it from
another process by its run directory and namespace prefix (``stack.json``), so a VM made by
one CLI process outlives it and ``vpcbus down`` removes it with the chassis. Each VM is
recorded in ``<home>/vms/<org>.<project>.<name>.json``, the only thing ``vm list`` and
``vm exec`` read: a record whose namespace is gone (after ``vpcbus down``) is a stopped VM.

Used by :mod:`vpcbus.vms`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vpcbus import stack
from vpcbus.client import Client
from vpcbus.common import EXIT_UNREACHABLE, CliError, connect
from vpcbus.embedded import procs
from vpcbus.embedded.chassis import Chassis


@dataclass(frozen=True)
class VmRecord:
    """What ``vm create`` made, as ``vm list`` and ``vm exec`` find it."""

    organization: str
    project: str
    name: str
    ip_address: str
    prefix_length: int
    mac_address: str
    gateway: str
    port: str  # the logical switch port (OVS iface-id)
    netns: str

    @property
    def project_ref(self) -> str:
        return f"{self.organization}/{self.project}"


def _record_path(home: Path, org: str, project: str, name: str) -> Path:
    return home / "vms" / f"{org}.{project}.{name}.json"


def save(home: Path, rec: VmRecord) -> None:
    path = _record_path(home, rec.organization, rec.project, rec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec), indent=2))
    tmp.replace(path)


def records(home: Path) -> list[VmRecord]:
    """Every recorded VM, by project and name."""
    found = [VmRecord(**json.loads(p.read_text())) for p in (home / "vms").glob("*.json")]
    return sorted(found, key=lambda r: (r.organization, r.project, r.name))


def chassis_vm_name(org: str, project: str, name: str) -> str:
    """The VM's name on the chassis (its namespace is ``<prefix>-<this>``): the VM name and a
    digest of ``org/project/name``, so equal names in two projects never meet; at most 40
    characters, as the chassis requires."""
    digest = hashlib.sha1(f"{org}/{project}/{name}".encode()).hexdigest()[:8]
    return f"{name[:31]}-{digest}"


def live_namespaces() -> set[str]:
    listing = procs.run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


@dataclass(frozen=True)
class Host:
    """The running stack and its chassis, opened from this process."""

    home: Path
    state: stack.StackState
    chassis: Chassis

    def netns(self, org: str, project: str, name: str) -> str:
        return f"{self.chassis.prefix}-{chassis_vm_name(org, project, name)}"

    def remove(self, org: str, project: str, name: str) -> None:
        """Unplug and delete the VM's namespace and forget its record; idempotent."""
        self.chassis.del_vm(chassis_vm_name(org, project, name))
        _record_path(self.home, org, project, name).unlink(missing_ok=True)

    async def connect(self) -> Client:
        """The stack's own NATS (not ``NATS_URL``): the VM lives on that stack's chassis."""
        return await connect(self.home, self.state.nats_url)


def open_host(home: Path) -> Host:
    """The embedded stack's chassis; CliError when no stack with a chassis is running."""
    state = stack.load_state(home)
    if state is None:
        raise CliError(
            f"the embedded stack is not running (home {home}); start it with `vpcbus up`",
            EXIT_UNREACHABLE,
        )
    if state.chassis is None or state.chassis_prefix is None:
        raise CliError("the embedded stack has no chassis: run `vpcbus up` as root")
    try:
        chassis = Chassis(stack.chassis_dir(home), state.ovn_sb_db, name=state.chassis,
                          prefix=state.chassis_prefix)  # fmt: skip
    except PermissionError as exc:
        raise CliError(str(exc)) from exc
    if not chassis.is_running():
        raise CliError(f"the stack's chassis is not running; see {chassis.dirs.log}")
    return Host(home, state, chassis)
