"""podman with the CNI backend on two simulated hosts running the whole stack.

Two hosts on one fabric, each running `calicoctl node run --runtime=none` (felix,
confd, BIRD) as tests/system/test_cluster.py does; on each, `calicoctl cni install`
puts the plugins and a conflist (calico, then the reference portmap plugin) in the
host's own directories, and a podman of its own (tests/support/podman.py: private
storage and containers.conf, run with `nsenter --net` into the host) runs busybox
containers on that network. Checked: containers get addresses from the Calico pool and
endpoints on their host; they reach each other across hosts; a rule edited with
calicoctl on the network's profile applies to them; a port published through portmap
answers from the other host once policy allows it; `podman rm` releases the address,
the endpoint and the veth. podman failing to run is a failure, never a skip (the
README's install provides it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from libcalico.ipam import IPAMClient
from netsim.images import busybox_tar
from netsim.topology import Host, Topology
from netsim.wait import wait_for
from tests.support.cnidriver import REFERENCE_PLUGINS
from tests.support.podman import Podman

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL = "198.19.32.0/20"
NETWORK = "calinet"
IMAGE = "localhost/cni-busybox:test"
APPLETS = ("sh", "sleep", "ping", "nc", "httpd", "ip", "cat", "wget")
CONVERGE_S = 30.0
FETCH = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.sendall(b"GET /index.html HTTP/1.0\\r\\n\\r\\n")
    print(s.recv(4096).decode())
except OSError as exc:
    print("failed", exc)
"""


@dataclass
class Site:
    host: Host
    podman: Podman


@dataclass
class Cluster:
    topo: Topology
    client: CalicoClient
    sites: list[Site]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    topo = Topology("cnip", hosts=2)
    sites: list[Site] = []
    store = None
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(topo.start_node, topo.hosts))
        store = topo.datastore()
        client = CalicoClient(store)
        topo.calicoctl(topo.hosts[0], "pool", "add", POOL)
        tar = busybox_tar(APPLETS)
        for host in topo.hosts:
            bins, confs = host.dir / "cni-bin", host.dir / "net.d"
            topo.calicoctl(host, "cni", "install", "--bin-dir", str(bins), "--conf-dir",
                           str(confs), "--network", NETWORK, "--log-file",
                           str(host.dir / "cni.log"))
            podman = Podman(host.ns.name, host.dir / "podman", [str(bins), REFERENCE_PLUGINS],
                            confs)
            sites.append(Site(host, podman))
            podman.load_image(tar, IMAGE)
        yield Cluster(topo, client, sites)
    finally:
        for site in sites:
            site.podman.close()
        topo.close()
        if store is not None:
            store.close()


def run(site: Site, name: str, *extra: str, command: tuple[str, ...] = ("sleep", "3600")
        ) -> dict[str, str]:
    """A container on the Calico network; its address and namespace."""
    site.podman("run", "-d", "--name", name, "--network", NETWORK, *extra, IMAGE, *command)
    info = site.podman.inspect(name)
    net = info["NetworkSettings"]["Networks"][NETWORK]
    return {"ip": net["IPAddress"], "netns": info["NetworkSettings"]["SandboxKey"]}


def ping(site: Site, name: str, ip: str) -> bool:
    return site.podman("exec", name, "ping", "-c", "1", "-W", "1", ip,
                       check=False).returncode == 0


def endpoints_of(cluster: Cluster, host: Host) -> list[dict[str, object]]:
    kvs, _ = cluster.client.store.list(ks.host_workload_dir(host.name))
    return [json.loads(kv.value) for kv in kvs]


