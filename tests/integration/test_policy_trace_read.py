"""`Snapshot.read` (what calico-felix-trace reads from etcd) gives the same traces as a
snapshot of the whole datastore, and reads only what a flow can need: the host
directory, config, tiers and pools, and of the profiles only those of the flow's
endpoints (never the profile directory as a whole)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from felix.trace.report import to_dict
from felix.trace.snapshot import Snapshot
from felix.trace.trace import trace
from libcalico import keyspace as ks
from libcalico.datastore import Put
from tests.unit.test_felix_trace import ITEMS

pytestmark = pytest.mark.etcd

FLOWS = [
    ("front", "back", "tcp", 8080), ("198.18.10.1", "198.18.11.3", "tcp", 8080),
    ("front", "far", "tcp", 9090), ("back", "host:h2", "tcp", 443),
    ("198.18.10.2", "198.18.11.4", "udp", 53), ("fd00::1", "fd00::2", "tcp", 7070),
    ("203.0.113.7", "198.18.10.2", "icmp", None), ("host:h1", "203.0.113.7", "tcp", 443),
    ("h3/k8s/w7/eth0", "198.19.0.8", "tcp", 8080), ("front@198.18.10.9", "back", "tcp", 8080),
]


@pytest.fixture
def stored(datastore):
    for i in range(0, len(ITEMS), 100):
        assert datastore.txn([], [Put(k, v) for k, v in ITEMS[i:i + 100]])
    return datastore


def test_read_traces_like_the_whole_datastore(stored):
    kvs, revision = stored.list(ks.V1 + "/")
    whole = Snapshot(((kv.key, kv.value) for kv in kvs), revision, stored)
    read = Snapshot.read(stored)
    assert read.revision == revision
    for src, dst, proto, port in FLOWS:
        assert to_dict(trace(read, src, dst, proto, port)) == \
            to_dict(trace(whole, src, dst, proto, port)), (src, dst)


def test_read_takes_only_the_profiles_of_the_flow(stored, monkeypatch):
    prefixes: list[str] = []
    list_items = stored.list_items

    def recording(prefix, revision=0):
        prefixes.append(prefix)
        return list_items(prefix, revision)

    monkeypatch.setattr(stored, "list_items", recording)
    snapshot = Snapshot.read(stored)
    assert not any(p.startswith(ks.PROFILE_DIR) for p in prefixes)
    result = trace(snapshot, "front", "back", "tcp", 8080)
    assert result.verdict == "allow"
    profiles = sorted(p for p in prefixes if p.startswith(ks.PROFILE_DIR))
    assert profiles == [ks.profile_dir("back"), ks.profile_dir("front")]
    assert {ks.CONFIG_DIR, ks.TIER_DIR, ks.POOL_DIR} <= set(prefixes)


def test_the_trace_program_never_imports_etcd3(stored, etcd_server):
    """grpc's channel carries the reads as bare bytes: etcd3's generated modules (tens of
    milliseconds of every query's start-up) stay unloaded."""
    code = ("import sys\nfrom felix.trace.main import run\n"
            "assert run(['--from', 'front', '--to', 'back', '--port', '8080']) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'etcd3' "
            "or m.startswith('google.protobuf')))\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ETCD_")},
           **etcd_server.env()}
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "verdict: allow" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"
