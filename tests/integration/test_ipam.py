"""IPAM against a real etcd: blocks and affinity, auto-assign order, assign, release,
queries, pool removal, IPv4 and IPv6."""

from __future__ import annotations

import json

import pytest

from libcalico import keyspace
from libcalico.codec import dumps
from libcalico.datastore import Datastore
from libcalico.errors import AlreadyExists, NotFound, ValidationError
from libcalico.ipam import (
    AddressInUse,
    AllocationBlock,
    IPAMClient,
    IPAMHandle,
    PoolInUse,
    PoolsExhausted,
)
from libcalico.model import IPAMConfig, IPPool

pytestmark = pytest.mark.etcd

POOL4 = "198.18.0.0/24"
POOL6 = "fd00:1::/120"
FAM = {4: (POOL4, 26), 6: (POOL6, 122)}


def add_pool(ds: Datastore, cidr: str, **kw: object) -> IPPool:
    pool = IPPool(cidr, **kw)  # type: ignore[arg-type]
    ds.put(keyspace.pool_key(cidr), json.dumps(pool.to_json()))
    return pool


def read_block(ds: Datastore, cidr: str) -> AllocationBlock | None:
    text = ds.get_value(keyspace.block_key(cidr))
    return None if text is None else AllocationBlock.from_json(json.loads(text))


def read_handle(ds: Datastore, handle_id: str) -> IPAMHandle | None:
    text = ds.get_value(keyspace.handle_key(handle_id))
    return None if text is None else IPAMHandle.from_json(json.loads(text))


def assign(client: IPAMClient, version: int, n: int, handle: str, host: str) -> list[str]:
    result = client.auto_assign(n if version == 4 else 0, n if version == 6 else 0, handle,
                                host=host)
    return result.ipv4s if version == 4 else result.ipv6s


# --- 1. blocks and claims --------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
def test_default_block_size_and_affinity(datastore: Datastore, version: int) -> None:
    pool, size = FAM[version]
    add_pool(datastore, pool)
    client = IPAMClient(datastore)
    ips = assign(client, version, 3, "c1", "host1")
    assert len(ips) == 3
    blocks = client.host_blocks("host1")
    assert len(blocks) == 1 and blocks[0].endswith(f"/{size}")
    block = read_block(datastore, blocks[0])
    assert block is not None and block.host == "host1"
    assert sorted(block.allocated()) == sorted(ips)
    assert datastore.get(keyspace.affinity_key("host1", blocks[0])) is not None
    assert read_handle(datastore, "c1") == IPAMHandle("c1", {blocks[0]: 3})


def test_pool_block_size_is_honoured(datastore: Datastore) -> None:
    add_pool(datastore, "198.18.8.0/24", block_size=28)
    client = IPAMClient(datastore)
    ips = assign(client, 4, 20, "big", "host1")
    assert len(ips) == 20
    blocks = client.host_blocks("host1")
    assert len(blocks) == 2 and all(b.endswith("/28") for b in blocks)


def test_two_hosts_cannot_claim_one_block(datastore: Datastore) -> None:
    add_pool(datastore, POOL4)
    a, b = IPAMClient(datastore), IPAMClient(datastore)
    a.claim_block("host1", "198.18.0.64/26")
    with pytest.raises(AlreadyExists, match="host1"):
        b.claim_block("host2", "198.18.0.64/26")
    a.claim_block("host1", "198.18.0.64/26")  # idempotent for the owner
    assert b.host_blocks("host1") == ["198.18.0.64/26"] and b.host_blocks("host2") == []
    with pytest.raises(ValidationError, match="/26"):
        a.claim_block("host1", "198.18.0.0/25")
    # Two clients with stale views each claim a block for their host: they get different ones.
    ips1 = assign(a, 4, 1, "x1", "host3")
    ips2 = assign(b, 4, 1, "x2", "host4")
    assert set(a.host_blocks("host3")).isdisjoint(a.host_blocks("host4"))
    assert ips1 != ips2


