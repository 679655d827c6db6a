"""A running Calico cluster to break: simulated hosts, nodes, pools, a profile, workloads.

Owns: building it the way an operator would (`netsim.topology.Topology`, then
`calicoctl node run --runtime=none` on every host at once, `calicoctl pool add`,
`calicoctl profile add`, `calicoctl container add` per workload), the handles a fault
needs (each host's supervisord and the pids of felix, confd and BIRD; killing a program
and waiting until supervisord has it running again; felix's readiness endpoint), the
workloads' traffic pairs, and removing everything again, even when a run fails.

Extending to the Docker and CNI ways in: `add_workload` is the one place workloads are
made; a Docker-driver or CNI-plugin cluster overrides it (create the container through
`docker run --net calico` or the plugin's ADD) and everything else (traffic, faults,
convergence, leak checks) works unchanged on the `Workload` it returns.

Leaves to others: the faults (`faults.matrix`), traffic (`faults.traffic`), what
"converged" means (`faults.converge`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calicoctl.supervisor import NodePaths, Supervisor
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from netsim.etcd import EtcdCluster, EtcdServer
from netsim.netns import Namespace
from netsim.topology import Host, Topology
from netsim.wait import wait_for

POOL4 = "198.19.0.0/16"
POOL6 = "fd00:198:19::/64"
PROFILE = "flt"
AGENT = str(Path(__file__).with_name("agent.py"))
HEALTH_URL = "http://127.0.0.1:9099/readiness"


@dataclass
class Workload:
    label: str
    host: Host
    ns: Namespace
    ipv4: str
    ipv6: str | None
    endpoint_id: str
    profiles: list[str] = field(default_factory=list)

    @property
    def ns_name(self) -> str:
        return self.ns.name


class Cluster:
    """See the module docstring. Use as a context manager; `start()` builds it."""

    def __init__(self, prefix: str = "flt", hosts: int = 3, workloads_per_host: int = 1,
                 etcd_members: int = 3, etcd_tls: bool = False,
                 etcd_auth: tuple[str, str] | None = None, ipv6: bool = True,
                 etcd_on_host: bool = False) -> None:
        self.prefix = prefix
        self.n_hosts = hosts
        self.workloads_per_host = workloads_per_host
        self.etcd_members = etcd_members
        self.etcd_tls = etcd_tls
        self.etcd_auth = etcd_auth
        self.ipv6 = ipv6
        self.etcd_on_host = etcd_on_host
        self.topo: Topology | None = None
        self.workloads: list[Workload] = []
        self._store: Datastore | None = None
        self._counter = 0

    # --- building ------------------------------------------------------------------------

    def start(self, converge_timeout: float = 60.0) -> Cluster:
        self.topo = Topology(self.prefix, hosts=self.n_hosts, ipv6=self.ipv6,
                             etcd_members=self.etcd_members, etcd_tls=self.etcd_tls,
                             etcd_auth=self.etcd_auth, etcd_on_host=self.etcd_on_host)
        with ThreadPoolExecutor(self.n_hosts) as pool:  # nodes start together
            list(pool.map(self.topo.start_node, self.topo.hosts))
        h1 = self.hosts[0]
        self.calicoctl(h1, "pool", "add", POOL4, *([POOL6] if self.ipv6 else []))
        self.calicoctl(h1, "profile", "add", PROFILE)
        for host in self.hosts:
            for _ in range(self.workloads_per_host):
                self.add_workload(host)
        from faults.converge import wait_converged

        wait_converged(self, converge_timeout)
        return self

    @property
    def hosts(self) -> list[Host]:
        assert self.topo is not None
        return self.topo.hosts

    @property
    def etcd(self) -> EtcdServer | EtcdCluster:
        assert self.topo is not None and self.topo.etcd is not None
        return self.topo.etcd

    @property
    def store(self) -> Datastore:
        """A datastore client for this (the test) process."""
        if self._store is None:
            assert self.topo is not None
            self._store = self.topo.datastore()
        return self._store

    @property
    def client(self) -> CalicoClient:
        return CalicoClient(self.store)

    def calicoctl(self, host: Host, *args: str, check: bool = True
                  ) -> subprocess.CompletedProcess[str]:
        assert self.topo is not None
        return self.topo.calicoctl(host, *args, check=check)

    def add_workload(self, host: Host, ipv4: bool = True, ipv6: bool | None = None,
                     profile: str | None = PROFILE, label: str | None = None,
                     via: str = "calicoctl") -> Workload:
        """A namespace on the network (the one place workloads are made; see the module
        docstring): through `calicoctl container add` (`via="calicoctl"`), or through the
        workload plumbing every way in shares (`via="library"`: `workload.provision`,
        what the Docker and CNI adapters call), in this process - no CLI start-up, for
        churn."""
        ipv6 = self.ipv6 if ipv6 is None else ipv6
        self._counter += 1
        label = label or f"{host.name}/w{self._counter}"
        ns = Namespace(f"{self.prefix}-wl")
        if via == "library":
            return self._add_in_process(host, ns, ipv4, ipv6, profile, label)
        try:
            first = "ipv4" if ipv4 else "ipv6"
            self.calicoctl(host, "container", "add", ns.name, first)
            if ipv4 and ipv6:
                self.calicoctl(host, "container", ns.name, "ip", "add", "ipv6")
            if profile:
                self.calicoctl(host, "container", ns.name, "profile", "set", profile)
            (ep,) = self.client.list_workload_endpoints(host.name, "netns", ns.name)
        except BaseException:
            self.calicoctl(host, "container", "remove", ns.name, check=False)
            ns.delete()
            raise
        wl = Workload(label, host, ns, ep.ipv4_nets[0].split("/")[0] if ep.ipv4_nets else "",
                      ep.ipv6_nets[0].split("/")[0] if ep.ipv6_nets else None,
                      ep.endpoint_id, [profile] if profile else [])
        self.workloads.append(wl)
        return wl

    def _add_in_process(self, host: Host, ns: Namespace, ipv4: bool, ipv6: bool,
                        profile: str | None, label: str) -> Workload:
        from libcalico.ipam import IPAMClient
        from workload import provision

        where = provision.Workload(host.name, "netns", ns.name, ns.name)
        requests = [r for r, on in (("ipv4", ipv4), ("ipv6", ipv6)) if on]
        try:
            ep = provision.add_workload(self.client, IPAMClient(self.store), where, requests,
                                        profiles=[profile] if profile else [],
                                        host_netns=host.ns.name)
        except BaseException:
            ns.delete()
            raise
        wl = Workload(label, host, ns, ep.ipv4_nets[0].split("/")[0] if ep.ipv4_nets else "",
                      ep.ipv6_nets[0].split("/")[0] if ep.ipv6_nets else None,
                      ep.endpoint_id, [profile] if profile else [])
        self.workloads.append(wl)
        return wl

    def set_profiles(self, wl: Workload, profiles: Sequence[str]) -> None:
        """The endpoint's profiles, in the datastore (as `container NS profile set`)."""
        from dataclasses import replace

        (ep,) = self.client.list_workload_endpoints(wl.host.name, "netns", wl.ns.name)
        self.client.update_workload_endpoint(
            ep.ident, lambda e: replace(e, profile_ids=tuple(profiles)))
        wl.profiles = list(profiles)

    def remove_workload(self, wl: Workload, via: str = "calicoctl") -> None:
        if via == "library":
            from libcalico.ipam import IPAMClient
            from workload import provision

            provision.remove_workload(self.client, IPAMClient(self.store), wl.host.name,
                                      "netns", wl.ns.name, host_netns=wl.host.ns.name)
        else:
            self.calicoctl(wl.host, "container", "remove", wl.ns.name)
        wl.ns.delete()
        self.workloads.remove(wl)

    def pairs(self) -> list[tuple[Workload, Workload]]:
        """One workload per host in a ring: every pair crosses hosts (BGP routes)."""
        firsts = [next(w for w in self.workloads if w.host is h) for h in self.hosts
                  if any(w.host is h for w in self.workloads)]
        return [(firsts[i], firsts[(i + 1) % len(firsts)]) for i in range(len(firsts))]

    # --- the node's programs -------------------------------------------------------------

    def supervisor(self, host: Host) -> Supervisor:
        return Supervisor(NodePaths(host.dir / "run", host.dir / "log"))

    def pids(self, host: Host) -> dict[str, int]:
        """program -> pid of the RUNNING ones."""
        try:
            return {p.name: p.pid for p in self.supervisor(host).programs()
                    if p.state == "RUNNING"}
        except OSError:
            return {}

    def kill(self, host: Host, program: str, sig: int = signal.SIGKILL) -> int:
        """Signal a node program; returns the pid that was signalled."""
        pid = self.pids(host)[program]
        with contextlib.suppress(ProcessLookupError):
            import os

            os.kill(pid, sig)
        return pid

    def wait_restarted(self, host: Host, program: str, old_pid: int,
                       timeout: float = 30.0) -> float:
        """Wait until supervisord runs `program` again under a new pid; returns when."""
        import time

        wait_for(lambda: self.pids(host).get(program, old_pid) != old_pid, timeout,
                 interval=0.05, message=f"{program} on {host.name} restarted")
        return time.monotonic()

    def felix_ready(self, host: Host) -> bool:
        out = host.ns.exec(sys.executable, AGENT, "http-status", HEALTH_URL,
                           check=False).stdout.strip()
        return out == "200"

    def log(self, host: Host, program: str) -> str:
        path = host.dir / "log" / f"{program}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- inspection ------------------------------------------------------------------------

    def bird_protocols(self, host: Host) -> str:
        sock = host.dir / "run" / "bird.ctl"
        return host.ns.exec("birdcl", "-s", str(sock), "show", "protocols",
                            check=False).stdout

    def routes(self, host: Host, version: int, *args: str) -> list[dict[str, Any]]:
        out = host.ns.ip(f"-{version}", "-j", "route", "show", *args).stdout
        return list(json.loads(out or "[]"))

    # --- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None
        if self.topo is not None:
            self.topo.close()
        for wl in self.workloads:
            wl.ns.delete()
        self.workloads = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def cluster(**kwargs: Any) -> Iterator[Cluster]:
    c = Cluster(**kwargs)
    try:
        c.start()
        yield c
    finally:
        c.close()


def parallel(fn: Any, items: Sequence[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))
