"""A routed fabric: hosts on separate L2 segments behind a plain router that knows nothing
of the pools, as in data centres where racks are subnets and the routers between them
do not speak BGP with the hosts.

Owns `RoutedFabric`, a `netsim.topology.Topology` whose hosts sit on segments:

    segment 1: 198.18.1.0/24          segment 2: 198.18.2.0/24
    switch ns (bridge) <- hosts       switch ns (bridge) <- hosts
              \\                                /
         seg1: .254 --- router namespace --- seg2: .254
                         lo: 198.18.0.254 (etcd)
                         out: 198.18.3.254
                                 |
                    "outside" namespace, 198.18.3.1

- each segment is a bridge in its own switch namespace (an L2 segment: what hosts on it
  say to each other never reaches the router); the router is joined to each switch by
  a veth and forwards between the segments and the outside; it has only its connected
  routes - no route to any pool, no BGP;
- hosts get `eth0` at 198.18.<segment>.<n>/24 (and fd00:198:18:<segment>::<n>/64 with
  `ipv6=True`) and a default route via the router, so BGP sessions and VXLAN packets
  between segments pass through it;
- etcd runs in the router namespace on 198.18.0.254 (reachable from every segment);
  the test process uses its unix socket;
- the outside namespace stands for the world beyond the pools (where nat-outgoing
  traffic goes): it routes back only to the segments.
`capture(ns, iface, bpf)` runs tcpdump in a namespace and hands back what it saw
(`Capture.lines()`), e.g. on the router's `seg1` leg to see what crosses the router, or
on a switch's bridge to see what one segment carries.

Leaves to others: starting nodes and workloads (`Topology.start_node`, calicoctl) and
what is checked. Everything is removed on `close()` (switches and the outside too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netsim.etcd import EtcdServer
from netsim.netns import Namespace
from netsim.topology import Host, Topology
from netsim.wait import wait_for

ETCD_IP = "198.18.0.254"
OUTSIDE_IP = "198.18.3.1"
ROUTER_OCTET = 254
PLEN = 24


def segment_net(segment: int) -> str:
    return f"198.18.{segment}"


def segment_net6(segment: int) -> str:
    return f"fd00:198:18:{segment}::"


@dataclass
class Segment:
    index: int  # 1, 2, ...
    switch: Namespace
    router_if: str  # the router's leg on it
    hosts: list[Host]

    @property
    def cidr(self) -> str:
        return f"{segment_net(self.index)}.0/{PLEN}"

    @property
    def gateway(self) -> str:
        return f"{segment_net(self.index)}.{ROUTER_OCTET}"


class Capture:
    """tcpdump running in a namespace; `lines()` stops it and returns what it printed."""

    def __init__(self, ns: Namespace, iface: str, bpf: str) -> None:
        fd, path = tempfile.mkstemp(prefix="netsim-cap-", suffix=".txt")
        os.close(fd)
        self.path = Path(path)
        self._err = self.path.with_suffix(".err")
        with open(self.path, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, "tcpdump", "-i", iface, "-n", "-q", "-l",
                 "-U", *bpf.split()],
                stdout=out, stderr=err, start_new_session=True)
        try:
            wait_for(lambda: "listening on" in self._err.read_text(errors="replace")
                     or self.proc.poll() is not None, 10, message="tcpdump to start")
            if self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump failed: {self._err.read_text(errors='replace')}")
        except BaseException:
            self.close()
            raise

    def lines(self) -> list[str]:
        """Stop tcpdump (it prints what it buffered) and return its output lines."""
        self.close()
        return [line for line in self.path.read_text(errors="replace").splitlines() if line]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        self._err.unlink(missing_ok=True)


class RoutedFabric(Topology):
    """See the module docstring. `hosts_per_segment[i]` hosts on segment i+1, named
    `host1`, `host2`, ... in segment order."""

    def __init__(self, prefix: str, hosts_per_segment: Sequence[int] = (2, 2),
                 ipv6: bool = False, outside: bool = True) -> None:
        self.prefix = prefix
        self.hosts = []
        self.etcd = None
        self.fabric = None
        self._procs = []
        self.segments: list[Segment] = []
        self.outside: Namespace | None = None
        self.ipv6 = ipv6
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-topo-"))
        try:
            self.fabric = router = Namespace(f"{prefix}-rtr")
            router.ip("addr", "add", f"{ETCD_IP}/32", "dev", "lo")
            router.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
            if ipv6:
                router.exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            for index in range(1, len(hosts_per_segment) + 1):
                self._add_segment(index)
            if outside:
                self._add_outside()
            self.etcd = EtcdServer(host=ETCD_IP, netns=router.name, unix_socket=True)
            self.etcd.start()
            n = 0
            for index, count in enumerate(hosts_per_segment, start=1):
                for i in range(1, count + 1):
                    n += 1
                    self.add_segment_host(f"host{n}", index, i)
        except BaseException:
            self.close()
            raise

    @property
    def router(self) -> Namespace:
        assert self.fabric is not None
        return self.fabric

    # --- building -----------------------------------------------------------------------------

    def _add_segment(self, index: int) -> Segment:
        switch = Namespace(f"{self.prefix}-sw{index}")
        segment = Segment(index, switch, f"seg{index}", [])
        self.segments.append(segment)
        switch.ip("link", "add", "br0", "address", f"02:00:c6:12:{index:02x}:fe", "type",
                  "bridge")
        switch.ip("link", "set", "br0", "up")
        self.router.ip("link", "add", segment.router_if, "type", "veth", "peer", "name",
                       "rtr", "netns", switch.name)
        switch.ip("link", "set", "rtr", "master", "br0")
        switch.ip("link", "set", "rtr", "up")
        self.router.ip("addr", "add", f"{segment.gateway}/{PLEN}", "dev", segment.router_if)
        if self.ipv6:
            self.router.ip("-6", "addr", "add", f"{segment_net6(index)}fe/64", "dev",
                           segment.router_if, "nodad")
        self.router.ip("link", "set", segment.router_if, "up")
        return segment

    def _add_outside(self) -> None:
        self.outside = Namespace(f"{self.prefix}-out")
        self.router.ip("link", "add", "out", "type", "veth", "peer", "name", "eth0", "netns",
                       self.outside.name)
        self.router.ip("addr", "add", f"198.18.3.{ROUTER_OCTET}/{PLEN}", "dev", "out")
        self.router.ip("link", "set", "out", "up")
        self.outside.ip("addr", "add", f"{OUTSIDE_IP}/{PLEN}", "dev", "eth0")
        self.outside.ip("link", "set", "eth0", "up")
        self.outside.ip("route", "add", "default", "via", f"198.18.3.{ROUTER_OCTET}")

    def add_segment_host(self, name: str, segment: int, octet: int) -> Host:
        """A host namespace with `eth0` on segment `segment` at 198.18.<segment>.<octet>/24,
        default route via the router."""
        seg = self.segments[segment - 1]
        ns = Namespace(f"{self.prefix}-{name}")
        ip = f"{segment_net(segment)}.{octet}"
        ip6 = f"{segment_net6(segment)}{octet:x}" if self.ipv6 else None
        host = Host(name, ns, ip, self.dir / name, ip6)
        self.hosts.append(host)
        seg.hosts.append(host)
        host.dir.mkdir()
        port = f"p{octet}-{ns.name[-4:]}"
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns",
              seg.switch.name)
        seg.switch.ip("link", "set", port, "master", "br0")
        seg.switch.ip("link", "set", port, "up")
        ns.ip("addr", "add", f"{ip}/{PLEN}", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", seg.gateway)
        if ip6:
            ns.ip("-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            ns.ip("-6", "route", "add", "default", "via", f"{segment_net6(segment)}fe")
        return host

    def segment_of(self, host: Host) -> Segment:
        return next(s for s in self.segments if host in s.hosts)

    # --- nodes and observation ---------------------------------------------------------------

    def start_node(self, host: Host, *args: str, check: bool = True,  # type: ignore[override]
                   env: dict[str, str] | None = None, with_prefix: bool = False
                   ) -> subprocess.CompletedProcess[str]:
        """`calicoctl node run` in `host`; `with_prefix` gives `--ip=ADDRESS/24` (else the
        node finds its subnet from the interface holding the address)."""
        ip = f"{host.ip}/{PLEN}" if with_prefix else host.ip
        ip6 = [f"--ip6={host.ip6}"] if host.ip6 else []
        return self.calicoctl(host, "node", "run", "--runtime=none", f"--name={host.name}",
                              f"--ip={ip}", *ip6, f"--log-dir={host.dir / 'log'}", *args,
                              check=check, env=env)

    @staticmethod
    def capture(ns: Namespace, iface: str, bpf: str) -> Capture:
        """Start tcpdump on `iface` in `ns` with filter `bpf` (see `Capture`)."""
        return Capture(ns, iface, bpf)

    # --- cleanup ------------------------------------------------------------------------------

    def close(self) -> None:
        super().close()  # processes, hosts, etcd, the router, the scratch directory
        for ns in [s.switch for s in self.segments] + ([self.outside] if self.outside else []):
            self.kill_namespace_processes(ns)
            ns.delete()

    def __enter__(self) -> RoutedFabric:
        return self
