"""`scripts/demo.sh` (`python -m demo.cluster`): a 3-host Calico cluster, shown working.

Owns the demo's steps, in order: etcd and three hosts in network namespaces
(`netsim.topology.Topology`, reused as the system tests use it), `calicoctl node
run --runtime=none` in every host at once (with `--runtime=docker`: a private Docker
engine per host, `netsim.dockerhosts`, with this checkout's node image, and
`calicoctl node --runtime=docker --libnetwork` running containers calico-node and
calico-libnetwork on each), an IPv4 pool (198.19.0.0/16, outside the fabric's
198.18.0.0/24) and an IPv6 pool (fd00:198:19::/64, blocks of /122), a profile, two
workloads per host (`calicoctl container add NS ipv4`, `container NS ip add ipv6`,
`container NS profile set`; with `--runtime=docker`: `docker network create -d calico
--ipam-driver calico-ipam --ipv6 demo` on each host and `docker run --net=demo`
containers, whose endpoints use profile demo), waiting (polled, with a
deadline) until every host has every BGP session Established and a BIRD route to every
other host's workloads, each host's `calicoctl node status` and routing tables, then the
ping/TCP matrix before and after `calicoctl profile demo rule add inbound --at=0 deny
tcp to ports 8080` (each polled until as expected or its deadline passes). Exit status:
0 when both matrices are as expected, 1 when not, 2 for bad usage, 130 when interrupted.

Everything is removed at the end, on Ctrl-C or SIGTERM; with `--keep` it stays and the
demo prints how to explore it and how to remove it (`--teardown`, from the state file).

Leaves to others: the matrix's checks and tables (`demo.matrix`), the state file and
teardown (`demo.state`), the probes run inside workloads (`demo.agent`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from calicoctl.nodeimage import DEFAULT_IMAGE
from demo import matrix
from demo.state import DEFAULT_PATH, DemoState, default_path, teardown
from netsim.dockerhosts import DockerHosts
from netsim.netns import Namespace
from netsim.topology import Host, Topology, calicoctl_path

PREFIX = "demo"
HOSTS = 3
WORKLOADS_PER_HOST = 2
POOL_V4 = "198.19.0.0/16"
POOL_V6 = "fd00:198:19::/64"
PROFILE = "demo"
NETWORK = PROFILE  # --runtime=docker: the Docker network, whose endpoints use the profile
DENY_RULE = ("inbound", "--at=0", "deny", "tcp", "to", "ports", str(matrix.DENIED_PORT))
AGENT = str(Path(__file__).with_name("agent.py"))
CONVERGE_S = 45.0
MATRIX_S = 30.0
T = TypeVar("T")


@dataclass
class Workload:
    """A workload: a namespace of its own (`calicoctl container add`), or with
    --runtime=docker a container on the host's engine (`docker run --net=demo`)."""

    host: Host
    ns: Namespace | None
    target: matrix.Target
    container: str | None = None

    @property
    def where(self) -> str:
        return self.container or (self.ns.name if self.ns is not None else "")


def section(title: str) -> None:
    print(f"\n{'=' * 78}\n== {title}\n{'=' * 78}", flush=True)


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def parallel(fn: Callable[..., T], items: Sequence[Any]) -> list[T]:
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


