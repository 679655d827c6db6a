"""`calicoctl container` with a real Docker container, named by Docker name or id.

The test starts its own dockerd for the module (`netsim.dockerd`: private data and
exec roots, socket and plugin directory, no bridge, no iptables, inside a namespace the
test creates); DOCKER_HOST points calicoctl at that engine. The image is built without a
registry: a static busybox and a few applet links, imported from a tar stream. calicoctl
runs inside a simulated host namespace, so the host side of the veth (`cali...`) lands
there. dockerd comes with the README's install, so the module fails (never skips) when
it cannot start; everything it creates is removed even on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from libcalico import keyspace as ks
from netsim.dockerd import DockerEngine, engine_in_namespace, import_busybox
from netsim.etcd import EtcdServer
from netsim.netns import Namespace, unique_name
from netsim.topology import calicoctl_path

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL = "198.18.66.0/24"


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    with engine_in_namespace("ctl-dk") as eng:
        yield eng


@pytest.fixture(scope="module")
def image(engine: DockerEngine) -> Iterator[str]:
    name = import_busybox(engine, f"{unique_name('ctl-bb')}:test")
    try:
        yield name
    finally:
        engine.docker("rmi", "-f", name, check=False)


@dataclass
class Container:
    name: str
    id: str
    pid: int

    def ip(self, *args: str) -> str:
        """`ip ARGS` inside the container's network namespace."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.pid}/ns/net", "ip", *args],
                              capture_output=True, text=True, check=True).stdout


@pytest.fixture
def setup(engine: DockerEngine, image: str, unix_etcd: EtcdServer):
    store = unix_etcd.client()
    store.delete_prefix("/calico/")
    store.put(ks.pool_key(POOL), json.dumps({"cidr": POOL}))
    host = Namespace("ctl-h")
    name = unique_name("ctl-dk-c")
    try:
        # --network none: docker gives the container a namespace with only loopback.
        engine.docker("run", "-d", "--network", "none", "--name", name, image,
                      "/bin/sleep", "3600")
        info = json.loads(engine.docker("inspect", "--type", "container", name).stdout)[0]
        yield store, host, Container(name, info["Id"], info["State"]["Pid"])
    finally:
        engine.docker("rm", "-f", name, check=False)
        host.delete()
        store.close()


def ctl(engine: DockerEngine, unix_etcd: EtcdServer, host: Namespace, *args: str,
        code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **unix_etcd.env(), "HOSTNAME": "ctl-node", "DOCKER_HOST": engine.host}
    proc = subprocess.run(["ip", "netns", "exec", host.name, calicoctl_path(), *args],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _endpoints(store) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    kvs, _ = store.list(ks.host_workload_dir("ctl-node"))
    return {kv.key: json.loads(kv.value) for kv in kvs}


def _allocated(store) -> int:  # type: ignore[no-untyped-def]
    from libcalico.ipam import IPAMClient

    return sum(u.allocated for u in IPAMClient(store).usage())


def _addresses(c: Container, ifname: str) -> list[str]:
    link = json.loads(c.ip("-j", "addr", "show", ifname))[0]
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]]


def test_container_add_remove_docker(engine: DockerEngine, unix_etcd: EtcdServer, setup) -> None:
    store, host, c = setup
    out = ctl(engine, unix_etcd, host, "container", "add", c.name, "198.18.66.10").stdout
    assert "198.18.66.10/32" in out

    # The endpoint: orchestrator docker, the container's full id as workload.
    eps = _endpoints(store)
    assert len(eps) == 1
    key, ep = next(iter(eps.items()))
    parsed = ks.parse_key(key)
    assert isinstance(parsed, ks.WorkloadEndpointKey)
    assert (parsed.hostname, parsed.orchestrator, parsed.workload) == \
        ("ctl-node", "docker", c.id)
    assert len(c.id) == 64 and ep["ipv4_nets"] == ["198.18.66.10/32"]
    assert ep["name"] == "cali" + parsed.endpoint_id[:11]

    # Inside the container: eth1 with the address and MAC, default via the link-local
    # gateway whose neighbour entry is the host side's MAC.
    assert _addresses(c, "eth1") == ["198.18.66.10/32"]
    link = json.loads(c.ip("-j", "link", "show", "eth1"))[0]
    assert link["address"] == ep["mac"]
    routes = json.loads(c.ip("-j", "route"))
    assert {"dst": "default", "gateway": "169.254.1.1", "dev": "eth1"}.items() <= \
        routes[0].items()
    # The host side: in the simulated host's namespace, not the machine's.
    host_link = json.loads(host.ip("-j", "link", "show", ep["name"]).stdout)[0]
    neigh = json.loads(c.ip("-j", "neigh", "show", "169.254.1.1"))[0]
    assert neigh["lladdr"] == host_link["address"]
    assert subprocess.run(["ip", "link", "show", ep["name"]], capture_output=True,
                          check=False).returncode != 0
    assert _allocated(store) == 1

    # The container's endpoint, named by its short id this time.
    shown = ctl(engine, unix_etcd, host, "container", c.id[:12], "endpoint", "show").stdout
    assert c.id in shown and "docker" in shown and "198.18.66.10/32" in shown
    as_json = json.loads(ctl(engine, unix_etcd, host, "container", c.name, "endpoint", "show",
                             "-o", "json").stdout)
    assert as_json[0]["metadata"]["workload"] == c.id

    # A second address, and taking it away again.
    ctl(engine, unix_etcd, host, "container", c.name, "ip", "add", "198.18.66.11")
    assert _endpoints(store)[key]["ipv4_nets"] == ["198.18.66.10/32", "198.18.66.11/32"]
    assert sorted(_addresses(c, "eth1")) == ["198.18.66.10/32", "198.18.66.11/32"]
    assert _allocated(store) == 2
    ctl(engine, unix_etcd, host, "container", c.name, "ip", "remove", "198.18.66.11")
    assert _endpoints(store)[key]["ipv4_nets"] == ["198.18.66.10/32"]
    assert _addresses(c, "eth1") == ["198.18.66.10/32"]
    assert _allocated(store) == 1

    # Adding the container again is refused and changes nothing.
    ctl(engine, unix_etcd, host, "container", "add", c.name, "ipv4", code=3)
    assert len(_endpoints(store)) == 1 and _allocated(store) == 1

    # Remove undoes everything: endpoint, both veth ends, the allocation.
    ctl(engine, unix_etcd, host, "container", "remove", c.name)
    assert _endpoints(store) == {}
    assert _allocated(store) == 0
    assert "cali" not in host.ip("link").stdout
    assert "eth1" not in c.ip("link")
    ctl(engine, unix_etcd, host, "container", c.name, "endpoint", "show", code=3)


def test_unknown_docker_container_is_not_found(engine: DockerEngine, unix_etcd: EtcdServer,
                                               setup) -> None:
    store, host, _ = setup
    res = ctl(engine, unix_etcd, host, "container", "add", "ctl-no-such-container", "ipv4",
              code=3)
    assert "ctl-no-such-container" in res.stderr
    assert _endpoints(store) == {} and _allocated(store) == 0
