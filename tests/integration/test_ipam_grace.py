"""The leak grace period of the IPAM check, on real etcd.

`calicoctl ipam check --fix` racing a real `calicoctl container add`: an address whose
endpoint is still being written is work in progress, never a leak; an old orphan is. The
add runs as a subprocess inside a simulated host namespace (as in
test_calicoctl_container.py), held still right after its IPAM transaction committed
(`tests.support.paused_calicoctl`) - before its veth and endpoint exist - while the
check and repair run; then it is let go and must finish consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from libcalico import keyspace as ks
from libcalico.datastore import Datastore
from libcalico.errors import ValidationError
from libcalico.ipam import IPAMClient, check, repair
from netsim.netns import Namespace
from netsim.topology import calicoctl_path
from netsim.wait import wait_for

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
HOST = "grace-node"
POOL = "198.18.72.0/24"


@pytest.fixture
def env(unix_etcd):
    store = unix_etcd.client()
    store.delete_prefix("/calico/")
    store.put(ks.pool_key(POOL), json.dumps({"cidr": POOL}))
    store.put(ks.bgp_host_key(HOST, "ip_addr_v4"), "198.18.255.1")  # the host exists
    host = Namespace("grace-h")
    wl = Namespace("grace-w")
    procs: list[subprocess.Popen[str]] = []
    tmp = tempfile.TemporaryDirectory(prefix="grace-")
    try:
        yield store, host, wl, procs, tmp.name
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for ns in (wl, host):
            ns.delete()
        tmp.cleanup()
        store.close()


def _env(unix_etcd) -> dict[str, str]:
    return {**os.environ, **unix_etcd.env(), "HOSTNAME": HOST, "PYTHONPATH": str(ROOT)}


def ctl(unix_etcd, host, *args, code=0):
    cmd = ["ip", "netns", "exec", host.name, calicoctl_path(), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(unix_etcd),
                          check=False, timeout=60)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.mark.root
@pytest.mark.slow
def test_check_fix_never_releases_an_address_being_set_up(unix_etcd, env):
    store, host, wl, procs, tmp = env
    # An orphan from an add that died an hour ago: old enough to be a leak.
    orphan = IPAMClient(store, clock=lambda: time.time() - 3600).auto_assign(
        1, 0, "dead-workload", host=HOST).ipv4s[0]

    # A real `container add`, held after IPAM assigned its address.
    add = subprocess.Popen(
        ["ip", "netns", "exec", host.name, sys.executable, "-m",
         "tests.support.paused_calicoctl", tmp, "container", "add", wl.name, "ipv4"],
        cwd=ROOT, env=_env(unix_etcd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    procs.append(add)
    assigned = Path(tmp, "assigned")
    wait_for(lambda: assigned.exists() or add.poll() is not None, 60,
             message="container add to assign its address")
    assert add.poll() is None, add.communicate()
    (ip,) = assigned.read_text().split()
    assert ip != orphan
    assert not any(isinstance(ks.parse_key(kv.key), ks.WorkloadEndpointKey)
                   for kv in store.list(ks.host_workload_dir(HOST))[0])  # no endpoint yet

    # The repair runs now, with the default grace period.
    res = ctl(unix_etcd, host, "ipam", "check", "--fix")
    assert f"in progress: {ip} (handle {wl.name}" in res.stdout, res.stdout
    assert f"leaked: {orphan}" in res.stdout and f"leaked: {ip}" not in res.stdout
    assert "Released 1," in res.stdout
    ipam = IPAMClient(store)
    info = ipam.get_assignment_attributes(ip)
    assert info is not None and info.handle_id == wl.name  # still allocated, same owner
    assert ipam.get_assignment_attributes(orphan) is None  # the old orphan is gone

    # Let the add finish: it must end consistent - endpoint, interface and allocation.
    with open(Path(tmp, "go"), "w") as go:
        go.write("go\n")
    out, err = add.communicate(timeout=60)
    assert add.returncode == 0, (out, err)
    assert ip in out
    eps = [json.loads(kv.value) for kv in store.list(ks.host_workload_dir(HOST))[0]
           if isinstance(ks.parse_key(kv.key), ks.WorkloadEndpointKey)]
    assert [ep["ipv4_nets"] for ep in eps] == [[f"{ip}/32"]]
    assert f"{ip}/32" in wl.ip("addr", "show", "eth1").stdout
    assert ipam.get_assignment_attributes(ip).handle_id == wl.name  # type: ignore[union-attr]
    report = check(store, grace_period=0)  # nothing in progress any more, nothing wrong
    assert report.ok and report.in_progress == () and report.allocated == 1, report
    assert "No problems found" in ctl(unix_etcd, host, "ipam", "check", "--fix").stdout
    ctl(unix_etcd, host, "container", "remove", wl.name)
    assert check(store, grace_period=0).allocated == 0


# --- the library: ages, boundaries, and the repair's re-check ---------------------------------

class Clock:
    """A settable clock (unix seconds) for the allocator and the check."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool(datastore: Datastore) -> Datastore:
    datastore.put(ks.pool_key(POOL), json.dumps({"cidr": POOL}))
    datastore.put(ks.bgp_host_key(HOST, "ip_addr_v4"), "198.18.255.1")
    return datastore


