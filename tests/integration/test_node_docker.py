"""`calicoctl node --runtime=docker` with real engines: two simulated hosts, each with its
own dockerd (`netsim.dockerhosts`) and this checkout's node image.

In file order (the tests share the hosts; each leaves no node container running unless
the next one expects it): the refusals that must come before anything is written (no
engine, image missing, a foreign container with the node's name, --detach=false), a
program that does not start, --libnetwork running the Docker driver that a Docker
network then uses, then two
nodes reaching BGP Established with Docker workloads on both that reach each other, a
`docker restart` of a node container that loses no packet and never withdraws a route,
`node stop`/`node` with workloads running, diags, and `node remove`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from calicoctl.nodedocker import LIBNETWORK_SOCKET, NODE_CAPABILITIES
from calicoctl.nodeimage import DEFAULT_IMAGE
from felix.rules.names import CHAIN_TO_ENDPOINT
from libcalico import keyspace as ks
from netsim.dockerd import DockerEngine, import_busybox
from netsim.dockerhosts import DockerHosts
from netsim.topology import FABRIC_PLEN, Host, Topology
from netsim.wait import wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL = "198.19.0.0/16"
PROFILE = "ndk"
BUSYBOX = "wl-busybox:local"
ALT_IMAGE = "example/calico-node:alt"
CONVERGE_S = 45.0


@pytest.fixture(scope="module")
def hosts(node_image_archive: Path) -> Iterator[DockerHosts]:
    with Topology("ndk", hosts=2) as topo, DockerHosts(topo) as docker_hosts:
        for engine in docker_hosts.engines.values():
            import_busybox(engine, BUSYBOX)
        yield docker_hosts


@pytest.fixture
def store(hosts: DockerHosts) -> Iterator[Any]:
    client = hosts.topo.datastore()
    try:
        yield client
    finally:
        client.close()


def inspect(engine: DockerEngine, name: str) -> dict[str, Any] | None:
    proc = engine.docker("inspect", "--type", "container", name, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def running(engine: DockerEngine, name: str) -> bool:
    info = inspect(engine, name)
    return bool(info and info["State"]["Running"])


def status(hosts: DockerHosts, host: Host) -> dict[str, Any]:
    return json.loads(hosts.calicoctl(host, "node", "status", "-o", "json").stdout)


def established(hosts: DockerHosts, host: Host, peers: int) -> bool:
    st = status(hosts, host)
    return (all(p["state"] == "RUNNING" for p in st["programs"])
            and sum(1 for s in st["bgp"] if s["info"] == "Established") == peers)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def nothing_written(store: Any) -> bool:
    return store.list("/calico/")[0] == []


# --- refusals before anything happens ----------------------------------------------------------

def test_without_an_engine_the_default_runtime_names_runtime_none(hosts: DockerHosts,
                                                                  store: Any) -> None:
    store.delete_prefix("/calico/")
    h1 = hosts.topo.hosts[0]
    proc = hosts.calicoctl(h1, "node", f"--name={h1.name}", f"--ip={h1.ip}", check=False,
                           env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "unix:///nonexistent/docker.sock" in line and "--runtime=none" in line
    assert nothing_written(store)


def test_a_missing_image_says_how_to_build_it(hosts: DockerHosts, store: Any) -> None:
    store.delete_prefix("/calico/")
    h1 = hosts.topo.hosts[0]
    proc = hosts.start_node(h1, "--node-image=pycalico-net/node:absent", check=False)
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert "image pycalico-net/node:absent is not on the engine" in line
    assert "calicoctl node image build --tag pycalico-net/node:absent" in line
    assert nothing_written(store)
    assert inspect(hosts.engine(h1), "calico-node") is None


def test_a_container_with_the_nodes_name_that_is_not_ours_is_left_alone(
        hosts: DockerHosts, store: Any) -> None:
    store.delete_prefix("/calico/")
    h1 = hosts.topo.hosts[0]
    engine = hosts.engine(h1)
    engine.docker("create", "--name", "calico-node", BUSYBOX, "sleep", "60")
    try:
        before = inspect(engine, "calico-node")
        proc = hosts.start_node(h1, check=False)
        assert proc.returncode == 3
        assert "calico-node that calicoctl did not make" in one_line_error(proc)
        assert nothing_written(store)
        after = inspect(engine, "calico-node")
        assert before is not None and after is not None and after["Id"] == before["Id"]
    finally:
        engine.docker("rm", "-f", "calico-node", check=False)


def test_detach_false_and_libnetwork_without_docker_are_usage_errors(hosts: DockerHosts,
                                                                    store: Any) -> None:
    store.delete_prefix("/calico/")
    h1 = hosts.topo.hosts[0]
    proc = hosts.start_node(h1, "--detach=false", check=False)
    assert proc.returncode == 2 and "--runtime=none" in one_line_error(proc)
    proc = hosts.calicoctl(h1, "node", "--runtime=none", "--libnetwork", check=False)
    assert proc.returncode == 2 and "--libnetwork needs --runtime=docker" in \
        one_line_error(proc)
    assert nothing_written(store)


# --- failures after the start ------------------------------------------------------------------

def test_a_program_that_does_not_start_is_named_with_its_log(hosts: DockerHosts) -> None:
    h1 = hosts.topo.hosts[0]
    proc = hosts.start_node(h1, "--timeout=8", check=False,
                            env={"FELIX_LOGSEVERITYSCREEN": "loud"})
    try:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        node_id = inspect(hosts.engine(h1), "calico-node")["Id"]  # type: ignore[index]
        assert f"Calico node is running with id: {node_id}" in proc.stdout
        line = one_line_error(proc)
        # felix keeps failing: supervisord shows it STARTING, BACKOFF or (at last) FATAL.
        assert re.search(r"not started: felix \((STARTING|BACKOFF|FATAL)\)", line), line
        assert "LogSeverityScreen" in line  # the tail of felix's log
    finally:
        hosts.calicoctl(h1, "node", "stop", "--force")
    assert not running(hosts.engine(h1), "calico-node")


def test_libnetwork_runs_the_driver_and_docker_networks_use_it(hosts: DockerHosts,
                                                               store: Any) -> None:
    """`--libnetwork`: container calico-libnetwork runs the driver from the node image,
    and `docker network create -d calico` + `docker run` on that engine go through it."""
    h2 = hosts.topo.hosts[1]
    engine = hosts.engine(h2)
    engine.docker("tag", DEFAULT_IMAGE, ALT_IMAGE)  # --node-image names the image of both
    proc = hosts.start_node(h2, "--libnetwork", f"--node-image={ALT_IMAGE}", check=False)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        driver = inspect(engine, "calico-libnetwork")
        assert driver is not None
        assert f"Calico libnetwork driver is running with id: {driver['Id']}" in proc.stdout
        assert f"Calico libnetwork driver listens on {LIBNETWORK_SOCKET}" in proc.stdout
        # What the driver gets: the engine's plugin directory and API, host networking,
        # the same image, its own entry point, where to put its socket, and etcd.
        binds = driver["HostConfig"]["Binds"]
        assert "/run/docker/plugins:/run/docker/plugins" in binds
        assert f"{engine.socket}:{engine.socket}" in binds
        assert driver["HostConfig"]["NetworkMode"] == "host"
        assert driver["HostConfig"]["Privileged"] is False
        assert driver["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert driver["Config"]["Entrypoint"] == ["calico-libnetwork"]
        assert driver["Config"]["Image"] == ALT_IMAGE
        assert inspect(engine, "calico-node")["Config"]["Image"] == ALT_IMAGE  # type: ignore[index]
        env = driver["Config"]["Env"]
        assert f"CALICO_LIBNETWORK_SOCKET={LIBNETWORK_SOCKET}" in env
        assert f"DOCKER_HOST={engine.host}" in env
        assert any(e.startswith("ETCD_ENDPOINTS=http://198.18.0.254:") for e in env)
        assert running(engine, "calico-libnetwork") and running(engine, "calico-node")
        # The engine finds both plugins in its plugin directory.
        assert (engine.plugin_dir / "calico.sock").is_socket()
        assert (engine.plugin_dir / "calico-ipam.sock").is_socket()
        hosts.calicoctl(h2, "pool", "add", POOL)
        engine.docker("network", "create", "-d", "calico", "--ipam-driver", "calico-ipam",
                      "ndknet")
        engine.docker("run", "-d", "--name", "nd1", "--net=ndknet", BUSYBOX, "sleep", "600")
        ip = inspect(engine, "nd1")["NetworkSettings"]["Networks"]["ndknet"]["IPAddress"]  # type: ignore[index]
        assert ip.startswith("198.19.")
        kvs, _ = store.list(ks.host_workload_dir("host2"))
        (ep,) = [json.loads(kv.value) for kv in kvs]
        assert ep["ipv4_nets"] == [f"{ip}/32"] and ep["profile_ids"] == ["ndknet"]
        engine.docker("rm", "-f", "nd1")
        engine.docker("network", "rm", "ndknet")
        assert store.list(ks.host_workload_dir("host2"))[0] == []
        assert store.list(f"{ks.LIBNETWORK}/")[0] == []
    finally:
        engine.docker("rm", "-f", "nd1", check=False)
        engine.docker("network", "rm", "ndknet", check=False)
        hosts.calicoctl(h2, "node", "stop", "--force")
    assert not running(engine, "calico-node")
    assert not running(engine, "calico-libnetwork")


# --- two nodes, Docker workloads ---------------------------------------------------------------

def workload_ip(hosts: DockerHosts, host: Host, name: str) -> str:
    out = hosts.calicoctl(host, "container", "add", name, "ipv4").stdout
    return out.split()[1].split("/")[0]  # "IP 198.19.x.y/32 added to ..."


def ping(engine: DockerEngine, container: str, address: str) -> bool:
    return engine.docker("exec", container, "ping", "-c", "1", "-W", "1", address,
                         check=False).returncode == 0


@pytest.fixture(scope="module")
def workloads(hosts: DockerHosts) -> dict[str, str]:
    """Nodes running on both hosts and a busybox container on each with an address."""
    topo = hosts.topo
    store = topo.datastore()
    store.delete_prefix("/calico/")
    store.close()
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda h: hosts.start_node(h).stdout, topo.hosts))
    for host, out in zip(topo.hosts, outs, strict=True):
        node_id = inspect(hosts.engine(host), "calico-node")["Id"]  # type: ignore[index]
        assert f"Calico node is running with id: {node_id}" in out
        assert f"Calico node {host.name} is running" in out
    hosts.calicoctl(topo.hosts[0], "pool", "add", POOL)
    hosts.calicoctl(topo.hosts[0], "profile", "add", PROFILE)
    addresses = {}
    for i, host in enumerate(topo.hosts, 1):
        hosts.engine(host).docker("run", "-d", "--network", "none", "--name", f"w{i}",
                                  BUSYBOX, "sleep", "3600")
        addresses[f"w{i}"] = workload_ip(hosts, host, f"w{i}")
        hosts.calicoctl(host, "container", f"w{i}", "profile", "set", PROFILE)
    return addresses


def test_two_docker_nodes_establish_bgp_and_their_workloads_talk(
        hosts: DockerHosts, workloads: dict[str, str]) -> None:
    h1, h2 = hosts.topo.hosts
    for host in (h1, h2):
        wait_for(lambda h=host: established(hosts, h, 1), CONVERGE_S,
                 message=f"{host.name}: programs running, BGP Established")
    wait_for(lambda: ping(hosts.engine(h1), "w1", workloads["w2"]), CONVERGE_S,
             message="w1 on host1 reaching w2 on host2")
    assert ping(hosts.engine(h2), "w2", workloads["w1"])
    # What the node container got: host networking, explicit capabilities, no
    # --privileged, writable /proc/sys, the log and run directories, the node's identity.
    node = inspect(hosts.engine(h1), "calico-node")
    assert node is not None
    hc, env = node["HostConfig"], node["Config"]["Env"]
    assert hc["NetworkMode"] == "host" and hc["Privileged"] is False
    assert hc["CapDrop"] == ["ALL"]
    assert sorted(hc["CapAdd"]) == sorted(f"CAP_{c}" for c in NODE_CAPABILITIES) or \
        sorted(hc["CapAdd"]) == sorted(NODE_CAPABILITIES)
    assert hc["ReadonlyPaths"] == []  # systempaths=unconfined: /proc/sys is writable
    for d in (h1.dir / "log", h1.dir / "run"):
        assert f"{d}:{d}" in hc["Binds"]
    # The address goes in with the subnet calicoctl found on the host's interface, so the
    # container registers the node exactly as the host did (cross-subnet encapsulation).
    for var in (f"HOSTNAME={h1.name}", f"IP={h1.ip}/{FABRIC_PLEN}",
                "CALICO_NETWORKING_BACKEND=bird",
                f"CALICO_RUN_DIR={h1.dir / 'run'}"):
        assert var in env
    assert hc["RestartPolicy"]["Name"] == "unless-stopped"


class Pinger:
    """A 10 ms ping from a workload's namespace (iputils), counted when stopped."""

    def __init__(self, engine: DockerEngine, container: str, address: str) -> None:
        pid = inspect(engine, container)["State"]["Pid"]  # type: ignore[index]
        self.proc = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "ping", "-n",
                                      "-q", "-i", "0.01", "-W", "1", address],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)

    def stop(self) -> tuple[int, int]:
        """(sent, received)."""
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.communicate(timeout=10)[0]
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        return int(m.group(1)), int(m.group(2))