# --- 2. auto-assign order ------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
def test_own_blocks_first_then_new_block_then_borrow(datastore: Datastore,
                                                    version: int) -> None:
    pool, _ = FAM[version]
    add_pool(datastore, pool)  # 4 blocks of 64
    c1, c2 = IPAMClient(datastore), IPAMClient(datastore)
    first = assign(c1, version, 10, "a", "host1")
    block1 = c1.host_blocks("host1")[0]
    # host1 again: from its own block
    again = assign(c1, version, 54, "b", "host1")
    assert c1.host_blocks("host1") == [block1]
    assert all(AllocationBlock.new(block1).contains(ip) for ip in first + again)
    # full: next request claims a new block
    assign(c1, version, 1, "c", "host1")
    assert len(c1.host_blocks("host1")) == 2
    # two other hosts take the remaining blocks
    assign(c2, version, 1, "d", "host2")
    assign(c2, version, 1, "e", "host3")
    assert len(c2.host_blocks("host2")) == 1 and len(c2.host_blocks("host3")) == 1
    # host4 has no block and none is free: borrows from another host's block
    borrowed = assign(c2, version, 2, "f", "host4")
    assert len(borrowed) == 2 and c2.host_blocks("host4") == []
    owners = {read_block(datastore, b).host for b in c2.host_blocks("host2")}  # type: ignore[union-attr]
    assert owners == {"host2"}


def test_strict_affinity_prevents_borrowing_and_reports_exhaustion(
        datastore: Datastore) -> None:
    add_pool(datastore, "198.18.0.0/26")  # one block
    client = IPAMClient(datastore)
    client.set_config(IPAMConfig(strict_affinity=True))
    assert client.get_config().strict_affinity
    assert len(assign(client, 4, 1, "a", "host1")) == 1
    result = client.auto_assign(1, 0, "b", host="host2")
    assert result.ipv4s == [] and not result.complete
    assert "IPv4 pools exhausted: assigned 0 of 1" in result.messages[0]
    with pytest.raises(PoolsExhausted, match="exhausted"):
        result.raise_if_short()
    # strict blocks stay strict even after the config changes back
    client.set_config(IPAMConfig(strict_affinity=False))
    assert client.auto_assign(1, 0, "b", host="host2").ipv4s == []


def test_no_auto_allocate_blocks_only_uses_existing(datastore: Datastore) -> None:
    add_pool(datastore, POOL4)
    client = IPAMClient(datastore)
    client.set_config(IPAMConfig(auto_allocate_blocks=False))
    assert assign(client, 4, 1, "a", "host1") == []
    client.claim_block("host1", "198.18.0.128/26")
    assert assign(client, 4, 1, "a", "host1") == ["198.18.0.128"]


def test_partial_result_when_pool_runs_dry(datastore: Datastore) -> None:
    add_pool(datastore, "198.18.0.0/28", block_size=28)
    add_pool(datastore, "fd00:2::/124", block_size=124)
    client = IPAMClient(datastore)
    result = client.auto_assign(20, 3, "many", host="host1")
    assert len(result.ipv4s) == 16 and len(result.ipv6s) == 3
    assert result.messages == ("IPv4 pools exhausted: assigned 16 of 20 addresses",)
    assert len(set(result.ipv4s)) == 16


def test_disabled_pools_are_never_used(datastore: Datastore) -> None:
    add_pool(datastore, "198.18.0.0/26", disabled=True)
    client = IPAMClient(datastore)
    result = client.auto_assign(1, 0, "a", host="host1")
    assert result.ipv4s == [] and "no enabled IPv4 pool" in result.messages[0]
    add_pool(datastore, "198.18.1.0/26")
    assert assign(client, 4, 1, "a", "host1")[0].startswith("198.18.1.")
    # disabling a pool while a client has it cached: the compare on the pool stops it
    add_pool(datastore, "198.18.1.0/26", disabled=True)
    assert client.auto_assign(1, 0, "b", host="host1").ipv4s == []


def test_pools_argument_restricts(datastore: Datastore) -> None:
    add_pool(datastore, "198.18.0.0/26")
    add_pool(datastore, "198.18.1.0/26")
    client = IPAMClient(datastore)
    ips = client.auto_assign(2, 0, "a", host="h", pools=["198.18.1.0/26"]).ipv4s
    assert all(ip.startswith("198.18.1.") for ip in ips)
    with pytest.raises(ValidationError, match="no such IP pool"):
        client.auto_assign(1, 0, "a", host="h", pools=["198.18.9.0/24"])
    with pytest.raises(ValidationError, match="num_v4"):
        client.auto_assign(-1, 0, "a", host="h")


