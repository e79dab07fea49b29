"""A tiny TCP/UDP server and client run inside network-namespace VMs by the data-path tests.

The server answers ``"<name> peer=<source ip>"`` and appends every source address to a log
file before replying, so the log is complete once a client has its answer: the receiving side
says who it saw, which is how the tests prove SNAT and isolation.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vpcbus.embedded.chassis import Vm

# One TCP and one UDP socket bound to ONE address (a UDP reply from another address of the
# host would miss the SNAT conntrack entry). Every peer is appended to a log file before the
# reply "<name> peer=<ip>" goes out, so the log is complete once a client has its answer.
PEER_SERVER = """
import select, socket, sys
name, addr, log = sys.argv[1], (sys.argv[2], int(sys.argv[3])), sys.argv[4]
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(addr)
tcp.listen()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(addr)
print("ready", flush=True)
while True:
    for sock in select.select([tcp, udp], [], [])[0]:
        if sock is tcp:
            conn, peer = tcp.accept()
        else:
            _, peer = udp.recvfrom(2048)
        with open(log, "a") as out:
            out.write(peer[0] + "\\n")
        reply = f"{name} peer={peer[0]}\\n".encode()
        if sock is tcp:
            conn.sendall(reply)
            conn.close()
        else:
            udp.sendto(reply, peer)
"""

PEER_CLIENT = """
import socket, sys
proto, addr, wait = sys.argv[1], (sys.argv[2], int(sys.argv[3])), float(sys.argv[4])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
with socket.socket(socket.AF_INET, kind) as sock:
    sock.settimeout(wait)
    sock.connect(addr)
    if proto == "udp":
        sock.send(b"hello")
    print(sock.recv(2048).decode().strip())
"""


@dataclass(frozen=True)
class Server:
    proc: subprocess.Popen[str]
    log: Path

    def peers(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=5)


def start_server(vm: Vm, name: str, ip: str, port: int, logdir: Path) -> Server:
    """Start a server named ``name`` on ``ip:port`` in ``vm``; returns once it listens."""
    log = logdir / f"{name}.peers"
    proc = vm.spawn(sys.executable, "-c", PEER_SERVER, name, ip, str(port), str(log))
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"peer server in {vm.netns} failed: {proc.communicate()[1]}")
    return Server(proc, log)


def ask(
    vm: Vm, proto: str, ip: str, port: int, wait: float = 3.0
) -> subprocess.CompletedProcess[str]:
    """One TCP connection or UDP datagram from ``vm`` to ``ip:port``; stdout is the answer."""
    args = (proto, ip, str(port), f"{wait:g}")
    return vm.exec(sys.executable, "-c", PEER_CLIENT, *args, timeout=wait + 10, check=False)
