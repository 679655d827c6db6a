"""`calicoctl node run|stop|status` on one simulated host: what starts, what is refused,
what is written, and that a stopped node leaves nothing running."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from libcalico import keyspace as ks
from libcalico.datastore import Datastore
from netsim.topology import Host, Topology, calicoctl_path
from netsim.wait import wait_for

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology("nod", hosts=1) as topology:
        yield topology


@pytest.fixture
def host(topo: Topology) -> Iterator[Host]:
    host = topo.hosts[0]
    store = topo.datastore()
    store.delete_prefix("/calico/")
    store.close()
    try:
        yield host
    finally:
        topo.calicoctl(host, "node", "stop", "--force", check=False)
        topo.kill_namespace_processes(host.ns)


@pytest.fixture
def store(topo: Topology) -> Iterator[Datastore]:
    client = topo.datastore()
    try:
        yield client
    finally:
        client.close()


def programs(status: str) -> dict[str, str]:
    """Program -> state from `node status`'s table."""
    rows = [line.split("|") for line in status.splitlines() if line.startswith("| ")]
    return {r[1].strip(): r[2].strip() for r in rows[1:] if len(r) > 3 and r[1].strip() in
            ("bird", "confd", "felix")}


def test_backend_none_runs_felix_only_and_default_pools_come_without_the_flag(
        topo: Topology, host: Host, store: Datastore) -> None:
    out = topo.start_node(host, "--backend=none", env={"NO_DEFAULT_POOLS": ""}).stdout
    assert "Calico node host1 is running" in out
    status = topo.calicoctl(host, "node", "status").stdout
    assert programs(status) == {"felix": "RUNNING"}
    assert "BIRD is not running" in status
    assert store.get_value(ks.bgp_host_key("host1", "ip_addr_v4")) == host.ip
    assert store.get(ks.pool_key("192.168.0.0/16")) is not None
    assert store.get_value(ks.BGP_GLOBAL_AS_KEY) == "64512"
    stopped = topo.calicoctl(host, "node", "stop")
    assert "Node stopped" in stopped.stdout
    gone = topo.calicoctl(host, "node", "status", check=False)
    assert gone.returncode == 1 and "not running" in gone.stderr
    assert subprocess.run(["ip", "netns", "pids", host.ns.name], capture_output=True,
                          text=True, check=True).stdout.split() == []


def test_bird_backend_writes_the_config_before_bird_starts(topo: Topology, host: Host,
                                                          store: Datastore) -> None:
    topo.start_node(host)
    status = topo.calicoctl(host, "node", "status")
    assert programs(status.stdout) == {"bird": "RUNNING", "confd": "RUNNING",
                                       "felix": "RUNNING"}
    config = (host.dir / "run" / "bird.cfg").read_text()
    assert f"router id {host.ip};" in config
    assert "No IPv4 peers found." in status.stdout
    assert store.get(ks.pool_key("192.168.0.0/16")) is None  # NO_DEFAULT_POOLS=1
    again = topo.start_node(host, check=False)
    assert again.returncode == 3 and "already runs" in again.stderr


def test_a_bird_config_confd_cannot_write_stops_node_run_before_supervisord(
        topo: Topology, host: Host) -> None:
    """node run writes BIRD's first configuration through `calico-confd --onetime`; an
    operator include that BIRD refuses stops it there, saying why, with nothing started."""
    include_dir = host.dir / "bird.d"
    include_dir.mkdir(exist_ok=True)
    bad = include_dir / "broken.conf"
    bad.write_text("this is not bird configuration;\n")
    run_dir = host.dir / "run-bad-include"  # no bird.cfg from an earlier test
    try:
        proc = topo.start_node(host, check=False, env={"CALICO_RUN_DIR": str(run_dir)})
    finally:
        bad.unlink()
    assert proc.returncode == 1, proc.stderr
    assert "could not write BIRD's configuration for host1" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "broken.conf" in proc.stderr, proc.stderr
    assert not (run_dir / "supervisord.pid").exists()
    assert not (run_dir / "bird.cfg").exists()


@pytest.mark.parametrize("args, field", [
    (["--ip=198.18.0.300"], "ipv4"), (["--ip6=198.18.0.1"], "ipv6"), (["--as=65536.1"], "as_num"),
    (["--name=bad/name"], "hostname")])
def test_bad_input_is_refused_before_anything_is_written(topo: Topology, host: Host,
                                                        store: Datastore, args: list[str],
                                                        field: str) -> None:
    cmd = ["node", "run", "--runtime=none", f"--log-dir={host.dir / 'log'}", *args]
    if not any(a.startswith("--name") for a in args):
        cmd.append(f"--name={host.name}")
    proc = topo.calicoctl(host, *cmd, check=False)
    assert proc.returncode == 2 and field in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert store.list("/calico/")[0] == []
    assert not (host.dir / "run" / "supervisord.pid").exists()


def test_a_name_registered_with_another_address_is_refused(topo: Topology, host: Host,
                                                           store: Datastore) -> None:
    store.put(ks.bgp_host_key("host1", "ip_addr_v4"), "198.18.0.50")
    proc = topo.start_node(host, check=False)
    assert proc.returncode == 3
    assert "host1 is already registered with IPv4 198.18.0.50" in proc.stderr
    assert store.get_value(ks.bgp_host_key("host1", "ip_addr_v4")) == "198.18.0.50"
    assert topo.calicoctl(host, "node", "status", check=False).returncode == 1


def test_a_program_that_does_not_start_is_named(topo: Topology, host: Host) -> None:
    proc = topo.start_node(host, "--backend=none", "--timeout=6", check=False,
                           env={"FELIX_LOGSEVERITYSCREEN": "loud"})
    assert proc.returncode == 1
    assert "not started: felix (BACKOFF)" in proc.stderr or \
        "not started: felix (FATAL)" in proc.stderr, proc.stderr
    assert "LogSeverityScreen" in topo.node_log(host, "felix")


def test_stop_is_refused_while_the_node_has_endpoints(topo: Topology, host: Host,
                                                      store: Datastore) -> None:
    topo.start_node(host, "--backend=none")
    store.put(ks.workload_endpoint_key("host1", "netns", "w1", "e1"),
              '{"state": "active", "name": "cali1", "ipv4_nets": [], "ipv6_nets": [],'
              ' "profile_ids": []}')
    refused = topo.calicoctl(host, "node", "stop", check=False)
    assert refused.returncode == 3 and "still has 1 endpoint" in refused.stderr
    assert programs(topo.calicoctl(host, "node", "status").stdout) == {"felix": "RUNNING"}
    topo.calicoctl(host, "node", "stop", "--force")
    assert topo.calicoctl(host, "node", "status", check=False).returncode == 1


def test_foreground_node_stops_with_its_programs_on_sigterm(topo: Topology, host: Host) -> None:
    env = topo.daemon_env({"HOSTNAME": host.name, "NO_DEFAULT_POOLS": "1",
                           "CALICO_RUN_DIR": str(host.dir / "run")})
    proc = topo.spawn(host, [calicoctl_path(), "node", "--runtime=none", "--backend=none",
                             "--detach=false", f"--name={host.name}", f"--ip={host.ip}",
                             f"--log-dir={host.dir / 'log'}"], name="fg", env=env)
    wait_for(lambda: programs(topo.calicoctl(host, "node", "status", check=False).stdout)
             == {"felix": "RUNNING"}, 30, message="the foreground node running")
    assert topo.stop_process(proc) == 0
    assert subprocess.run(["ip", "netns", "pids", host.ns.name], capture_output=True,
                          text=True, check=True).stdout.split() == []