def test_age_decides_between_in_progress_and_leak(pool: Datastore) -> None:
    t0 = 1_800_000_000.0
    clock = Clock(t0)
    ip = IPAMClient(pool, clock=clock).auto_assign(1, 0, "slow-add", host=HOST).ipv4s[0]
    (block,) = IPAMClient(pool).host_blocks(HOST)
    stored = json.loads(pool.get_value(ks.block_key(block)) or "{}")
    assert list(stored["allocated_at"].values()) == [int(t0)]  # stamped by the writer

    young = check(pool, 60, clock=Clock(t0 + 59.5))
    assert young.ok and young.leaks == ()
    assert [(p.ip, p.handle_id, p.block, p.age) for p in young.in_progress] == [
        (ip, "slow-add", block, 59.5)]
    old = check(pool, 60, clock=Clock(t0 + 60))
    assert [(lk.ip, lk.handle_id, lk.allocated_at) for lk in old.leaks] == [
        (ip, "slow-add", int(t0))]
    assert old.in_progress == () and not old.ok
    # A stamp from a writer whose clock is ahead is in progress, not a leak.
    ahead = check(pool, 60, clock=Clock(t0 - 30))
    assert [p.ip for p in ahead.in_progress] == [ip] and ahead.leaks == ()
    # Grace 0: every allocation without an endpoint is a leak.
    assert [lk.ip for lk in check(pool, 0, clock=Clock(t0)).leaks] == [ip]
    with pytest.raises(ValidationError, match="grace_period"):
        check(pool, -1)


def test_allocation_without_a_stamp_counts_as_old(pool: Datastore) -> None:
    """Blocks written before allocations were stamped: their allocations have no age."""
    ip = IPAMClient(pool).auto_assign(1, 0, "legacy", host=HOST).ipv4s[0]
    (block,) = IPAMClient(pool).host_blocks(HOST)
    data = json.loads(pool.get_value(ks.block_key(block)) or "{}")
    del data["allocated_at"]
    pool.put(ks.block_key(block), json.dumps(data))
    report = check(pool)
    assert [lk.ip for lk in report.leaks] == [ip] and report.in_progress == ()
    assert repair(pool, report).released == [ip]


def test_repair_keeps_a_leak_reallocated_to_the_same_handle_since(pool: Datastore) -> None:
    """A workload id is reused: its old address leaked, was released and handed out again
    to the same handle after the report. The handle still matches; only the age tells
    the new allocation from the leak, and repair must keep it."""
    t0 = 1_800_000_000.0
    clock = Clock(t0)
    client = IPAMClient(pool, clock=clock)
    ip = client.assign_ip("198.18.72.9", "wl-reused", host=HOST)
    other = client.assign_ip("198.18.72.10", "wl-gone", host=HOST)
    clock.now = t0 + 3600
    report = check(pool, 60, clock=clock)
    assert {lk.ip for lk in report.leaks} == {ip, other}
    client.release_ips([ip])
    client.assign_ip(ip, "wl-reused", host=HOST)  # the workload comes back: a fresh add
    result = repair(pool, report, clock=Clock(t0 + 3601))
    assert result.released == [other]
    assert any(s.startswith(f"leak {ip}:") for s in result.skipped), result.skipped
    assert client.get_assignment_attributes(ip).handle_id == "wl-reused"  # type: ignore[union-attr]
    assert client.get_assignment_attributes(other) is None
