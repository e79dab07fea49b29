"""A userspace OVS chassis with network-namespace "VMs" (root only).

Called by ``vpcbus up`` (the development stack) and by the datapath test fixtures. It follows the
recipe proven on kernels without ``openvswitch.ko``:

* every bridge uses ``datapath_type=netdev`` (OVS's userspace datapath, no kernel module);
* ``ovs-vswitchd`` and ``ovn-controller`` run inside their own namespace ``<prefix>-hv``, so the
  persistent tap devices of the netdev datapath and the host ends of all veths die with it;
* every VM namespace gets ``ethtool -K eth0 tx off`` (the netdev datapath does not complete
  CHECKSUM_PARTIAL packets, which would break TCP and UDP while ICMP works);
* daemons are stopped by PID only (see ``procs``); unix sockets only, nothing listens on TCP.

Naming: every namespace this chassis creates is ``<prefix>-<name>`` (the hypervisor is
``<prefix>-hv``), so ``stop()`` can clean up by prefix, even from a fresh object after a crash.
The prefix is 1-8 characters of ``[a-z0-9]`` starting with a letter and has no ``-``, so one
chassis' prefix can never match another's namespaces. The host end of a VM's veth, inside
``<prefix>-hv``, is named by ``link_name()``: ``<prefix>-<name>`` when that fits IFNAMSIZ
(15 characters), else ``<prefix>-`` followed by the first hex digits of the SHA-1 of ``name``.
The VM end is always ``eth0``. Bridges (``br-int``, ``br-ext-*``) exist only inside
``<prefix>-hv``, so they need no prefix.

Barrier: after an NB change, wait with ``OvnCentral.wait_hv()`` (or ``Chassis.wait_hv(nb_db)``,
both ``ovn-nbctl --wait=hv sync``) before sending packets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import procs

VSWITCH_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
ETC_NETNS = Path("/etc/netns")
"""Per-namespace files that ``ip netns exec`` bind-mounts over ``/etc`` (resolv.conf)."""
#: OVN 23.03 never answers AAAA for A-only names: where nobody else does, fail fast (1 s)
#: instead of 2 x 5 s.
RESOLV_OPTIONS = ("timeout:1", "attempts:1")

DEFAULT_BRIDGE_MAPPINGS: Mapping[str, str] = {"cloud": "br-ext-cloud", "public": "br-ext-public"}
INTEGRATION_BRIDGE = "br-int"
HV_NAME = "hv"
IFNAMSIZ_MAX = 15

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_VSCTL_TIMEOUT = 10.0


def link_name(prefix: str, name: str) -> str:
    """The host-side veth name for VM ``name``: ``<prefix>-<name>`` or a hashed short form."""
    full = f"{prefix}-{name}"
    if len(full) <= IFNAMSIZ_MAX:
        return full
    digest = hashlib.sha1(name.encode()).hexdigest()
    return f"{prefix}-{digest[: IFNAMSIZ_MAX - len(prefix) - 1]}"


@dataclass(frozen=True)
class Vm:
    """A network namespace plugged into the chassis: a VM or a fake external host."""

    name: str
    netns: str
    host_link: str  # the veth end inside <prefix>-hv, an OVS port
    bridge: str  # the OVS bridge that port is on

    def exec(
        self, *cmd: str, timeout: float = 10.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace (``ip netns exec``); see ``procs.run``."""
        return procs.run(cmd, netns=self.netns, check=check, timeout=timeout)

    def ping(self, ip: str, count: int = 1, timeout_s: float = 2) -> bool:
        """True if at least one of ``count`` ICMP echoes to ``ip`` is answered in time."""
        cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{timeout_s:g}", ip]
        return self.exec(*cmd, timeout=count * (timeout_s + 0.2) + 5, check=False).returncode == 0

    def spawn(self, *cmd: str) -> subprocess.Popen[str]:
        """Start ``cmd`` in the background inside the namespace, with text stdout/stderr pipes.

        The caller owns the process (terminate, then ``communicate()``); ``Chassis.stop()`` also
        kills whatever still runs in the namespace.
        """
        return subprocess.Popen(
            procs.netns_argv(self.netns, cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


class Chassis:
    """``ovsdb-server`` + ``ovs-vswitchd`` (netdev) + ``ovn-controller`` in ``<prefix>-hv``."""

    def __init__(
        self,
        rundir: Path,
        sb_db: str,
        *,
        name: str = "vpcbus-chassis-1",
        prefix: str = "vb",
        bridge_mappings: Mapping[str, str] | None = None,
        timeout: float = procs.DEFAULT_TIMEOUT,
    ) -> None:
        if os.geteuid() != 0:
            raise PermissionError(
                "Chassis needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces); "
                "run as root, or use OvnCentral alone"
            )
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"chassis prefix {prefix!r} must match {_PREFIX_RE.pattern}")
        self.dirs = procs.Dirs.create(rundir)
        self.sb_db = sb_db
        self.name = name
        self.prefix = prefix
        self.bridge_mappings = dict(
            DEFAULT_BRIDGE_MAPPINGS if bridge_mappings is None else bridge_mappings
        )
        self.timeout = timeout
        self.hv_netns = f"{prefix}-{HV_NAME}"
        self._env = self.dirs.env()
        self._vms: dict[str, Vm] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the chassis from scratch and return once it is registered in SB.

        If it is already running this does nothing; leftovers of a crashed run (same rundir
        and prefix) are cleaned up first. On failure everything is stopped again and
        ``procs.StartupError`` or ``procs.CommandError`` is raised (logs stay in ``log/``).
        """
        if self.is_running():
            return
        self.stop()
        try:
            self._create_hv_netns()
            self._start_ovsdb()
            self._init_open_vswitch()
            self._start_vswitchd()
            self._create_bridges()
            self._start_controller()
            self._wait_registered()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the daemons by PID and delete every namespace and /etc/netns dir of ours.

        Idempotent, and works from a fresh object with the same rundir and prefix.
        """
        for pidfile in self._pidfiles:
            procs.stop_pidfile(pidfile)
        for netns in self.owned_netns():
            _delete_netns(netns)
        for path in ETC_NETNS.glob(f"{self.prefix}-*"):
            shutil.rmtree(path, ignore_errors=True)
        self._vms.clear()

    def is_running(self) -> bool:
        return all(procs.is_alive(pidfile) for pidfile in self._pidfiles)

    def owned_netns(self) -> list[str]:
        """Every existing network namespace named ``<prefix>-...`` (ours by construction)."""
        listing = procs.run(["ip", "netns", "list"]).stdout
        names = (line.split()[0] for line in listing.splitlines() if line.strip())
        return sorted(name for name in names if name.startswith(f"{self.prefix}-"))

    def wait_hv(self, nb_db: str, timeout: float = procs.DEFAULT_TIMEOUT) -> None:
        """``ovn-nbctl --db=<nb_db> --wait=hv sync``: the barrier before sending packets.

        Same as ``OvnCentral.wait_hv()``, for callers that only hold the NB address.
        """
        cmd = ["ovn-nbctl", f"--db={nb_db}", f"--timeout={max(1, math.ceil(timeout))}"]
        procs.run([*cmd, "--wait=hv", "sync"], env=self._env, timeout=timeout + 5)

    def __enter__(self) -> Chassis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- VMs ---------------------------------------------------------------------------------

    @property
    def vms(self) -> Mapping[str, Vm]:
        """The VMs and external hosts added through this object, by name."""
        return dict(self._vms)

    def add_vm(
        self,
        name: str,
        iface_id: str,
        mac: str,
        ip_cidr: str,
        gateway: str,
        *,
        nameservers: Sequence[str] = (),
        search: Sequence[str] = (),
        options: Sequence[str] = RESOLV_OPTIONS,
    ) -> Vm:
        """Create VM ``name`` and plug it into ``br-int`` as logical port ``iface_id``.

        ``eth0`` gets ``mac`` (must equal the LSP's MAC) and ``ip_cidr``, the default route goes
        via ``gateway``, and ``/etc/netns/<netns>/resolv.conf`` names ``nameservers`` (default:
        the gateway, where OVN answers DNS), ``search`` and ``options`` (default: a 1 s timeout
        and one attempt).
        """
        vm = self._create_vm(name, INTEGRATION_BRIDGE)
        try:
            self._configure_eth0(vm, [ip_cidr], mac=mac)
            vm.exec("ip", "route", "add", "default", "via", gateway)
            resolv = resolv_conf(nameservers or [gateway], search, options)
            self._write_resolv_conf(vm.netns, resolv)
            self._plug(vm, iface_id=iface_id)
        except BaseException:
            self.del_vm(name)
            raise
        self._vms[name] = vm
        return vm

    def add_external_host(
        self,
        name: str,
        network: str,
        addresses: Sequence[str],
        *,
        gateway_routes: Sequence[str] = (),
        mac: str | None = None,
    ) -> Vm:
        """Create a fake "internet" host on the bridge mapped to ``network`` (e.g. ``cloud``).

        ``addresses[0]`` and every later address that is not a ``/32`` go on ``eth0``; later
        ``/32`` addresses (e.g. ``8.8.8.8/32``) go on ``lo``, so the host answers for them
        without owning a subnet. ``gateway_routes`` are ``ip route add`` arguments, e.g.
        ``"100.66.0.0/16 via 100.65.0.115"``; no default route is set. ``mac`` pins eth0's
        MAC (default: random), e.g. to give gateway routers a ``Static_MAC_Binding`` for it.
        """
        if not addresses:
            raise ValueError("an external host needs at least one address")
        bridge = self._bridge_for(network)
        vm = self._create_vm(name, bridge)
        try:
            on_lo = [addr for addr in addresses[1:] if addr.endswith("/32")]
            on_eth0 = [addr for addr in addresses if addr not in on_lo]
            self._configure_eth0(vm, on_eth0, mac=mac)
            for addr in on_lo:
                vm.exec("ip", "addr", "add", addr, "dev", "lo")
            for route in gateway_routes:
                vm.exec("ip", "route", "add", *route.split())
            self._plug(vm, iface_id=None)
        except BaseException:
            self.del_vm(name)
            raise
        self._vms[name] = vm
        return vm

    def del_vm(self, name: str) -> None:
        """Unplug and delete VM or external host ``name``. Idempotent."""
        self._check_name(name)
        netns = self._netns(name)
        host = link_name(self.prefix, name)
        if procs.is_alive(self._ovsdb_pidfile):
            self.vsctl("--if-exists", "del-port", host)
        if netns in self.owned_netns():
            _delete_netns(netns)
        shutil.rmtree(ETC_NETNS / netns, ignore_errors=True)
        self._vms.pop(name, None)

    # -- tools -------------------------------------------------------------------------------

    def vsctl(self, *args: str, timeout: float = _VSCTL_TIMEOUT) -> str:
        """Run ``ovs-vsctl`` against this chassis' database; return stdout."""
        cmd = [
            "ovs-vsctl",
            f"--db=unix:{self._db_socket}",
            f"--timeout={max(1, math.ceil(timeout))}",
            *args,
        ]
        return procs.run(cmd, env=self._env, timeout=timeout + 5).stdout.rstrip("\n")

    def log_tails(self, lines: int = 20) -> str:
        """The tails of the three daemon logs, for error messages and test failures."""
        names = ("ovsdb-server", "ovs-vswitchd", "ovn-controller")
        return "\n".join(procs.log_tail(self.dirs.log / f"{name}.log", lines) for name in names)

    # -- internals: daemons ------------------------------------------------------------------

    @property
    def _db_socket(self) -> Path:
        return self.dirs.run / "db.sock"

    @property
    def _ovsdb_pidfile(self) -> Path:
        return self.dirs.run / "ovsdb-server.pid"

    @property
    def _vswitchd_pidfile(self) -> Path:
        return self.dirs.run / "ovs-vswitchd.pid"

    @property
    def _controller_pidfile(self) -> Path:
        return self.dirs.run / "ovn-controller.pid"

    @property
    def _pidfiles(self) -> tuple[Path, ...]:
        """In stopping order: the controller first, the database last."""
        return (self._controller_pidfile, self._vswitchd_pidfile, self._ovsdb_pidfile)

    def _create_hv_netns(self) -> None:
        procs.run(["ip", "netns", "add", self.hv_netns])
        procs.run(["ip", "-n", self.hv_netns, "link", "set", "lo", "up"])

    def _start_ovsdb(self) -> None:
        # A fresh conf.db each start: ports of a previous run point at deleted veths.
        conf_db = self.dirs.db / "conf.db"
        conf_db.unlink(missing_ok=True)
        procs.run(["ovsdb-tool", "create", str(conf_db), str(VSWITCH_SCHEMA)])
        argv = [
            "ovsdb-server",
            str(conf_db),
            f"--remote=punix:{self._db_socket}",
            f"--unixctl={self.dirs.run / 'ovsdb-server.ctl'}",
        ]
        log_file = self.dirs.log / "ovsdb-server.log"
        procs.start_daemon(argv, self._ovsdb_pidfile, log_file, env=self._env)

    def _init_open_vswitch(self) -> None:
        mappings = ",".join(f"{net}:{br}" for net, br in self.bridge_mappings.items())
        external_ids = {
            "system-id": self.name,
            "ovn-remote": self.sb_db,
            "ovn-encap-type": "geneve",
            "ovn-encap-ip": "127.0.0.1",
            "ovn-bridge": INTEGRATION_BRIDGE,
            "ovn-bridge-datapath-type": "netdev",
            "ovn-bridge-mappings": mappings,
        }
        # json.dumps quotes values the way OVSDB's string syntax expects (":" and "," inside).
        settings = [
            f"external_ids:{key}={json.dumps(value)}" for key, value in external_ids.items()
        ]
        self.vsctl("--no-wait", "init", "--", "set", "Open_vSwitch", ".", *settings)

    def _start_vswitchd(self) -> None:
        argv = [
            "ovs-vswitchd",
            f"unix:{self._db_socket}",
            f"--unixctl={self.dirs.run / 'ovs-vswitchd.ctl'}",
        ]
        log_file = self.dirs.log / "ovs-vswitchd.log"
        procs.start_daemon(
            argv, self._vswitchd_pidfile, log_file, netns=self.hv_netns, env=self._env
        )

    def _create_bridges(self) -> None:
        args = _bridge_args(INTEGRATION_BRIDGE, "fail-mode=secure")
        for bridge in self.bridge_mappings.values():
            args += ["--", *_bridge_args(bridge)]
        self.vsctl(*args)

    def _start_controller(self) -> None:
        # ovn-controller 23.03 rejects --unixctl; it makes <run>/ovn-controller.<pid>.ctl.
        argv = ["ovn-controller", f"unix:{self._db_socket}"]
        log_file = self.dirs.log / "ovn-controller.log"
        procs.start_daemon(
            argv, self._controller_pidfile, log_file, netns=self.hv_netns, env=self._env
        )

    def _wait_registered(self) -> None:
        if procs.wait_until(self._registered, self.timeout, interval=0.05):
            return
        raise procs.StartupError(
            f"chassis {self.name!r} did not appear in SB {self.sb_db} within {self.timeout:g} s"
            f"\n{self.log_tails()}"
        )

    def _registered(self) -> bool:
        cmd = ["ovn-sbctl", f"--db={self.sb_db}", "--timeout=5"]
        cmd += ["--bare", "--columns=name", "list", "Chassis"]
        result = procs.run(cmd, env=self._env, check=False, timeout=10)
        return result.returncode == 0 and self.name in result.stdout.split()

    # -- internals: VMs ----------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if not _NAME_RE.fullmatch(name) or name == HV_NAME:
            raise ValueError(f"VM name {name!r} must match {_NAME_RE.pattern} and not be 'hv'")

    def _netns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _bridge_for(self, network: str) -> str:
        try:
            return self.bridge_mappings[network]
        except KeyError:
            known = ", ".join(sorted(self.bridge_mappings)) or "none"
            raise ValueError(f"no bridge mapped to network {network!r} (known: {known})") from None

    def _create_vm(self, name: str, bridge: str) -> Vm:
        """The namespace and the veth pair: ``eth0`` inside, the host end up in ``<prefix>-hv``."""
        self._check_name(name)
        if not self.is_running():
            raise RuntimeError(f"chassis {self.name!r} is not running; call start() first")
        netns = self._netns(name)
        if netns in self.owned_netns():
            raise ValueError(f"VM {name!r} already exists (namespace {netns})")
        vm = Vm(name=name, netns=netns, host_link=link_name(self.prefix, name), bridge=bridge)
        procs.run(["ip", "netns", "add", netns])
        try:
            hv = ["ip", "-n", self.hv_netns, "link"]
            procs.run(
                [*hv, "add", vm.host_link, "type", "veth", "peer", "name", "eth0", "netns", netns]
            )
            procs.run([*hv, "set", vm.host_link, "up"])
        except BaseException:
            _delete_netns(netns)
            raise
        return vm

    @staticmethod
    def _configure_eth0(vm: Vm, addresses: Sequence[str], *, mac: str | None = None) -> None:
        ip = ["ip", "-n", vm.netns]
        if mac is not None:
            procs.run([*ip, "link", "set", "eth0", "address", mac])
        for addr in addresses:
            procs.run([*ip, "addr", "add", addr, "dev", "eth0"])
        procs.run([*ip, "link", "set", "eth0", "up"])
        procs.run([*ip, "link", "set", "lo", "up"])
        # The netdev datapath leaves CHECKSUM_PARTIAL unfinished: without this TCP/UDP break.
        vm.exec("ethtool", "-K", "eth0", "tx", "off")

    def _plug(self, vm: Vm, *, iface_id: str | None) -> None:
        args = ["add-port", vm.bridge, vm.host_link]
        if iface_id is not None:
            args += ["--", "set", "Interface", vm.host_link]
            args += [f"external_ids:iface-id={json.dumps(iface_id)}"]
        self.vsctl(*args)

    @staticmethod
    def _write_resolv_conf(netns: str, text: str) -> None:
        path = ETC_NETNS / netns / "resolv.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def resolv_conf(nameservers: Sequence[str], search: Sequence[str], options: Sequence[str]) -> str:
    """A resolv.conf: glibc reads at most three nameservers and six search domains."""
    lines = [f"nameserver {ns}" for ns in nameservers[:3]]
    if search:
        lines.append("search " + " ".join(search[:6]))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def _bridge_args(bridge: str, *settings: str) -> list[str]:
    return [
        "--may-exist",
        "add-br",
        bridge,
        "--",
        "set",
        "Bridge",
        bridge,
        "datapath_type=netdev",
        *settings,
    ]


def _delete_netns(netns: str) -> None:
    """Kill whatever still runs in ``netns`` (only ever one of ours), then delete it."""
    pids = procs.run(["ip", "netns", "pids", netns], check=False).stdout.split()
    procs.kill_pids([int(pid) for pid in pids if pid.isdigit()])
    procs.run(["ip", "netns", "del", netns])