# --- 3. assign a given address ------------------------------------------------------------

@pytest.mark.parametrize("ip,other", [("198.18.0.77", "198.19.0.1"),
                                      ("fd00:1::42", "fd00:9::1")])
def test_assign_ip(datastore: Datastore, ip: str, other: str) -> None:
    add_pool(datastore, POOL4)
    add_pool(datastore, POOL6)
    client = IPAMClient(datastore)
    assert client.assign_ip(ip, "w1", {"k": "v"}, host="host1") == ip
    info = client.get_assignment_attributes(ip)
    assert info is not None and info.handle_id == "w1"
    assert info.attributes == {"k": "v"}
    assert client.host_blocks("host1") == [info.block]
    with pytest.raises(AddressInUse, match=ip):
        client.assign_ip(ip, "w2", host="host2")
    with pytest.raises(ValidationError, match="not in any IP pool"):
        client.assign_ip(other, "w1", host="host1")
    with pytest.raises(ValidationError, match="ip"):
        client.assign_ip("not-an-ip", "w1", host="host1")
    # auto-assign never hands the assigned address out again
    got = assign(client, 4 if "." in ip else 6, 64, "bulk", "host1")
    assert ip not in got


# --- 4. release ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
def test_release_ips_and_block_freed_when_empty(datastore: Datastore, version: int) -> None:
    pool, _ = FAM[version]
    add_pool(datastore, pool)
    client = IPAMClient(datastore)
    ips = assign(client, version, 3, "c1", "host1")
    block = client.host_blocks("host1")[0]
    unknown_ip = AllocationBlock.new(block).address(40)
    assert client.release_ips([ips[0], unknown_ip]) == {unknown_ip}
    assert read_handle(datastore, "c1") == IPAMHandle("c1", {block: 2})
    assert client.get_assignment_attributes(ips[0]) is None
    assert client.release_ips(ips[1:]) == set()
    # empty: block, affinity and handle are gone
    assert read_block(datastore, block) is None
    assert client.host_blocks("host1") == []
    assert read_handle(datastore, "c1") is None
    # the addresses can now move to another host
    other = IPAMClient(datastore)
    assert assign(other, version, 1, "c2", "host2")
    assert set(other.host_blocks("host2")) <= {block} | set(other.host_blocks("host2"))


def test_release_by_handle(datastore: Datastore) -> None:
    add_pool(datastore, POOL4)
    add_pool(datastore, POOL6)
    client = IPAMClient(datastore)
    result = client.auto_assign(2, 2, "pod1", host="host1")
    keep = client.auto_assign(1, 0, "pod2", host="host1").ipv4s
    released = client.release_by_handle("pod1")
    assert sorted(released) == sorted(result.ipv4s + result.ipv6s)
    assert read_handle(datastore, "pod1") is None
    assert client.get_assignment_attributes(keep[0]) is not None
    assert client.release_by_handle("pod1") == []
    # the IPv6 block was emptied and freed; the IPv4 block still holds pod2
    assert [b for b in client.host_blocks("host1") if ":" in b] == []


def test_release_many_handles_in_big_block(datastore: Datastore) -> None:
    add_pool(datastore, "198.18.0.0/24", block_size=24)  # one block of 256
    client = IPAMClient(datastore)
    ips = [assign(client, 4, 1, f"h{i}", "host1")[0] for i in range(150)]
    assert client.release_ips(ips) == set()  # 150 handles: split into transactions
    assert client.usage()[0].allocated == 0
    assert datastore.list(keyspace.HANDLE_DIR)[0] == []


# --- 6. queries -------------------------------------------------------------------------

def test_usage_per_pool_and_block(datastore: Datastore) -> None:
    add_pool(datastore, POOL4)
    add_pool(datastore, POOL6)
    client = IPAMClient(datastore)
    client.auto_assign(5, 2, "a", host="host1")
    client.auto_assign(1, 0, "b", host="host2")
    usage = {u.cidr: u for u in client.usage()}
    assert usage[POOL4].size == 256 and usage[POOL4].allocated == 6
    assert usage[POOL4].free == 250
    assert {(b.host, b.allocated, b.size) for b in usage[POOL4].blocks} == {
        ("host1", 5, 64), ("host2", 1, 64)}
    assert usage[POOL6].allocated == 2 and len(usage[POOL6].blocks) == 1