def test_containers_get_calico_addresses_and_reach_each_other(cluster: Cluster) -> None:
    s1, s2 = cluster.sites
    a = run(s1, "a1")
    b = run(s2, "b1")
    try:
        for addr in (a["ip"], b["ip"]):
            assert addr.startswith("198.19.")
        for site, name in ((s1, "a1"), (s2, "b1")):
            (ep,) = endpoints_of(cluster, site.host)
            assert ep["profile_ids"] == [NETWORK]
            info = site.podman.inspect(name)
            address = info["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
            assert ep["ipv4_nets"] == [f"{address}/32"]
            # The host end of the veth is in the simulated host's namespace.
            assert str(ep["name"]) in site.host.ns.ip("link").stdout
        wait_for(lambda: ping(s1, "a1", b["ip"]) and ping(s2, "b1", a["ip"]), CONVERGE_S,
                 message="the containers reaching each other across hosts")
    finally:
        s1.podman("rm", "-f", "-t", "0", "a1", check=False)
        s2.podman("rm", "-f", "-t", "0", "b1", check=False)


def test_policy_edited_with_calicoctl_applies(cluster: Cluster) -> None:
    s1, s2 = cluster.sites
    topo, h1 = cluster.topo, s1.host
    run(s1, "a2")
    b = run(s2, "b2")
    try:
        wait_for(lambda: ping(s1, "a2", b["ip"]), CONVERGE_S, message="ping allowed")
        topo.calicoctl(h1, "profile", NETWORK, "rule", "add", "inbound", "--at=0", "deny",
                       "icmp")
        try:
            wait_for(lambda: not ping(s1, "a2", b["ip"]), CONVERGE_S,
                     message="ping denied by the new rule")
        finally:
            topo.calicoctl(h1, "profile", NETWORK, "rule", "remove", "inbound", "--at=0")
        wait_for(lambda: ping(s1, "a2", b["ip"]), CONVERGE_S, message="ping allowed again")
    finally:
        s1.podman("rm", "-f", "-t", "0", "a2", check=False)
        s2.podman("rm", "-f", "-t", "0", "b2", check=False)


def test_a_published_port_answers_once_policy_allows_it(cluster: Cluster) -> None:
    """calico then portmap: podman's `-p` reaches portmap through the conflist, with
    calico's result as prevResult; the DNAT leads into a Calico endpoint, so the
    profile decides, and calicoctl opens it."""
    s1, s2 = cluster.sites
    topo = cluster.topo
    web = run(s2, "web", "-p", "18080:8080",
              command=("sh", "-c", "echo calico-ok > /index.html && exec httpd -f -p 8080 "
                                   "-h /"))

    def fetch() -> str:
        """GET the page from host1 through host2's published port."""
        proc = s1.host.ns.exec("python3", "-c", FETCH, s2.host.ip, "18080", check=False)
        return proc.stdout

    rule = ["inbound", "allow", "tcp", "from", "cidr", "198.18.0.0/24", "to", "ports", "8080"]
    run(s1, "client")
    try:
        nat = s2.host.ns.exec("iptables-save", "-t", "nat").stdout
        assert f"{web['ip']}:8080" in nat  # portmap saw calico's address in prevResult
        # The web container is up and routed (a member of the profile reaches it), yet
        # the profile lets in only its own members: the host's request is dropped.
        wait_for(lambda: ping(s1, "client", web["ip"]), CONVERGE_S,
                 message="the web container reachable from a member")
        assert "calico-ok" not in fetch()
        topo.calicoctl(s1.host, "profile", NETWORK, "rule", "add", *rule)
        wait_for(lambda: "calico-ok" in fetch(), CONVERGE_S,
                 message="the published port answering through portmap")
    finally:
        topo.calicoctl(s1.host, "profile", NETWORK, "rule", "remove", *rule, check=False)
        s2.podman("rm", "-f", "-t", "0", "web", check=False)
        s1.podman("rm", "-f", "-t", "0", "client", check=False)
    assert f"{web['ip']}:8080" not in s2.host.ns.exec("iptables-save", "-t", "nat").stdout


def test_podman_rm_releases_everything(cluster: Cluster) -> None:
    s1, _ = cluster.sites
    c = run(s1, "gone")
    (ep,) = endpoints_of(cluster, s1.host)
    veth = str(ep["name"])
    ipam = IPAMClient(cluster.client.store)
    owner = ipam.get_assignment_attributes(c["ip"])
    assert owner is not None and owner.handle_id is not None
    assert owner.handle_id.startswith(f"{NETWORK}.")
    s1.podman("rm", "-f", "-t", "0", "gone")
    assert endpoints_of(cluster, s1.host) == []
    assert ipam.get_assignment_attributes(c["ip"]) is None
    assert veth not in s1.host.ns.ip("link").stdout
    assert not os.path.exists(c["netns"])
    log = (s1.host.dir / "cni.log").read_text()
    assert "calico ADD" in log and "calico DEL" in log
