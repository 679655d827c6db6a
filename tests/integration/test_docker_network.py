"""`docker network create -d calico` on real engines across two simulated hosts.

Each host (a namespace of `netsim.topology`, with felix, confd and BIRD from `calicoctl
node run --runtime=none`) has its own dockerd (`netsim.dockerhosts`: its own plugin
directory, data and socket) and the driver `calico-libnetwork` running as a process of
the host, listening in that engine's plugin directory. Containers are busybox with two
HTTP listeners (8080, 9090). The tests share the hosts and run in file order: the
refusals that need no pool first, then two networks on both hosts with full reachability
inside one network and none between them, a profile rule and a selector policy on the
networks' labels, connect/disconnect to a network with its own pool, `--ip`, the driver
restarted with containers running, the engine restarted with `--restart=always`
containers, and last that nothing is left behind. dockerd, etcd and BIRD come with the
README's install: the module fails (never skips) when one cannot start.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from libcalico import keyspace as ks
from netsim.dockerd import DockerEngine, import_busybox
from netsim.dockerhosts import DockerHosts
from netsim.topology import Host, Topology
from netsim.wait import wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL_V4 = "198.19.0.0/17"
POOL_V6 = "fd00:198:19::/64"
POOL_NET3 = "198.19.128.0/24"  # a network of its own pool (--subnet)
OUTSIDE = "198.18.200.0/24"  # in no pool
IMAGE = "busybox:dkn"
SERVE = "httpd -p 8080 -h /; httpd -p 9090 -h /; exec sleep 3600"
CONVERGE_S = 45.0
CALICO = ("-d", "calico", "--ipam-driver", "calico-ipam")


@dataclass
class Cluster:
    topo: Topology
    docker: DockerHosts
    drivers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def engine(self, host: Host) -> DockerEngine:
        return self.docker.engine(host)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.docker.calicoctl(self.topo.hosts[0], *args, check=check)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Topology("dkn", hosts=2, ipv6=True) as topo, \
            DockerHosts(topo, load_image=False) as docker:
        c = Cluster(topo, docker)
        for h in topo.hosts:
            import_busybox(docker.engine(h), IMAGE)
            topo.start_node(h)
            c.drivers[h.name] = docker.start_driver(h)
        yield c


@pytest.fixture
def store(cluster: Cluster) -> Iterator[Any]:
    client = cluster.topo.datastore()
    try:
        yield client
    finally:
        client.close()


def docker_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line docker printed about the failure (no traceback anywhere)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "Error response from daemon" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def run(engine: DockerEngine, name: str, net: str, *extra: str) -> dict[str, Any]:
    engine.docker("run", "-d", "--name", name, f"--net={net}", *extra, IMAGE, "sh", "-c",
                  SERVE)
    return inspect(engine, name)


def inspect(engine: DockerEngine, name: str) -> dict[str, Any]:
    return dict(json.loads(engine.docker("inspect", name).stdout)[0])


def addr(info: dict[str, Any], net: str, v6: bool = False) -> str:
    settings = info["NetworkSettings"]["Networks"][net]
    return str(settings["GlobalIPv6Address" if v6 else "IPAddress"])


def reaches(engine: DockerEngine, container: str, address: str, port: int | None = None
            ) -> bool:
    """One ping (port None) or one TCP connect from inside `container`."""
    cmd = ["ping", "-c", "1", "-W", "1", address] if port is None else \
        ["sh", "-c", f"nc -w 1 {address} {port} </dev/null"]
    return engine.docker("exec", container, *cmd, check=False, timeout=30).returncode == 0


def endpoints(store: Any, host: str) -> dict[str, dict[str, Any]]:
    kvs, _ = store.list(ks.host_workload_dir(host))
    return {kv.key: json.loads(kv.value) for kv in kvs}


# --- refusals that need no pool ----------------------------------------------------------------

def test_without_a_pool_and_with_docker_ipam_networks_are_refused(cluster: Cluster,
                                                                 store: Any) -> None:
    e1 = cluster.engine(cluster.topo.hosts[0])
    no_pool = docker_error(e1.docker("network", "create", *CALICO, "nopool", check=False))
    assert "no Calico IPv4 pool exists" in no_pool and "calicoctl pool add" in no_pool
    # The seed's bare form: Docker's default IPAM would give every host 172.17.0.0/16.
    bare = docker_error(e1.docker("network", "create", "-d", "calico", "bare", check=False))
    assert "--ipam-driver calico-ipam" in bare
    networks = e1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert not {"nopool", "bare"} & set(networks)
    assert store.list(f"{ks.LIBNETWORK}/")[0] == []


# --- two networks on both hosts ----------------------------------------------------------------

@pytest.fixture(scope="module")
def nets(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """net1 (IPv4 and IPv6, labelled tier=web), net2 and net3 (its own pool, --subnet) on
    both hosts; containers a1 on host1 and b1 on host2 in net1, b2 on host2 in net2."""
    h1, h2 = cluster.topo.hosts
    cluster.ctl("pool", "add", POOL_V4, POOL_V6, POOL_NET3)
    for h in (h1, h2):
        e = cluster.engine(h)
        e.docker("network", "create", *CALICO, "--ipv6", "--label", "tier=web", "net1")
        e.docker("network", "create", *CALICO, "net2")
        e.docker("network", "create", *CALICO, "--subnet", POOL_NET3, "net3")
    return {"a1": run(cluster.engine(h1), "a1", "net1"),
            "b1": run(cluster.engine(h2), "b1", "net1"),
            "b2": run(cluster.engine(h2), "b2", "net2")}


def test_containers_in_one_network_reach_each_other_across_hosts(
        cluster: Cluster, nets: dict[str, dict[str, Any]], store: Any) -> None:
    h1, h2 = cluster.topo.hosts
    e1, e2 = cluster.engine(h1), cluster.engine(h2)
    a1, b1 = addr(nets["a1"], "net1"), addr(nets["b1"], "net1")
    a1v6, b1v6 = addr(nets["a1"], "net1", True), addr(nets["b1"], "net1", True)
    for ip in (a1, b1):
        assert ip.startswith("198.19.") and int(ip.split(".")[2]) < 128  # from POOL_V4
    assert a1v6.startswith("fd00:198:19:") and b1v6.startswith("fd00:198:19:")
    wait_for(lambda: reaches(e1, "a1", b1), CONVERGE_S, message="a1 reaching b1 (IPv4)")
    for engine, src, dst in ((e1, "a1", b1), (e2, "b1", a1), (e1, "a1", b1v6),
                             (e2, "b1", a1v6)):
        wait_for(lambda e=engine, s=src, d=dst: reaches(e, s, d), CONVERGE_S,
                 message=f"{src} pinging {dst}")
        for port in (8080, 9090):
            assert reaches(engine, src, dst, port), (src, dst, port)
    # What the container got: eth0 with the /32 and /128, the link-local gateways, and
    # no docker_gwbridge on the host.
    inside = e1.docker("exec", "a1", "sh", "-c", "ip -o addr; ip route; ip -6 route").stdout
    assert f"inet {a1}/32" in inside and f"inet6 {a1v6}/128" in inside
    assert "default via 169.254.1.1 dev eth0" in inside
    assert "default via fe80::1 dev eth0" in inside
    assert "docker_gwbridge" not in h1.ns.ip("link").stdout
    # Its endpoint: the network's profile and labels, the container side's MAC.
    (ep,) = endpoints(store, "host1").values()
    assert ep["profile_ids"] == ["net1"] and ep["labels"] == {"tier": "web"}
    assert ep["mac"] == nets["a1"]["NetworkSettings"]["Networks"]["net1"]["MacAddress"]
    host_if = h1.ns.ip("-o", "addr", "show", "dev", ep["name"]).stdout
    assert "169.254.1.1/32" in host_if and "fe80::1/128" in host_if
    # One profile per network name, shared by both hosts, with the default rules.
    # (The canonical JSON leaves out the default action, allow.)
    rules = json.loads(cluster.ctl("profile", "net1", "rule", "json").stdout)
    assert rules == {"inbound_rules": [{"src_tag": "net1"}], "outbound_rules": [{}]}
    profiles = json.loads(cluster.ctl("profile", "show", "-o", "json").stdout)
    assert sorted(p["metadata"]["name"] for p in profiles) == ["net1", "net2", "net3"]


def test_containers_in_different_networks_do_not_reach_each_other(
        cluster: Cluster, nets: dict[str, dict[str, Any]]) -> None:
    h1, h2 = cluster.topo.hosts
    e1, e2 = cluster.engine(h1), cluster.engine(h2)
    a1, b2 = addr(nets["a1"], "net1"), addr(nets["b2"], "net2")
    wait_for(lambda: reaches(e1, "a1", addr(nets["b1"], "net1")), CONVERGE_S,
             message="a1 reaching b1")
    assert not reaches(e1, "a1", b2) and not reaches(e1, "a1", b2, 8080)
    assert not reaches(e2, "b2", a1) and not reaches(e2, "b2", a1, 8080)
    # b2 and b1 share host2 and still do not talk.
    assert not reaches(e2, "b2", addr(nets["b1"], "net1"))


def test_calicoctl_sees_docker_containers_by_name_and_id(
        cluster: Cluster, nets: dict[str, dict[str, Any]]) -> None:
    h1 = cluster.topo.hosts[0]
    cid = nets["a1"]["Id"]
    endpoint_id = nets["a1"]["NetworkSettings"]["Networks"]["net1"]["EndpointID"]
    for name in ("a1", cid[:12]):
        shown = cluster.ctl("container", name, "endpoint", "show", "-o", "json").stdout
        (ep,) = json.loads(shown)
        assert ep["metadata"]["workload"] == endpoint_id
        assert ep["metadata"]["orchestrator"] == "libnetwork"
        listed = cluster.docker.calicoctl(h1, "endpoint", "show", "--workload", name,
                                          "--detailed").stdout
        assert endpoint_id in listed and addr(nets["a1"], "net1") in listed


def test_a_profile_rule_and_a_label_selector_policy_apply_within_two_seconds(
        cluster: Cluster, nets: dict[str, dict[str, Any]]) -> None:
    e1 = cluster.engine(cluster.topo.hosts[0])
    b1 = addr(nets["b1"], "net1")
    wait_for(lambda: reaches(e1, "a1", b1, 8080), CONVERGE_S, message="a1 reaching b1:8080")
    cluster.ctl("profile", "net1", "rule", "add", "inbound", "--at=0", "deny", "tcp", "to",
                "ports", "8080")
    try:
        wait_for(lambda: not reaches(e1, "a1", b1, 8080), 2.0,
                 message="the profile rule blocking b1:8080")
        assert reaches(e1, "a1", b1, 9090) and reaches(e1, "a1", b1)
    finally:
        cluster.ctl("profile", "net1", "rule", "remove", "inbound", "--at=0")
    wait_for(lambda: reaches(e1, "a1", b1, 8080), 10, message="b1:8080 open again")
    # The network's --label is an endpoint label a selector policy can match.
    policy = cluster.topo.hosts[0].dir / "web9090.yaml"
    policy.write_text(
        "- apiVersion: v1\n  kind: tier\n  metadata: {name: web}\n  spec: {order: 10}\n"
        "- apiVersion: v1\n  kind: policy\n  metadata: {tier: web, name: web9090}\n"
        "  spec:\n    selector: \"tier == 'web'\"\n"
        "    inbound_rules: [{action: deny, protocol: tcp, dst_ports: [9090]},"
        " {action: next-tier}]\n"
        "    outbound_rules: [{action: next-tier}]\n")
    cluster.ctl("apply", "-f", str(policy))
    try:
        wait_for(lambda: not reaches(e1, "a1", b1, 9090), 5.0,
                 message="the selector policy blocking b1:9090")
        assert reaches(e1, "a1", b1, 8080)
    finally:
        cluster.ctl("delete", "-f", str(policy))
    wait_for(lambda: reaches(e1, "a1", b1, 9090), 10, message="b1:9090 open again")


def test_every_refusal_reaches_the_user_as_one_line(cluster: Cluster, store: Any,
                                                   nets: dict[str, dict[str, Any]]) -> None:
    e1 = cluster.engine(cluster.topo.hosts[0])
    outside = docker_error(e1.docker("network", "create", *CALICO, "--subnet", OUTSIDE, "out",
                                     check=False))
    assert f"--subnet {OUTSIDE} is not a Calico IP pool" in outside
    option = docker_error(e1.docker("network", "create", *CALICO, "-o", "ipip=true", "opt",
                                    check=False))
    assert "option ipip is not supported" in option
    gateway = docker_error(e1.docker("network", "create", *CALICO, "--subnet", POOL_NET3,
                                     "--gateway", "198.19.128.1", "gw", check=False))
    assert "--gateway is not supported" in gateway
    # A network whose record is gone from etcd (say, the datastore was wiped).
    e1.docker("network", "create", *CALICO, "lost")
    network_id = e1.docker("network", "inspect", "-f", "{{.Id}}", "lost").stdout.strip()
    record = store.get(ks.libnetwork_network_key(network_id))
    store.delete(ks.libnetwork_network_key(network_id))
    unknown = docker_error(e1.docker("run", "--rm", "--net=lost", IMAGE, "true", check=False))
    assert f"network {network_id[:12]} is not known to the calico driver" in unknown
    store.put(record.key, record.value)  # back, so that its removal takes its profile
    e1.docker("network", "rm", "lost")
    networks = set(e1.docker("network", "ls", "--format", "{{.Name}}").stdout.split())
    assert not {"out", "opt", "gw", "lost"} & networks
    assert len(endpoints(store, "host1")) == 1  # a1's only: nothing half-made


def test_ip_gives_the_container_that_address(cluster: Cluster, store: Any,
                                            nets: dict[str, dict[str, Any]]) -> None:
    """`--ip` (Docker allows it on networks created with --subnet: here a Calico pool)."""
    e1 = cluster.engine(cluster.topo.hosts[0])
    wanted = "198.19.128.100"
    try:
        info = run(e1, "fixed", "net3", "--ip", wanted)
        assert addr(info, "net3") == wanted
        held = json.loads(cluster.ctl("ipam", "info", wanted, "-o", "json").stdout)
        assert held["attributes"] == {"host": "host1", "orchestrator": "libnetwork",
                                      "pool": POOL_NET3}
        in_use = docker_error(e1.docker("run", "--rm", "--net=net3", "--ip", wanted, IMAGE,
                                        "true", check=False))
        assert f"address {wanted} is already in use" in in_use
        outside = docker_error(e1.docker("run", "--rm", "--net=net3", "--ip", "198.19.0.7",
                                         IMAGE, "true", check=False))
        assert "not in the network's subnet" in outside or "subnet" in outside
    finally:
        e1.docker("rm", "-f", "fixed", check=False)
    released = cluster.ctl("ipam", "info", wanted, check=False)
    assert released.returncode == 3 and "not allocated" in released.stderr
    assert len(endpoints(store, "host1")) == 1  # a1's only: nothing half-made


def test_a_container_on_two_networks_has_an_endpoint_for_each(
        cluster: Cluster, store: Any, nets: dict[str, dict[str, Any]]) -> None:
    h1, h2 = cluster.topo.hosts
    e1, e2 = cluster.engine(h1), cluster.engine(h2)
    b3 = addr(run(e2, "b3", "net3"), "net3")
    e1.docker("network", "connect", "net3", "a1")
    a1_net3 = addr(inspect(e1, "a1"), "net3")
    assert a1_net3.startswith("198.19.128.")
    shown = json.loads(cluster.ctl("container", "a1", "endpoint", "show", "-o", "json").stdout)
    assert sorted(ep["spec"]["profile_ids"] for ep in shown) == [["net1"], ["net3"]]
    routes = e1.docker("exec", "a1", "ip", "route").stdout
    assert f"{POOL_NET3} dev eth1" in routes and "default via 169.254.1.1 dev eth0" in routes
    wait_for(lambda: reaches(e1, "a1", b3), CONVERGE_S, message="a1 reaching b3 over net3")
    assert reaches(e2, "b3", a1_net3, 8080)
    assert reaches(e1, "a1", addr(nets["b1"], "net1"))  # net1 as before
    e1.docker("network", "disconnect", "net3", "a1")
    shown = json.loads(cluster.ctl("container", "a1", "endpoint", "show", "-o", "json").stdout)
    assert [ep["spec"]["profile_ids"] for ep in shown] == [["net1"]]
    assert "eth1" not in e1.docker("exec", "a1", "ip", "link").stdout
    assert len([line for line in h1.ns.ip("-o", "link").stdout.splitlines()
                if ": cali" in line]) == 1
    assert reaches(e1, "a1", addr(nets["b1"], "net1"))


def test_the_driver_restarts_while_containers_run(cluster: Cluster, store: Any,
                                                 nets: dict[str, dict[str, Any]]) -> None:
    h1 = cluster.topo.hosts[0]
    e1 = cluster.engine(h1)
    b1 = addr(nets["b1"], "net1")
    cluster.docker.stop_driver(h1, cluster.drivers.pop(h1.name))
    assert reaches(e1, "a1", b1)  # the dataplane never depended on the driver
    cluster.drivers[h1.name] = cluster.docker.start_driver(h1)
    try:
        info = run(e1, "after", "net1")
        wait_for(lambda: reaches(e1, "after", b1), CONVERGE_S, message="a new container")
        # a container from before the restart is still known: its endpoint goes cleanly
        before = len(endpoints(store, "host1"))
    finally:
        e1.docker("rm", "-f", "after", check=False)
    assert len(endpoints(store, "host1")) == before - 1
    assert addr(info, "net1") not in json.dumps(endpoints(store, "host1"))


def test_the_engine_restarts_with_restart_always_containers(
        cluster: Cluster, store: Any, nets: dict[str, dict[str, Any]]) -> None:
    h1 = cluster.topo.hosts[0]
    e1 = cluster.engine(h1)
    b1 = addr(nets["b1"], "net1")
    old = run(e1, "always", "net1", "--restart=always")
    wait_for(lambda: reaches(e1, "always", b1), CONVERGE_S, message="always reaching b1")
    e1.restart()
    wait_for(lambda: inspect(e1, "always")["State"]["Running"], 60,
             message="the restart=always container running again")
    new = inspect(e1, "always")
    wait_for(lambda: reaches(e1, "always", b1), CONVERGE_S,
             message="always reaching b1 after the engine restarted")
    # a1 (no restart policy) stopped with the engine; only the new endpoint is left.
    (ep,) = endpoints(store, "host1").values()
    assert ep["ipv4_nets"] == [f"{addr(new, 'net1')}/32"]
    assert old["NetworkSettings"]["Networks"]["net1"]["EndpointID"] != \
        new["NetworkSettings"]["Networks"]["net1"]["EndpointID"]
    e1.docker("rm", "-f", "a1")


def test_nothing_is_left_behind(cluster: Cluster, store: Any,
                                nets: dict[str, dict[str, Any]]) -> None:
    for h in cluster.topo.hosts:
        e = cluster.engine(h)
        ids = e.docker("ps", "-aq").stdout.split()
        if ids:
            e.docker("rm", "-f", *ids)
        for net in ("net1", "net2", "net3"):
            e.docker("network", "rm", net)
    check = cluster.ctl("ipam", "check")
    assert "Checked 0 allocations and 0 endpoint addresses" in check.stdout
    assert "No problems found" in check.stdout
    assert endpoints(store, "host1") == {} and endpoints(store, "host2") == {}
    assert store.list(f"{ks.LIBNETWORK}/")[0] == []  # records and profile markers
    profiles = json.loads(cluster.ctl("profile", "show", "-o", "json").stdout)
    assert profiles == []  # the driver made them, the last network of each name took them
    for h in cluster.topo.hosts:
        links = h.ns.ip("-o", "link").stdout
        assert ": cali" not in links and ": tmp" not in links, links

        def chains_gone(host: Host = h) -> bool:
            dump = "".join(host.ns.exec(cmd).stdout for cmd in ("iptables-save",
                                                                "ip6tables-save"))
            return not any(f":{p}" in dump for p in ("felix-TO-EP-", "felix-FROM-EP-",
                                                      "felix-p-"))

        wait_for(chains_gone, 10, message=f"{h.name}: endpoint and profile chains removed")