def test_release_affinity_keeps_addresses(datastore: Datastore) -> None:
    add_pool(datastore, POOL4)
    client = IPAMClient(datastore)
    ip = assign(client, 4, 1, "a", "host1")[0]
    block = client.host_blocks("host1")[0]
    client.release_affinity("host1", block)
    assert client.host_blocks("host1") == []
    stored = read_block(datastore, block)
    assert stored is not None and stored.host is None and ip in stored.allocated()


# --- 8. pool removal ------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
def test_remove_pool_refused_then_forced(datastore: Datastore, version: int) -> None:
    pool, _ = FAM[version]
    add_pool(datastore, pool)
    client = IPAMClient(datastore)
    ips = assign(client, version, 70, "big", "host1") + assign(client, version, 1, "x", "h2")
    with pytest.raises(PoolInUse, match="71 allocated"):
        client.remove_pool(pool)
    # refused: the pool is back as it was (enabled) and nothing was released
    assert json.loads(datastore.get_value(keyspace.pool_key(pool)) or "{}") == {"cidr": pool}
    assert client.usage()[0].allocated == 71
    released = client.remove_pool(pool, force=True)
    assert sorted(released) == sorted(ips)
    assert datastore.get(keyspace.pool_key(pool)) is None
    for prefix in (keyspace.BLOCK_DIR, keyspace.HANDLE_DIR, keyspace.AFFINITY_DIR):
        assert datastore.list(prefix)[0] == []


def test_remove_empty_pool(datastore: Datastore) -> None:
    add_pool(datastore, POOL4)
    client = IPAMClient(datastore)
    client.claim_block("host1", "198.18.0.0/26")
    assert client.remove_pool(POOL4) == []
    assert datastore.list(keyspace.IPAM_DIR)[0] == []
    assert datastore.get(keyspace.pool_key(POOL4)) is None


def test_remove_pools_is_all_or_nothing(datastore: Datastore) -> None:
    free, busy = "198.18.0.0/24", "198.18.1.0/24"
    for cidr in (free, busy):
        add_pool(datastore, cidr)
    client = IPAMClient(datastore)
    client.claim_block("host1", "198.18.0.0/26")  # an empty block: the pool is free
    ip = client.assign_ip("198.18.1.5", "wl", host="host1")
    before = {c: datastore.get(keyspace.pool_key(c)) for c in (free, busy)}
    with pytest.raises(PoolInUse, match=f"pool {busy} still has 1 allocated") as refused:
        client.remove_pools([free, busy])
    assert refused.value.in_use == {busy: 1} and free not in str(refused.value)
    # Refused before any write: both pools exactly as they were, the free one too.
    assert {c: datastore.get(keyspace.pool_key(c)) for c in (free, busy)} == before
    assert client.host_blocks("host1") == ["198.18.0.0/26", "198.18.1.0/26"]
    # A pool that does not exist refuses the lot as well.
    with pytest.raises(NotFound, match="198.18.9.0/24"):
        client.remove_pools([free, "198.18.9.0/24"])
    assert datastore.get(keyspace.pool_key(free)) == before[free]
    # Both free: both go, with their blocks and affinities.
    assert client.release_ips([ip]) == set()
    assert client.remove_pools([free, busy]) == []
    for prefix in (keyspace.POOL_DIR, keyspace.IPAM_DIR):
        assert datastore.list(prefix)[0] == []


