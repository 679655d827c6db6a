"""IPAM under concurrency and crashes, and the consistency check/repair, on real etcd.

Separate processes (`tests.support.ipam_worker`), each with its own Datastore client.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from libcalico import keyspace
from libcalico.datastore import Datastore
from libcalico.ipam import AllocationBlock, IPAMClient, IPAMHandle, check, repair
from libcalico.model import IPPool
from netsim.etcd import EtcdServer
from netsim.wait import wait_for

pytestmark = pytest.mark.etcd
ROOT = Path(__file__).resolve().parents[2]


def add_pool(ds: Datastore, cidr: str, **kw: object) -> None:
    ds.put(keyspace.pool_key(cidr), json.dumps(IPPool(cidr, **kw).to_json()))  # type: ignore[arg-type]


def blocks_and_handles(ds: Datastore) -> tuple[dict[str, str | None], dict[str, IPAMHandle]]:
    """Every allocated address -> handle (asserting none is recorded twice), and handles."""
    kvs, _ = ds.list_many([keyspace.BLOCK_DIR, keyspace.HANDLE_DIR])
    allocated: dict[str, str | None] = {}
    handles: dict[str, IPAMHandle] = {}
    for kv in kvs:
        data = json.loads(kv.value)
        if kv.key.startswith(keyspace.BLOCK_DIR):
            for ip, handle in AllocationBlock.from_json(data).allocated().items():
                assert ip not in allocated, f"{ip} recorded twice"
                allocated[ip] = handle
        else:
            handle_obj = IPAMHandle.from_json(data)
            handles[handle_obj.handle_id] = handle_obj
    return allocated, handles


def start_worker(server: EtcdServer, count: int, host: str, prefix: str,
                 endpoints: bool = False) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "tests.support.ipam_worker", "--count", str(count),
           "--host", host, "--prefix", prefix] + (["--endpoints"] if endpoints else [])
    env = dict(os.environ, **server.env(), PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


@pytest.mark.slow
def test_four_processes_2000_assignments(etcd_server: EtcdServer, datastore: Datastore,
                                         workers: list[subprocess.Popen[str]]) -> None:
    add_pool(datastore, "198.18.0.0/20")  # 4096 addresses, 64 blocks
    hosts = ["shared", "shared", "other-1", "other-2"]
    for i, host in enumerate(hosts):
        workers.append(start_worker(etcd_server, 500, host, f"w{i}"))
    outputs = [p.communicate(timeout=300) for p in workers]
    for p, (_, err) in zip(workers, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    handed_out = [line.split() for out, _ in outputs for line in out.splitlines()]
    assert len(handed_out) == 2000
    assert len({ip for ip, _ in handed_out}) == 2000

    allocated, handles = blocks_and_handles(datastore)
    assert allocated == {ip: handle for ip, handle in handed_out}
    assert len(handles) == 2000 and all(h.total == 1 for h in handles.values())
    per_handle = Counter(allocated.values())
    assert set(per_handle.values()) == {1}
    for handle in handles.values():
        (block_cidr,) = handle.block
        ip = next(ip for ip, h in allocated.items() if h == handle.handle_id)
        assert AllocationBlock.new(block_cidr).contains(ip)

    client = IPAMClient(datastore)
    # the shared host's blocks are its own; the others' too (no borrowing was needed)
    for host in set(hosts):
        for cidr in client.host_blocks(host):
            assert json.loads(datastore.get_value(keyspace.block_key(cidr)) or "{}")[
                "affinity"] == f"host:{host}"
    assert client.release_ips(list(allocated)) == set()
    usage = client.usage()
    assert usage[0].allocated == 0 and usage[0].blocks == ()
    assert datastore.list(keyspace.IPAM_DIR)[0] == []


def test_killed_allocator_never_causes_duplicates(etcd_server: EtcdServer,
                                                  datastore: Datastore,
                                                  workers: list[subprocess.Popen[str]]
                                                  ) -> None:
    add_pool(datastore, "198.18.0.0/22")
    datastore.put(keyspace.bgp_host_key("crash-host", "ip_addr_v4"), "198.18.255.1")
    rng = random.Random()
    handed_out: dict[str, str] = {}
    for round_no in range(3):
        proc = start_worker(etcd_server, 400, "crash-host", f"k{round_no}", endpoints=True)
        workers.append(proc)
        assert proc.stdout is not None
        target = rng.randrange(5, 60)
        lines: list[str] = []
        while len(lines) < target:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "worker died"
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)  # somewhere in the middle of allocating
        proc.wait(10)
        rest = proc.stdout.read()
        for line in lines + rest.splitlines():
            ip, handle = line.split()
            assert ip not in handed_out, f"{ip} handed out twice"
            handed_out[ip] = handle

    # A healthy client keeps allocating: it never hands out what the dead ones got.
    client = IPAMClient(datastore)
    more = [client.auto_assign(1, 0, f"after-{i}", host="crash-host").ipv4s[0]
            for i in range(100)]
    assert set(more).isdisjoint(handed_out) and len(set(more)) == 100

    allocated, handles = blocks_and_handles(datastore)
    for ip, handle in handed_out.items():
        assert allocated[ip] == handle
    # Blocks and handles agree (every write was one transaction), and what the killed
    # workers leaked is exactly the allocations without an endpoint (they are dead: no
    # grace period needed to call their fresh allocations leaks).
    report = check(datastore, grace_period=0)
    assert report.handle_mismatches == () and report.missing == ()
    endpoint_ips = {ip for ip in allocated if ip not in {leak.ip for leak in report.leaks}}
    kvs, _ = datastore.list(keyspace.HOST_DIR)
    assert endpoint_ips == {json.loads(kv.value)["ipv4_nets"][0].split("/")[0] for kv in kvs
                            if isinstance(keyspace.parse_key(kv.key),
                                          keyspace.WorkloadEndpointKey)}
    leaked = {leak.ip for leak in report.leaks}
    assert set(more) <= leaked  # the "after" client wrote no endpoints
    result = repair(datastore, report)
    assert set(result.released) == leaked
    assert check(datastore, grace_period=0).ok


def write_endpoint(ds: Datastore, host: str, workload: str, ips: list[str]) -> None:
    v4 = [f"{ip}/32" for ip in ips if "." in ip]
    v6 = [f"{ip}/128" for ip in ips if ":" in ip]
    ds.put(keyspace.workload_endpoint_key(host, "test", workload, "eth0"),
           json.dumps({"state": "active", "name": "cali0123456789a", "profile_ids": [],
                       "ipv4_nets": v4, "ipv6_nets": v6}))


def test_check_finds_each_kind_and_repair_fixes(datastore: Datastore) -> None:
    add_pool(datastore, "198.18.0.0/24")
    add_pool(datastore, "fd00:1::/120")
    for host in ("host1", "host2"):
        datastore.put(keyspace.bgp_host_key(host, "ip_addr_v4"), "198.18.255.1")
    client = IPAMClient(datastore)
    ok = client.auto_assign(1, 1, "good", host="host1")
    write_endpoint(datastore, "host1", "good", ok.ipv4s + ok.ipv6s)
    leak = client.auto_assign(1, 1, "leaky", host="host1")
    write_endpoint(datastore, "host1", "noalloc", ["198.18.0.200", "fd00:1::99"])
    write_endpoint(datastore, "host1", "outside", ["198.19.9.9"])
    gone = client.auto_assign(1, 0, "ghost", host="vanished").ipv4s
    write_endpoint(datastore, "host2", "ghostwl", gone)  # in use, but its host's block...
    datastore.delete_prefix(keyspace.bgp_host_dir("host2"))  # host2 still has endpoints
    datastore.put(keyspace.handle_key("drift"), json.dumps(
        {"id": "drift", "block": {"198.18.0.0/26": 5}}))

    report = check(datastore, grace_period=0)
    assert {lk.ip for lk in report.leaks} == set(leak.ipv4s + leak.ipv6s)
    assert {(m.ip, m.in_pool) for m in report.missing} == {
        ("198.18.0.200", True), ("fd00:1::99", True), ("198.19.9.9", False)}
    vanished_block = client.host_blocks("vanished")[0]
    assert [(s.host, s.block) for s in report.stale_affinities] == [
        ("vanished", vanished_block)]
    assert [m.handle_id for m in report.handle_mismatches] == ["drift"]

    # Meanwhile one leak is released and its address re-allocated to another workload:
    # repair must leave that new allocation alone.
    reused_ip = leak.ipv4s[0]
    client.release_ips([reused_ip])
    client.assign_ip(reused_ip, "newcomer", host="host1")

    result = repair(datastore, report)
    assert reused_ip not in result.released and leak.ipv6s[0] in result.released
    assert sorted(result.recorded) == ["198.18.0.200", "fd00:1::99"]
    assert result.affinities_released == [vanished_block]
    assert result.handles_fixed == ["drift"]
    assert client.get_assignment_attributes(reused_ip).handle_id == "newcomer"  # type: ignore[union-attr]
    assert client.get_assignment_attributes("198.18.0.200").handle_id == "noalloc"  # type: ignore[union-attr]
    assert client.get_assignment_attributes(gone[0]) is not None  # in use: kept

    after = check(datastore, grace_period=0)
    assert {lk.ip for lk in after.leaks} == {reused_ip}  # newcomer has no endpoint yet
    assert [m.ip for m in after.missing] == ["198.19.9.9"]
    assert after.stale_affinities == () and after.handle_mismatches == ()


def test_repair_while_allocations_go_on(etcd_server: EtcdServer, datastore: Datastore,
                                        workers: list[subprocess.Popen[str]]) -> None:
    add_pool(datastore, "198.18.0.0/22")
    datastore.put(keyspace.bgp_host_key("busy", "ip_addr_v4"), "198.18.255.1")
    client = IPAMClient(datastore)
    leaked = [client.auto_assign(1, 0, f"leak-{i}", host="busy").ipv4s[0] for i in range(20)]
    report = check(datastore, grace_period=0)
    assert {lk.ip for lk in report.leaks} == set(leaked)
    proc = start_worker(etcd_server, 150, "busy", "live", endpoints=True)
    workers.append(proc)
    assert proc.stdout is not None
    wait_for(lambda: proc.stdout.readline(), 30, message="worker started")  # type: ignore[union-attr]
    result = repair(datastore, report)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert sorted(result.released) == sorted(leaked)
    final = check(datastore, grace_period=0)
    assert final.ok, final
    allocated, handles = blocks_and_handles(datastore)
    assert len(allocated) == 150 and set(allocated.values()) == set(handles)
    assert all(handle.startswith("live-") for handle in handles)