class Demo:
    """One run: builds the cluster step by step, recording it in `state` as it goes."""

    def __init__(self, state: DemoState, runtime: str = "none") -> None:
        self.state = state
        self.runtime = runtime
        self.topo: Topology | None = None
        self.docker: DockerHosts | None = None
        self.workloads: list[Workload] = []
        self.nodes_started = 0.0

    def ctl(self, host: Host, *args: str) -> subprocess.CompletedProcess[str]:
        """`calicoctl ARGS` on `host` (against its Docker engine with --runtime=docker)."""
        if self.docker is not None:
            return self.docker.calicoctl(host, *args)
        assert self.topo is not None
        return self.topo.calicoctl(host, *args)

    # --- building -----------------------------------------------------------------------------

    def build(self) -> None:
        section(f"1. etcd and {HOSTS} hosts (network namespaces on a fabric bridge)")
        self.topo = topo = Topology(PREFIX, hosts=HOSTS, ipv6=True)
        assert topo.etcd is not None and topo.fabric is not None
        self.state.add([topo.fabric.name, *(h.ns.name for h in topo.hosts)],
                       [str(topo.dir), topo.etcd.data_dir], etcd=topo.etcd.url,
                       hosts={h.name: {"ns": h.ns.name, "ip": h.ip, "ip6": h.ip6,
                                       "dir": str(h.dir)} for h in topo.hosts})
        print(f"  etcd {topo.etcd.url} in namespace {topo.fabric.name}")
        for h in topo.hosts:
            print(f"  {h.name}  namespace {h.ns.name:<16} eth0 {h.ip}/24  {h.ip6}/64")

        if self.runtime == "docker":
            section("1b. A Docker engine per host, and the node image loaded into each")
            print("  (the first run on a machine builds the image: `calicoctl node image "
                  "build`, a few minutes)", flush=True)
            started = time.monotonic()
            self.docker = DockerHosts(topo)
            self.state.add(runtime="docker", engines={n: e.host for n, e
                                                      in self.docker.engines.items()})
            for h in topo.hosts:
                print(f"  {h.name}  DOCKER_HOST={self.docker.engine(h).host}")
            print(f"  engines up, image {DEFAULT_IMAGE} loaded in "
                  f"{time.monotonic() - started:.1f} s")

        section(f"2. calicoctl node --runtime={self.runtime} on every host at once")
        self.nodes_started = started = time.monotonic()
        docker = self.docker
        outs = parallel(lambda h: (docker.start_node(h, "--libnetwork") if docker
                                   else topo.start_node(h)).stdout, topo.hosts)
        for h, out in zip(topo.hosts, outs, strict=True):
            print(f"  {h.name}: {out.strip().splitlines()[-1]}")
        print(f"  all nodes up in {time.monotonic() - started:.1f} s")

        section("3. Pools and a profile")
        h1 = topo.hosts[0]
        self.ctl(h1, "pool", "add", POOL_V4, POOL_V6)
        self.ctl(h1, "profile", "add", PROFILE)
        print("  $ calicoctl pool show")
        print(indent(self.ctl(h1, "pool", "show").stdout, "    "))
        print(f"  $ calicoctl profile {PROFILE} rule show")
        print(indent(self.ctl(h1, "profile", PROFILE, "rule", "show").stdout, "    "))

        if self.docker is not None:
            self._docker_workloads()
        else:
            section(f"4. {WORKLOADS_PER_HOST} workloads per host (calicoctl container add)")
            for h in topo.hosts:
                for j in range(1, WORKLOADS_PER_HOST + 1):
                    ns = Namespace(f"{PREFIX}-{h.name[-1]}w{j}")
                    self.state.add([ns.name])
                    self.workloads.append(Workload(h, ns, matrix.Target(f"{h.name}/w{j}", "",
                                                                        "")))
            parallel(self._add_host_workloads, topo.hosts)
        self.state.add(workloads={w.target.label: {"ns": w.ns.name if w.ns else None,
                                                   "container": w.container,
                                                   "ipv4": w.target.ipv4,
                                                   "ipv6": w.target.ipv6}
                                  for w in self.workloads})
        where = "container" if self.docker is not None else "namespace"
        print(f"  {'workload':<10} {where:<16} {'IPv4':<15} IPv6")
        for w in self.workloads:
            print(f"  {w.target.label:<10} {w.where:<16} {w.target.ipv4:<15} {w.target.ipv6}")

    def _docker_workloads(self) -> None:
        """--runtime=docker: network `demo` (driver calico, IPAM calico-ipam, IPv6) on each
        host's engine - its endpoints use the profile of that name, made above - and the
        workloads as containers on it (`docker run --net=demo`), each running the demo's
        listeners (demo/agent.py, mounted, with the Python of the node image)."""
        assert self.docker is not None and self.topo is not None
        docker = self.docker
        section(f"4. docker network create -d calico --ipam-driver calico-ipam --ipv6 "
                f"{NETWORK} on every host, then {WORKLOADS_PER_HOST} workloads per host "
                f"(docker run --net={NETWORK})")
        for h in self.topo.hosts:
            for j in range(1, WORKLOADS_PER_HOST + 1):
                self.workloads.append(Workload(h, None, matrix.Target(f"{h.name}/w{j}", "", ""),
                                               container=f"w{j}"))

        def add(host: Host) -> None:
            engine = docker.engine(host)
            engine.docker("network", "create", "-d", "calico", "--ipam-driver", "calico-ipam",
                          "--ipv6", NETWORK)
            for w in (w for w in self.workloads if w.host is host):
                assert w.container is not None
                engine.docker("run", "-d", "--name", w.container, f"--net={NETWORK}", "-v",
                              f"{AGENT}:/agent.py:ro", "--entrypoint", "python3",
                              DEFAULT_IMAGE, "/agent.py", "serve", str(matrix.DENIED_PORT),
                              str(matrix.OPEN_PORT))
                info = json.loads(engine.docker("inspect", w.container).stdout)[0]
                net = info["NetworkSettings"]["Networks"][NETWORK]
                w.target = matrix.Target(w.target.label, net["IPAddress"],
                                         net["GlobalIPv6Address"])
                deadline = time.monotonic() + 30
                while "ready" not in engine.docker("logs", w.container).stdout:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the listeners in {w.container} on {host.name} "
                                           "did not start")
                    time.sleep(0.1)

        parallel(add, self.topo.hosts)

    def _add_host_workloads(self, host: Host) -> None:
        """On `host`, one after the other (as an operator would): add each workload with
        an IPv4 address, give it an IPv6 one, put it in the profile; start its listeners."""
        assert self.topo is not None
        for w in (w for w in self.workloads if w.host is host):
            assert w.ns is not None
            self.ctl(host, "container", "add", w.ns.name, "ipv4")
            self.ctl(host, "container", w.ns.name, "ip", "add", "ipv6")
            self.ctl(host, "container", w.ns.name, "profile", "set", PROFILE)
            addrs = json.loads(w.ns.ip("-j", "addr", "show", "dev", "eth1").stdout)
            infos = [a for link in addrs for a in link.get("addr_info", [])
                     if a.get("scope") == "global"]
            ipv4 = next(a["local"] for a in infos if a["family"] == "inet")
            ipv6 = next(a["local"] for a in infos if a["family"] == "inet6")
            w.target = matrix.Target(w.target.label, ipv4, ipv6)
            self._start_listener(w)

    @staticmethod
    def _start_listener(w: Workload) -> None:
        assert w.ns is not None
        proc = subprocess.Popen(["ip", "netns", "exec", w.ns.name, sys.executable, AGENT,
                                 "serve", str(matrix.DENIED_PORT), str(matrix.OPEN_PORT)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the listeners in {w.ns.name} did not start")
        proc.stdout.close()

    # --- convergence --------------------------------------------------------------------------

    def converged(self, host: Host) -> tuple[int, int]:
        """(BGP sessions Established, other hosts' workload addresses with a BIRD route)."""
        birdc = subprocess.run(["birdc", "-s", str(host.dir / "run" / "bird.ctl"),
                                "show", "protocols"], capture_output=True, text=True,
                               check=False).stdout
        established = sum(1 for line in birdc.splitlines()
                          if " BGP " in line and "Established" in line)
        nets = []
        for family in ("-4", "-6"):
            out = host.ns.ip(family, "-j", "route", "show", "proto", "bird").stdout
            nets += [ipaddress.ip_network(r["dst"], strict=False)
                     for r in json.loads(out or "[]") if r.get("dst", "default") != "default"]
        routed = sum(1 for w in self.workloads if w.host is not host
                     for a in (w.target.ipv4, w.target.ipv6)
                     if any(ipaddress.ip_address(a) in n for n in nets))
        return established, routed

    def wait_converged(self) -> None:
        assert self.topo is not None
        section("5. Waiting for BGP: every session Established, every workload routed")
        want_sessions = 2 * (HOSTS - 1)  # IPv4 and IPv6 mesh sessions
        want_routes = 2 * WORKLOADS_PER_HOST * (HOSTS - 1)
        started = time.monotonic()
        deadline = started + CONVERGE_S
        while True:
            counts = parallel(self.converged, self.topo.hosts)
            if all(c == (want_sessions, want_routes) for c in counts):
                break
            if time.monotonic() > deadline:
                for h, (s, r) in zip(self.topo.hosts, counts, strict=True):
                    print(f"  {h.name}: {s}/{want_sessions} sessions, {r}/{want_routes} routes")
                raise TimeoutError(f"BGP did not converge within {CONVERGE_S:.0f} s")
            time.sleep(0.2)
        print(f"  every host has {want_sessions} BGP sessions Established and BIRD routes to "
              f"the {want_routes} addresses of the other hosts' workloads\n  (waited "
              f"{time.monotonic() - started:.1f} s here, "
              f"{time.monotonic() - self.nodes_started:.1f} s since the nodes were started)")

    def show_hosts(self) -> None:
        assert self.topo is not None
        topo = self.topo
        section("6. calicoctl node status on each host")
        for h, out in zip(topo.hosts, parallel(
                lambda h: self.ctl(h, "node", "status").stdout, topo.hosts), strict=True):
            print(f"--- {h.name} ({h.ns.name})\n{indent(out)}")
        section("7. Routing tables (proto bird: learned over BGP; blackhole: own blocks)")
        for h in topo.hosts:
            print(f"--- {h.name}: ip route")
            print(indent(h.ns.ip("-4", "route").stdout))
            print(f"--- {h.name}: ip -6 route")
            print(indent(h.ns.ip("-6", "route").stdout))

    # --- the matrix ---------------------------------------------------------------------------

    def probe(self, w: Workload) -> dict[tuple[str, str, int, str], bool]:
        plan = matrix.probe_plan(w.target, [x.target for x in self.workloads])
        if w.container is not None:  # from the container's network namespace
            assert self.docker is not None
            pid = self.docker.engine(w.host).docker(
                "inspect", "-f", "{{.State.Pid}}", w.container).stdout.strip()
            enter = ["nsenter", f"--net=/proc/{pid}/ns/net"]
        else:
            assert w.ns is not None
            enter = ["ip", "netns", "exec", w.ns.name]
        proc = subprocess.run([*enter, sys.executable, AGENT, "probe", json.dumps(plan)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"probe from {w.target.label} failed: {proc.stderr.strip()}")
        return matrix.parse_probe(w.target, json.loads(proc.stdout))

    def matrix_phase(self, title: str, phase: str, deny_rule: bool) -> bool:
        """Probe until the matrix is as expected or MATRIX_S passes; print the last one."""
        section(title)
        targets = [w.target for w in self.workloads]
        started = time.monotonic()
        rounds = 0
        while True:
            rounds += 1
            results: dict[tuple[str, str, int, str], bool] = {}
            for part in parallel(self.probe, self.workloads):
                results.update(part)
            wrong = matrix.mismatches(results, targets, deny_rule)
            if not wrong or time.monotonic() - started > MATRIX_S:
                break
            time.sleep(0.2)
        for family in matrix.FAMILIES:
            print(indent("\n".join(matrix.render_table(results, targets, family))))
            print()
        for family in matrix.FAMILIES:
            print(matrix.summary(results, targets, family, phase, deny_rule)[0])
        print(f"  ({rounds} probe round(s), {time.monotonic() - started:.1f} s)")
        for line in wrong[:20]:
            print(f"  unexpected: {line}")
        return not wrong

    def add_deny_rule(self) -> None:
        assert self.topo is not None
        h1 = self.topo.hosts[0]
        section(f"9. calicoctl profile {PROFILE} rule add {' '.join(DENY_RULE)}")
        self.ctl(h1, "profile", PROFILE, "rule", "add", *DENY_RULE)
        print(indent(self.ctl(h1, "profile", PROFILE, "rule", "show").stdout))

    # --- after --------------------------------------------------------------------------------

    def explore_help(self) -> str:
        assert self.topo is not None and self.topo.etcd is not None
        h1, w = self.topo.hosts[0], self.workloads
        env = (f"env ETCD_ENDPOINTS={self.topo.etcd.url} HOSTNAME={h1.name} "
               f"CALICO_RUN_DIR={h1.dir / 'run'} NO_DEFAULT_POOLS=1")
        docker = []
        far = next(x for x in w if x.host is not h1)
        if self.docker is not None:
            engine = self.docker.engine(h1).host
            env += f" DOCKER_HOST={engine}"
            pid = f"$(DOCKER_HOST={engine} docker inspect -f '{{{{.State.Pid}}}}' {w[0].where})"
            enter = f"nsenter --net=/proc/{pid}/ns/net"
            docker = [f"  DOCKER_HOST={engine} docker ps    # calico-node, calico-libnetwork, "
                      f"the workloads on {h1.name}",
                      f"  DOCKER_HOST={engine} docker network inspect {NETWORK}",
                      f"  DOCKER_HOST={engine} docker logs calico-libnetwork"]
        else:
            enter = f"ip netns exec {w[0].where}"
        return "\n".join([
            "The cluster keeps running. To explore it:",
            f"  ip netns exec {h1.ns.name} {env} \\\n      {calicoctl_path()} node status",
            f"  ip netns exec {h1.ns.name} {env} \\\n      {calicoctl_path()} endpoint show",
            *docker,
            f"  birdc -s {h1.dir / 'run' / 'bird.ctl'} show route",
            f"  ip -n {far.host.ns.name} route",
            f"  {enter} ping -c 2 {far.target.ipv4}",
            f"  {enter} ping -c 2 {far.target.ipv6}",
            f"  {enter} nc -zv -w 2 {far.target.ipv4} "
            f"{matrix.OPEN_PORT}    # {matrix.DENIED_PORT} is denied",
            f"  logs: {self.topo.dir}/host*/log/{{felix,confd,bird}}.log",
            f"  state: {self.state.path}",
            "To remove everything:",
            "  scripts/demo.sh --teardown" + ("" if str(self.state.path) == DEFAULT_PATH
                                             else f" --state-file {self.state.path}")])

    def close(self) -> None:
        if self.docker is not None:
            self.docker.close()  # containers, engines, their mounts and directories
        teardown(self.state)
        if self.topo is not None:
            self.topo.close()


def run(keep: bool, state_path: Path, runtime: str = "none") -> int:
    existing = DemoState.load(state_path)
    if existing is not None:
        print(f"demo: a demo is still set up (state file {state_path}, started by pid "
              f"{existing.pid}); remove it first with: scripts/demo.sh --teardown",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    demo = Demo(DemoState(state_path), runtime)
    demo.state.add()
    finished = False
    try:
        demo.build()
        demo.wait_converged()
        demo.show_hosts()
        before = demo.matrix_phase("8. Ping/TCP matrix before the deny rule", "before", False)
        demo.add_deny_rule()
        after = demo.matrix_phase(f"10. Ping/TCP matrix after the deny rule (only "
                                  f"tcp:{matrix.DENIED_PORT} blocked)", "after", True)
        ok = before and after
        finished = True
        section("Result")
        print(f"demo {'PASSED' if ok else 'FAILED'}: matrix before {'as' if before else 'NOT as'}"
              f" expected, after {'as' if after else 'NOT as'} expected "
              f"({time.monotonic() - started:.0f} s)")
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; tearing down", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report, tear down, exit 1
        print(f"\ndemo: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if keep and finished:
            print("\n" + demo.explore_help())
        else:
            section("Teardown")
            demo.close()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo.sh", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--keep", action="store_true",
                      help="leave the cluster running and print how to explore it")
    mode.add_argument("--teardown", action="store_true",
                      help="remove what a --keep run (or an interrupted one) left behind")
    p.add_argument("--runtime", choices=("none", "docker"), default="none",
                   help="how each host runs its node: none (felix, confd and BIRD under "
                   "supervisord in the host's namespace) or docker (container calico-node "
                   "on a Docker engine of the host's own)")
    p.add_argument("--state-file", type=Path, default=None,
                   help=f"where the demo records what it made (default $CALICO_DEMO_STATE "
                   f"or {default_path()})")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    state_path = args.state_file or default_path()
    if args.teardown:
        state = DemoState.load(state_path)
        if state is None:
            print(f"demo: nothing to tear down (no state file {state_path})")
            return 0
        return 0 if teardown(state) else 1
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    return run(args.keep, state_path, args.runtime)


if __name__ == "__main__":
    sys.exit(main())