def test_restarting_the_node_container_keeps_routes_and_traffic(
        hosts: DockerHosts, workloads: dict[str, str]) -> None:
    h1, h2 = hosts.topo.hosts
    wait_for(lambda: ping(hosts.engine(h1), "w1", workloads["w2"]), CONVERGE_S,
             message="w1 reaching w2")
    monitor = subprocess.Popen(["ip", "-n", h1.ns.name, "monitor", "route"],
                               stdout=subprocess.PIPE, text=True)
    pinger = Pinger(hosts.engine(h1), "w1", workloads["w2"])
    try:
        before = inspect(hosts.engine(h2), "calico-node")
        hosts.engine(h2).docker("restart", "calico-node", timeout=120)
        after = inspect(hosts.engine(h2), "calico-node")
        assert before is not None and after is not None
        assert after["State"]["StartedAt"] != before["State"]["StartedAt"]
        wait_for(lambda: established(hosts, h2, 1), CONVERGE_S,
                 message="host2's node back, BGP Established")
        wait_for(lambda: "Graceful restart done" in
                 (h2.dir / "log" / "bird.log").read_text(errors="replace"), CONVERGE_S,
                 message="BIRD's graceful restart done on host2")
    finally:
        sent, received = pinger.stop()
        monitor.terminate()
        changes = monitor.communicate(timeout=10)[0]
    assert sent > 100 and received == sent, (sent, received)
    # host1 never withdrew (nor replaced) its route to host2's workloads.
    assert f"via {h2.ip}" not in changes, changes