class AllocatingDatastore(Datastore):
    """A real client that, just before the first transaction writing pools (the removal
    disabling them), lets another client assign an address in `pool` - a `container add`
    racing the removal after its check."""

    def __init__(self, settings, other: Datastore, ip: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        self.other, self.ip, self.done = other, ip, False

    def txn_result(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        if not self.done and any(getattr(o, "key", "").startswith(keyspace.POOL_DIR)
                                 for o in success):
            self.done = True
            IPAMClient(self.other).assign_ip(self.ip, "racer", host="host2")
        return super().txn_result(compares, success, failure)


def test_remove_pools_refused_after_disabling_restores_every_pool(etcd_server,  # type: ignore[no-untyped-def]
                                                                 datastore) -> None:
    free, busy = "198.18.0.0/24", "fd00:1::/120"
    add_pool(datastore, free)
    add_pool(datastore, busy)
    racer = AllocatingDatastore(etcd_server.settings(), datastore, "fd00:1::7")
    try:
        with pytest.raises(PoolInUse, match="fd00:1::/120 still has 1 allocated"):
            IPAMClient(racer).remove_pools([free, busy])
    finally:
        racer.close()
    for cidr in (free, busy):  # back, enabled, as they were (in the one encoding)
        assert datastore.get_value(keyspace.pool_key(cidr)) == dumps({"cidr": cidr})
    assert IPAMClient(datastore).get_assignment_attributes("fd00:1::7").handle_id == "racer"  # type: ignore[union-attr]
    assert IPAMClient(datastore).auto_assign(1, 0, "after", host="h").ipv4s  # usable again


def test_same_handle_across_calls_and_large_ipv6_pool(datastore: Datastore) -> None:
    add_pool(datastore, "fd00:3::/64")
    client = IPAMClient(datastore)
    first = client.auto_assign(0, 2, "ctr", host="host1").ipv6s
    second = IPAMClient(datastore).auto_assign(0, 1, "ctr", host="host1").ipv6s
    (block,) = client.host_blocks("host1")
    assert block.endswith("/122") and len(set(first + second)) == 3
    assert read_handle(datastore, "ctr") == IPAMHandle("ctr", {block: 3})
    assert client.get_assignment_attributes("fd00:3::ffff") is None
    assert sorted(client.release_by_handle("ctr")) == sorted(first + second)


def test_every_ipam_value_has_one_byte_form(datastore: Datastore) -> None:
    """Blocks, handles and the config are written with libcalico.codec.dumps (sorted keys),
    so rewriting an unchanged value never changes its bytes."""
    from libcalico.ipam import check, repair

    add_pool(datastore, POOL4)
    add_pool(datastore, POOL6)
    client = IPAMClient(datastore)
    client.set_config(IPAMConfig(strict_affinity=False, auto_allocate_blocks=True))
    client.claim_block("host3", "198.18.0.128/26")
    client.assign_ip("198.18.0.200", "wl-b", {"z": "1", "a": "2"}, host="host2")
    client.auto_assign(3, 2, "wl-a", {"pod": "a", "node": "host1"}, host="host1")
    client.release_ips(["198.18.0.200"])
    right = datastore.get_value(keyspace.handle_key("wl-a"))
    datastore.put(keyspace.handle_key("wl-a"), json.dumps({"block": {"198.18.0.0/26": 9},
                                                          "id": "wl-a"}, indent=1))
    result = repair(datastore, check(datastore))  # rewrites it (the rest is in progress)
    assert result.handles_fixed == ["wl-a"]
    assert datastore.get_value(keyspace.handle_key("wl-a")) == right
    kvs, _ = datastore.list(keyspace.IPAM_DIR)
    assert {kv.key for kv in kvs} >= {keyspace.IPAM_CONFIG_KEY, keyspace.handle_key("wl-a")}
    for kv in kvs:
        if kv.value:  # (affinity keys are empty)
            assert kv.value == dumps(json.loads(kv.value)), kv.key


class MeddlingDatastore(Datastore):
    """A real client that rewrites every block a transaction compares just before the
    transaction runs, as a very fast competing allocator would."""

    def txn_result(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        for cmp in compares:
            if cmp.key.startswith(keyspace.BLOCK_DIR):
                kv = self.get(cmp.key)
                if kv is not None:
                    self.put(cmp.key, kv.value)
        return super().txn_result(compares, success, failure)


def test_bounded_retries_raise_conflict_and_change_nothing(etcd_server, datastore) -> None:  # type: ignore[no-untyped-def]
    from libcalico.errors import Conflict

    add_pool(datastore, POOL4)
    ip = assign(IPAMClient(datastore), 4, 1, "first", "host1")[0]
    meddler = MeddlingDatastore(etcd_server.settings())
    try:
        client = IPAMClient(meddler, retries=5)
        with pytest.raises(Conflict, match="gave up after 5 attempts"):
            client.auto_assign(1, 0, "second", host="host1")
        with pytest.raises(Conflict):
            client.release_ips([ip])
    finally:
        meddler.close()
    (block,) = IPAMClient(datastore).host_blocks("host1")
    stored = read_block(datastore, block)
    assert stored is not None and stored.allocated() == {ip: "first"}
    assert read_handle(datastore, "second") is None
