"""What "converged" means after a fault, measured from outside the daemons.

Owns:
- `converged(cluster)`: every host has every BGP session Established, a BIRD route in its
  kernel to every other host's workloads, and every workload pings every other (IPv4 and
  IPv6);
- canaries: a change written to etcd right at recovery that felix (a profile rule, seen
  in every host's iptables) and confd (a custom filter comment, seen in every host's
  BIRD configuration) must both pick up - proof that each daemon follows etcd again,
  not just that the old dataplane still works;
- `wait_converged`: the time from recovery until all of that holds;
- `ipam_check`: `calicoctl ipam check` clean;
- `dataplane_snapshot` / `fresh_felix_matches`: felix's kernel state (its iptables chains
  and the jumps to them, its ipsets, its routes, permanent neighbour entries and proxy
  NDP entries) read back and compared with what a freshly started felix programs;
- `leaks`: what remains of workloads that are gone (addresses, endpoints, veths, routes,
  chains, ipset members), for the churn soak.

Black-box: processes, etcd keys and kernel state only; no felix internals.

Leaves to others: the faults, the traffic, the cluster.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from faults.cluster import PROFILE
from libcalico import keyspace as ks
from netsim.topology import Host
from netsim.wait import wait_for

if TYPE_CHECKING:
    from faults.cluster import Cluster, Workload

_CANARY_PORT_BASE = 30000


def _par(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


# --- BGP, routes, reachability -----------------------------------------------------------

def sessions_established(cluster: Cluster, host: Host) -> bool:
    want = (len(cluster.hosts) - 1) * (2 if cluster.ipv6 else 1)
    text = cluster.bird_protocols(host)
    up = sum(1 for line in text.splitlines() if " BGP " in line and "Established" in line)
    return up >= want


def routes_complete(cluster: Cluster, host: Host) -> bool:
    nets = []
    for version in (4, 6) if cluster.ipv6 else (4,):
        nets += [ipaddress.ip_network(r["dst"], strict=False)
                 for r in cluster.routes(host, version, "proto", "bird")
                 if r.get("dst", "default") != "default"]
    for wl in cluster.workloads:
        if wl.host is host:
            continue
        for addr in (wl.ipv4, wl.ipv6):
            if addr and not any(ipaddress.ip_address(addr) in n for n in nets):
                return False
    return True


def ping(src: Workload, addr: str, timeout: float = 1.0) -> bool:
    proc = src.ns.exec("ping", "-c", "1", "-W", str(timeout), addr, check=False)
    return proc.returncode == 0


def matrix_ok(cluster: Cluster) -> bool:
    """Every workload reaches every other by ping, IPv4 and IPv6."""
    jobs = [(a, addr) for a in cluster.workloads for b in cluster.workloads if a is not b
            for addr in (b.ipv4, b.ipv6) if addr]
    return all(_par(lambda j: ping(j[0], j[1]), jobs))


def converged(cluster: Cluster) -> bool:
    hosts = cluster.hosts
    return (all(_par(lambda h: sessions_established(cluster, h), hosts))
            and all(_par(lambda h: routes_complete(cluster, h), hosts))
            and matrix_ok(cluster))


# --- canaries ------------------------------------------------------------------------------

@dataclass
class Canary:
    """A change felix and confd must both apply; `seen()` when every host has it."""

    cluster: Cluster
    port: int
    marker: str

    @classmethod
    def write(cls, cluster: Cluster) -> Canary:
        from libcalico.model import PortRange, Rule

        port = _CANARY_PORT_BASE + int(time.monotonic() * 10) % 20000
        marker = f"# canary {port}"
        rule = Rule(action="allow", protocol="tcp", dst_ports=(PortRange(port, port),))
        cluster.client.update_profile(PROFILE, lambda p: replace(
            p, rules=replace(p.rules, inbound=(*p.rules.inbound, rule))))
        cluster.store.put(ks.custom_filter_key(4, "canary"), marker)
        return cls(cluster, port, marker)

    def felix_has(self, host: Host) -> bool:
        text = host.ns.exec("iptables-save", "-t", "filter", check=False).stdout
        return re.search(rf"--dports? {self.port}\b", text) is not None

    def confd_has(self, host: Host) -> bool:
        path = host.dir / "run" / "bird.cfg"
        return path.exists() and self.marker in path.read_text(errors="replace")

    def seen(self) -> bool:
        hosts = self.cluster.hosts
        return (all(_par(self.felix_has, hosts)) and all(_par(self.confd_has, hosts)))

    def remove(self) -> None:
        def drop(p: Any) -> Any:
            inbound = tuple(r for r in p.rules.inbound
                            if not any(x.lo == self.port for x in r.dst_ports))
            return replace(p, rules=replace(p.rules, inbound=inbound))

        self.cluster.client.update_profile(PROFILE, drop)
        self.cluster.store.delete(ks.custom_filter_key(4, "canary"))


def wait_converged(cluster: Cluster, timeout: float = 60.0,
                   since: float | None = None) -> float:
    """Write a canary, wait until it is everywhere and the cluster is converged; the
    seconds from `since` (default: now) until then. The canary is removed afterwards."""
    start = time.monotonic() if since is None else since
    canary = wait_for(lambda: Canary.write(cluster), timeout, interval=0.2,
                      message="etcd accepting the canary")
    try:
        wait_for(lambda: canary.seen() and converged(cluster), timeout, interval=0.1,
                 message="convergence (canary in felix and confd on every host, BGP, "
                         "routes, full ping matrix)")
        took = time.monotonic() - start
    finally:
        canary.remove()
    wait_for(lambda: not any(_par(canary.felix_has, cluster.hosts)), timeout,
             message="the canary rule removed")
    return took


# --- IPAM -----------------------------------------------------------------------------------

def ipam_check(cluster: Cluster, grace_period: float = 60.0) -> tuple[bool, str]:
    proc = cluster.calicoctl(cluster.hosts[0], "ipam", "check", "--grace-period",
                             str(grace_period), check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


# --- felix's dataplane --------------------------------------------------------------------

_COUNTERS = re.compile(r"^\[\d+:\d+\] ")


def _iptables(host: Host, binary: str, table: str) -> dict[str, list[str]]:
    """felix's chains in one table (chain -> rules, counters dropped) and the jumps
    from the kernel's chains into them."""
    out = host.ns.exec(binary, "-t", table, check=False).stdout
    chains: dict[str, list[str]] = {}
    for line in out.splitlines():
        line = _COUNTERS.sub("", line)
        if line.startswith(":felix-"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            if chain.startswith("felix-") or " felix-" in line:
                chains.setdefault(chain, []).append(line)
    return chains


def dataplane_snapshot(host: Host) -> dict[str, Any]:
    """Everything felix owns in `host`'s kernel, in a comparable form."""
    snap: dict[str, Any] = {}
    snap["filter4"] = _iptables(host, "iptables-save", "filter")
    snap["nat4"] = _iptables(host, "iptables-save", "nat")
    snap["filter6"] = _iptables(host, "ip6tables-save", "filter")
    ipsets = host.ns.exec("ipset", "save", check=False).stdout
    snap["ipsets"] = sorted(line for line in ipsets.splitlines()
                            if line.split()[1:2] and line.split()[1].startswith("felix-"))
    for v in (4, 6):
        snap[f"routes{v}"] = sorted(
            json.dumps(r, sort_keys=True)
            for r in json.loads(host.ns.ip(f"-{v}", "-j", "route", "show", "proto", "80")
                                .stdout or "[]"))
    snap["neigh"] = sorted(host.ns.ip("neigh", "show", "nud", "permanent").stdout.splitlines())
    snap["proxy6"] = sorted(host.ns.ip("-6", "neigh", "show", "proxy").stdout.splitlines())
    return snap


def diff_snapshots(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            for chain in sorted(set(va) | set(vb)):
                if va.get(chain) != vb.get(chain):
                    out.append(f"{key} {chain}: {va.get(chain)} != {vb.get(chain)}")
        else:
            sa, sb = set(va or []), set(vb or [])
            out.append(f"{key}: only before {sorted(sa - sb)[:5]}, only fresh "
                       f"{sorted(sb - sa)[:5]}")
    return out


def restart_felix(cluster: Cluster, host: Host, timeout: float = 60.0) -> None:
    """Start a fresh felix (supervisord restarts it) and wait until it has programmed
    the dataplane (its readiness endpoint: in sync and applied)."""
    import signal

    old = cluster.kill(host, "felix", signal.SIGTERM)
    cluster.wait_restarted(host, "felix", old, timeout)
    wait_for(lambda: cluster.felix_ready(host), timeout, interval=0.2,
             message=f"a fresh felix on {host.name} ready")


def fresh_felix_matches(cluster: Cluster, hosts: list[Host] | None = None,
                        timeout: float = 60.0) -> dict[str, list[str]]:
    """host -> differences between its dataplane now and after a fresh felix has
    programmed it (empty lists: equal)."""
    hosts = hosts or cluster.hosts
    before = {h.name: dataplane_snapshot(h) for h in hosts}
    _par(lambda h: restart_felix(cluster, h, timeout), hosts)
    result: dict[str, list[str]] = {}
    for h in hosts:
        # A fresh felix's first apply may still be followed by status-driven applies:
        # give it a moment to settle into the same state (polled, bounded).
        def same(h: Host = h) -> bool:
            return not diff_snapshots(before[h.name], dataplane_snapshot(h))

        try:
            wait_for(same, 10.0, interval=0.5, message=f"{h.name} dataplane as a fresh felix's")
            result[h.name] = []
        except TimeoutError:
            result[h.name] = diff_snapshots(before[h.name], dataplane_snapshot(h))
    return result


# --- leaks (the churn soak) ----------------------------------------------------------------

def leaks(cluster: Cluster, keep: list[Workload]) -> dict[str, list[str]]:
    """What exists beyond the workloads in `keep`: IPAM allocations and endpoints in etcd,
    and per host cali veths, felix routes, endpoint chains, ipset members."""
    from libcalico.ipam import check

    out: dict[str, list[str]] = {}
    addrs = {a for w in keep for a in (w.ipv4, w.ipv6) if a}
    report = check(cluster.store, 0.0)
    out["ipam_problems"] = ([f"leaked {x.ip}" for x in report.leaks]
                            + [f"missing {x.ip}" for x in report.missing]
                            + [f"stale affinity {x.block}" for x in report.stale_affinities]
                            + [f"duplicate {x.ip}" for x in report.duplicates])
    eps = cluster.client.list_workload_endpoints()
    keep_ids = {w.endpoint_id for w in keep}
    out["endpoints"] = [e.endpoint_id for e in eps if e.endpoint_id not in keep_ids]
    keep_ifaces = {e.name for e in eps if e.endpoint_id in keep_ids}
    for host in cluster.hosts:
        links = json.loads(host.ns.ip("-j", "link", "show").stdout or "[]")
        cali = {link["ifname"] for link in links if link["ifname"].startswith("cali")}
        out[f"{host.name} veths"] = sorted(cali - keep_ifaces)
        routes = [r["dst"] for v in (4, 6) for r in cluster.routes(host, v, "proto", "80")]
        out[f"{host.name} routes"] = sorted(r for r in routes
                                            if r.split("/")[0] not in addrs)
        chains = set(_iptables(host, "iptables-save", "filter"))
        suffixes = {i[4:] for i in keep_ifaces}
        out[f"{host.name} chains"] = sorted(
            c for c in chains if c.startswith(("felix-from-", "felix-to-"))
            and c.split("-", 2)[2] not in suffixes)
        ipsets = host.ns.exec("ipset", "save", check=False).stdout
        members = [line.split()[2] for line in ipsets.splitlines()
                   if line.startswith("add felix-v") and len(line.split()) > 2]
        out[f"{host.name} ipset members"] = sorted(m for m in members if m not in addrs)
    return {k: v for k, v in out.items() if v}