def test_node_stop_and_start_with_workloads_running(hosts: DockerHosts,
                                                   workloads: dict[str, str]) -> None:
    h1, h2 = hosts.topo.hosts
    refused = hosts.calicoctl(h2, "node", "stop", check=False)
    assert refused.returncode == 3 and "endpoint" in refused.stderr
    assert running(hosts.engine(h2), "calico-node")
    stopped = hosts.calicoctl(h2, "node", "stop", "--force")
    assert "Node stopped (host2)" in stopped.stdout
    assert not running(hosts.engine(h2), "calico-node")
    gone = hosts.calicoctl(h2, "node", "status", check=False)
    assert gone.returncode == 1 and "not running" in gone.stderr
    # BIRD closed its sessions: host1 withdraws host2's routes ...
    wait_for(lambda: f"via {h2.ip}" not in h1.ns.ip("route").stdout, CONVERGE_S,
             message="host2's routes withdrawn from host1")
    # ... while host2's own dataplane stays as felix left it.
    assert f"{workloads['w2']} dev cali" in h2.ns.ip("route").stdout
    assert f":{CHAIN_TO_ENDPOINT}" in h2.ns.exec("iptables-save", "-t", "filter").stdout
    assert not ping(hosts.engine(h1), "w1", workloads["w2"])
    again = hosts.start_node(h2)
    assert "Calico node host2 is running" in again.stdout
    wait_for(lambda: ping(hosts.engine(h1), "w1", workloads["w2"]), CONVERGE_S,
             message="w1 reaching w2 after host2's node came back")


