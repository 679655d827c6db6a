"""confd's loop and command line against a real etcd and the real `bird -p`.

BIRD itself is not running here (its socket does not exist), which is also what confd
meets when it starts first: the configuration is written and the reload stays pending.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from confd.apply import BirdApplier
from confd.daemon import ConfdDaemon
from libcalico import keyspace as ks
from libcalico.codec import dumps
from libcalico.datastore import Datastore, Put
from libcalico.ipam.block import AllocationBlock
from netsim.etcd import EtcdServer
from netsim.wait import wait_for

# BIRD 2 comes with the README's install: without it these tests fail, never skip.
pytestmark = [pytest.mark.etcd]

CONFD = str(Path(sys.executable).with_name("calico-confd"))


def write_cluster(store: Datastore) -> None:
    """The cluster in one transaction: one watch response, so a running daemon's first
    render already holds all of it (a second render would spoil render counts)."""
    store.txn([], [Put(ks.BGP_GLOBAL_AS_KEY, "64512"),
                   Put(ks.pool_key("198.19.0.0/16"), json.dumps({"cidr": "198.19.0.0/16"})),
                   Put(ks.bgp_host_key("host1", "ip_addr_v4"), "198.18.0.1"),
                   Put(ks.bgp_host_key("host2", "ip_addr_v4"), "198.18.0.2")])


def confd_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [CONFD, "--config-file", str(tmp_path / "bird.cfg"),
            "--socket", str(tmp_path / "bird.ctl"), "--include-dir", str(tmp_path / "bird.d"),
            *extra]


def run_confd(etcd: EtcdServer, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(confd_cmd(tmp_path, *extra), capture_output=True, text=True,
                          env=etcd_env(etcd), timeout=60)


def etcd_env(etcd: EtcdServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env.update(etcd.env())
    return env


def test_onetime_renders_and_exits(etcd_server: EtcdServer, datastore: Datastore,
                                   tmp_path: Path) -> None:
    write_cluster(datastore)
    proc = run_confd(etcd_server, tmp_path, "--onetime", "--hostname", "host1")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "bird.cfg").read_text()
    assert "protocol bgp Mesh_198_18_0_2 from calico_node_v4" in text
    assert "router id 198.18.0.1;" in text
    assert "BIRD is not running" in proc.stderr  # waited for, not fatal


def test_onetime_for_an_unknown_host_fails_and_writes_nothing(
        etcd_server: EtcdServer, datastore: Datastore, tmp_path: Path) -> None:
    write_cluster(datastore)
    proc = run_confd(etcd_server, tmp_path, "--onetime", "--hostname", "nosuchhost")
    assert proc.returncode == 1
    assert "nosuchhost" in proc.stderr
    assert not (tmp_path / "bird.cfg").exists()


def test_sigterm_stops_the_daemon_cleanly(etcd_server: EtcdServer, datastore: Datastore,
                                          tmp_path: Path) -> None:
    write_cluster(datastore)
    proc = subprocess.Popen(confd_cmd(tmp_path, "--hostname", "host1"), env=etcd_env(etcd_server),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (tmp_path / "bird.cfg").exists(), 30, message="the first render")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "stopping" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def start_daemon(datastore: Datastore, tmp_path: Path) -> Iterator:
    started: list[tuple[ConfdDaemon, threading.Thread]] = []

    def start(**kwargs: float) -> ConfdDaemon:
        applier = BirdApplier(str(tmp_path / "bird.cfg"), str(tmp_path / "bird.ctl"),
                              include_dir=str(tmp_path / "bird.d"))
        d = ConfdDaemon(datastore, "host1", applier, include_dir=str(tmp_path / "bird.d"),
                        **kwargs)
        thread = threading.Thread(target=d.run, daemon=True)
        thread.start()
        started.append((d, thread))
        return d

    try:
        yield start
    finally:
        for d, thread in started:
            d.stop()
            thread.join(10)


@pytest.fixture
def daemon(start_daemon) -> ConfdDaemon:
    # A long quiet period, so that the burst below is one burst even on a loaded machine.
    return start_daemon(quiet=0.5, max_delay=20.0, retry_interval=60.0,
                        refresh_interval=600.0)


def test_a_burst_of_changes_is_rendered_once(datastore: Datastore, daemon: ConfdDaemon,
                                              tmp_path: Path) -> None:
    write_cluster(datastore)
    live = tmp_path / "bird.cfg"
    # The file is written before the render is counted: wait for both.
    wait_for(lambda: live.exists() and "198.18.0.2" in live.read_text() and daemon.settled(),
             30, message="the cluster rendered")
    first = daemon.renders
    # One burst: 50 peers written together (one transaction, one watch response).
    datastore.txn([], [Put(ks.bgp_peer_key(f"198.18.1.{i}"),
                           json.dumps({"ip": f"198.18.1.{i}", "as_num": "65000"}))
                       for i in range(1, 51)])
    wait_for(lambda: "Global_198_18_1_50" in (tmp_path / "bird.cfg").read_text()
             and daemon.settled(), 60, message="the burst rendered")
    text = (tmp_path / "bird.cfg").read_text()
    assert all(f"neighbor 198.18.1.{i} as 65000;" in text for i in range(1, 51))
    assert daemon.renders == first + 1


def test_only_blocks_holding_this_hosts_addresses_wake_it(datastore: Datastore,
                                                          daemon: ConfdDaemon,
                                                          tmp_path: Path) -> None:
    """Workloads come and go on other hosts all the time and rewrite their blocks: a
    block matters to host1 only while host1 holds an address in it (borrowed), so every
    other block change is dropped without a render."""
    write_cluster(datastore)
    live = tmp_path / "bird.cfg"
    wait_for(lambda: daemon.renders and "198.18.0.2" in live.read_text(), 30,
             message="the cluster rendered")
    first, ignored = daemon.renders, daemon.ignored
    block = AllocationBlock.new("198.19.1.0/26", "host2")

    def put(host: str | None = None, handle: str = "") -> None:
        if host is not None:
            block.allocate(1, handle, {"host": host})
        datastore.put(ks.block_key(block.cidr), dumps(block.to_json()))

    put("host2", "w1")  # host2's own workload: not host1's business
    wait_for(lambda: daemon.ignored > ignored, 30, message="the block seen and dropped")
    assert daemon.renders == first
    put("host1", "w2")  # host1 borrows 198.19.1.1 in host2's block: announced by host1
    wait_for(lambda: "198.19.1.1/32" in live.read_text() and daemon.renders == first + 1, 30,
             message="the borrowed /32, in one render")
    ignored = daemon.ignored
    put("host2", "w3")  # the same block changes again, host1's part does not
    wait_for(lambda: daemon.ignored > ignored, 30, message="the change seen and dropped")
    assert daemon.renders == first + 1
    block.release(["198.19.1.1"])
    put()  # host1's address released: no longer announced
    wait_for(lambda: "198.19.1.1/32" not in live.read_text() and daemon.renders == first + 2,
             30, message="the /32 gone, in one more render")


def test_invalid_render_keeps_the_live_file(datastore: Datastore, daemon: ConfdDaemon,
                                            tmp_path: Path) -> None:
    write_cluster(datastore)
    live = tmp_path / "bird.cfg"
    wait_for(lambda: live.exists(), 30, message="the first render")
    good = live.read_text()
    datastore.put(ks.custom_filter_key(4, "broken"), "if net ~ then reject;")
    wait_for(lambda: daemon.last_result is not None and daemon.last_result.error is not None,
             30, message="the invalid render")
    error = daemon.last_result.error
    assert error is not None and "if net ~ then reject;" in error.line_text
    assert live.read_text() == good
    datastore.put(ks.custom_filter_key(4, "broken"), "if net ~ [ 198.19.9.0/24 ] then reject;")
    wait_for(lambda: "198.19.9.0/24" in live.read_text(), 30, message="the fixed render")


def test_a_live_file_removed_by_hand_is_restored(datastore: Datastore, start_daemon,
                                                 tmp_path: Path) -> None:
    write_cluster(datastore)
    start_daemon(refresh_interval=0.3, retry_interval=60.0)
    live = tmp_path / "bird.cfg"
    wait_for(live.exists, 30, message="the first render")
    good = live.read_text()
    live.unlink()
    wait_for(lambda: live.exists() and live.read_text() == good, 30,
             message="the live file restored by the periodic refresh")
