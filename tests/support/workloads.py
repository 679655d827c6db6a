"""Workloads for felix tests: a namespace per workload, veth to its host, endpoint JSON.

Owns: creating a workload namespace (unique name) with `eth0` whose peer `cali<id>` sits
in the host namespace, the workload's /32 and /128 addresses, its default routes via
169.254.1.1 / fe80::1 with permanent neighbour entries pointing at the host veth's MAC
(simulated hosts have no default route, see docs/environment), the endpoint value felix
reads from etcd, and traffic helpers (ping, TCP/UDP with nc, listeners). Everything is
deleted with the workload namespace.

Leaves to others: the host namespaces and etcd (`netsim.topology`), felix.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from libcalico import keyspace
from netsim.netns import Namespace


@dataclass
class Workload:
    host_ns: Namespace
    hostname: str
    ns: Namespace
    ifname: str  # host side
    ipv4: str
    ipv6: str | None
    mac: str
    profiles: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    workload_id: str = ""
    listeners: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return keyspace.workload_endpoint_key(self.hostname, "test", self.workload_id, "eth0")

    def endpoint_json(self, **overrides: object) -> str:
        data: dict[str, object] = {
            "state": "active", "name": self.ifname, "mac": self.mac,
            "profile_ids": self.profiles, "labels": self.labels,
            "ipv4_nets": [f"{self.ipv4}/32"],
            "ipv6_nets": [f"{self.ipv6}/128"] if self.ipv6 else []}
        data.update(overrides)
        return json.dumps(data)

    def ping(self, dest: str, count: int = 1, timeout: float = 1.0, src: str | None = None
             ) -> bool:
        cmd = ["ping", "-n", "-c", str(count), "-W", str(timeout)]
        if count > 1:
            cmd += ["-i", "0.2"]
        if src:
            cmd += ["-I", src]
        return self.ns.exec(*cmd, dest, check=False).returncode == 0

    def listen(self, *ports: int) -> None:
        """TCP and UDP listeners (IPv4 and IPv6) on `ports` that answer "ok"."""
        self.listeners.append(serve(self.ns.name, ports))

    def connect(self, dest: str, port: int, udp: bool = False, timeout: float = 1.0,
                src: str | None = None, sport: int | None = None) -> bool:
        """True when the listener at dest:port answered "ok"."""
        return connect(self.ns.name, dest, port, udp, timeout, src, sport)


def serve(netns: str, ports: Sequence[int]) -> subprocess.Popen[bytes]:
    """TCP and UDP listeners (IPv4 and IPv6) on `ports` in `netns` that answer "ok";
    the caller kills the process group when done."""
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _SERVER,
                             *map(str, ports)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_serving(netns: str, ports: Sequence[int], timeout: float = 20.0) -> None:
    """Until `serve`'s listeners in `netns` answer on every port (over loopback, which no
    policy polices)."""
    from netsim.wait import wait_for

    for port in ports:
        wait_for(lambda p=port: connect(netns, "127.0.0.1", p, timeout=0.5), timeout,  # type: ignore[misc]
                 message=f"a listener on port {port} in {netns}")


def connect(netns: str, dest: str, port: int, udp: bool = False, timeout: float = 1.0,
            src: str | None = None, sport: int | None = None) -> bool:
    """From `netns`: True when the listener at dest:port answered "ok" within `timeout`
    (a TCP connect, or a UDP datagram and its answer), sent from `src`:`sport` if given."""
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _CLIENT, dest,
                           str(port), "udp" if udp else "tcp", str(timeout), src or "",
                           str(sport or 0)], capture_output=True, text=True, check=False)
    return proc.stdout.strip() == "ok"


def ping(netns: str, dest: str, timeout: float = 1.0, src: str | None = None) -> bool:
    """One echo request from `netns` (from `src` if given); True when answered."""
    cmd = ["ip", "netns", "exec", netns, "ping", "-n", "-c", "1", "-W", str(timeout)]
    if src:
        cmd += ["-I", src]
    return subprocess.run([*cmd, dest], capture_output=True, check=False).returncode == 0


_SERVER = """
import socket, sys, threading
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"ok")
        finally:
            c.close()
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        _, addr = s.recvfrom(2048)
        s.sendto(b"ok", addr)
for p in sys.argv[1:]:
    threading.Thread(target=tcp, args=(int(p),)).start()
    threading.Thread(target=udp, args=(int(p),)).start()
"""

_CLIENT = """
import socket, sys
dest, port, proto, timeout, src, sport = sys.argv[1:7]
port, timeout, sport = int(port), float(timeout), int(sport)
fam = socket.AF_INET6 if ":" in dest else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(timeout)
try:
    if src or sport:
        s.bind((src, sport))
    if proto == "udp":
        s.sendto(b"hi", (dest, port))
        data = s.recv(100)
    else:
        s.connect((dest, port))
        data = s.recv(100)
    print(data.decode().strip())
except OSError as exc:
    print("fail", exc)
"""


def create_workload(host_ns: Namespace, hostname: str, index: int, ipv4: str,
                    ipv6: str | None, profiles: list[str],
                    labels: dict[str, str] | None = None) -> Workload:
    suffix = secrets.token_hex(3)
    ifname = f"cali{index:02d}{suffix}"
    ns = Namespace(f"flxf-w{index}")
    try:
        host_ns.ip("link", "add", ifname, "type", "veth", "peer", "name", "eth0",
                   "netns", ns.name)
        host_ns.ip("link", "set", ifname, "up")
        mac = ns.ip("-j", "link", "show", "eth0").stdout
        mac = json.loads(mac)[0]["address"]
        host_mac = json.loads(host_ns.ip("-j", "link", "show", ifname).stdout)[0]["address"]
        ns.ip("link", "set", "eth0", "up")
        ns.ip("addr", "add", f"{ipv4}/32", "dev", "eth0")
        ns.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        ns.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        ns.ip("neigh", "add", "169.254.1.1", "lladdr", host_mac, "dev", "eth0", "nud",
              "permanent")
        if ipv6:
            ns.exec("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
            ns.ip("-6", "addr", "add", f"{ipv6}/128", "dev", "eth0", "nodad")
            ns.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
            ns.ip("-6", "neigh", "add", "fe80::1", "lladdr", host_mac, "dev", "eth0", "nud",
                  "permanent")
    except BaseException:
        ns.delete()
        raise
    return Workload(host_ns, hostname, ns, ifname, ipv4, ipv6, mac, profiles,
                    dict(labels or {}), f"w{index}-{suffix}")


def delete_workload(wl: Workload) -> None:
    for proc in wl.listeners:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    wl.ns.delete()
    wl.host_ns.ip("link", "del", wl.ifname, check=False)


@contextmanager
def workloads() -> Iterator[list[Workload]]:
    """A list to append created workloads to; all are deleted at the end."""
    created: list[Workload] = []
    try:
        yield created
    finally:
        for wl in created:
            delete_workload(wl)