def test_diags_collect_the_containers(hosts: DockerHosts, workloads: dict[str, str],
                                      tmp_path: Path) -> None:
    h2 = hosts.topo.hosts[1]
    out = hosts.calicoctl(h2, "diags", f"--log-dir={h2.dir / 'log'}",
                          f"--output-dir={tmp_path}").stdout
    bundle = next(tmp_path.glob("diags-*.tar.gz"))
    assert str(bundle) in out
    with tarfile.open(bundle) as tar:
        files = {Path(m.name).name: m for m in tar.getmembers()}
        text = {n: tar.extractfile(files[n]).read().decode()  # type: ignore[union-attr]
                for n in ("docker_inspect_calico-node", "docker_logs_calico-node",
                          "bird_protocols_in_container")}
    assert json.loads(text["docker_inspect_calico-node"])[0]["Name"] == "/calico-node"
    assert "supervisord started" in text["docker_logs_calico-node"]
    assert "Established" in text["bird_protocols_in_container"]
    assert "felix.log" in files


def test_node_remove_removes_the_stopped_containers(hosts: DockerHosts, store: Any,
                                                    workloads: dict[str, str]) -> None:
    h2 = hosts.topo.hosts[1]
    refused = hosts.calicoctl(h2, "node", "remove", "--remove-endpoints", check=False)
    assert refused.returncode == 3 and "calico-node is running" in one_line_error(refused)
    assert store.get_value(ks.bgp_host_key("host2", "ip_addr_v4")) == h2.ip
    hosts.calicoctl(h2, "node", "stop", "--force")
    removed = hosts.calicoctl(h2, "node", "remove", "--remove-endpoints")
    assert "Removed container calico-node" in removed.stdout
    assert inspect(hosts.engine(h2), "calico-node") is None
    assert store.get_value(ks.bgp_host_key("host2", "ip_addr_v4")) is None
