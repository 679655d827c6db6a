"""Pool-wide IPAM operations: usage, explicit block claims, IPAM config, pool removal.

Owns: `usage` (per pool and per block), `claim_block` / `release_affinity` (a host's
affinity to one block), the IPAM config key, and `remove_pool`, which first disables the
pool (so no new block can appear in it: every allocation compares the pool's revision,
and disabled pools get no new blocks), then refuses if addresses are allocated unless
forced, in which case it releases them block by block (each release one transaction with
its handles), deletes the emptied blocks and affinities, and finally the pool key.

Leaves to others: the single-block transactions (`IPAMClient._commit`), the block logic
(`libcalico.ipam.block`), pool validation (`libcalico.model.IPPool`). These functions are
exposed as methods of `IPAMClient`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libcalico import keyspace
from libcalico.datastore import Delete, ModRevisionIs, Op, Put
from libcalico.errors import AlreadyExists, CalicoError, Conflict, NotFound, ValidationError
from libcalico.ipam._state import decode_pool, encode, net_of, within
from libcalico.ipam.block import AllocationBlock
from libcalico.model import IPAMConfig

if TYPE_CHECKING:
    from libcalico.ipam.client import IPAMClient


class PoolInUse(CalicoError):
    """A pool still has allocated addresses and removal was not forced."""


@dataclass(frozen=True)
class BlockUsage:
    cidr: str
    host: str | None
    size: int
    allocated: int


@dataclass(frozen=True)
class PoolUsage:
    cidr: str
    size: int
    allocated: int
    disabled: bool
    blocks: tuple[BlockUsage, ...]

    @property
    def free(self) -> int:
        return self.size - self.allocated


def usage(client: IPAMClient) -> list[PoolUsage]:
    """Allocated addresses per pool and per block, from one consistent read."""
    kvs, _ = client.store.list_many([keyspace.pool_dir(4), keyspace.pool_dir(6),
                                     keyspace.block_dir(4), keyspace.block_dir(6)])
    pools = []
    blocks: list[BlockUsage] = []
    for kv in kvs:
        parsed = keyspace.parse_key(kv.key)
        if isinstance(parsed, keyspace.PoolKey):
            pool = decode_pool(kv).value
            if pool is not None:
                pools.append(pool)
        elif isinstance(parsed, keyspace.BlockKey):
            block = client.state.note_block_kv(parsed.cidr, kv).value
            if block is not None:
                blocks.append(BlockUsage(block.cidr, block.host, block.size,
                                         block.allocated_count))
    out = []
    for pool in sorted(pools, key=lambda p: (net_of(p.cidr).version, net_of(p.cidr))):
        net = net_of(pool.cidr)
        mine = tuple(b for b in blocks if within(b.cidr, net))
        out.append(PoolUsage(pool.cidr, net.num_addresses, sum(b.allocated for b in mine),
                             pool.disabled, mine))
    return out


def _block_net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ValidationError("block", cidr, "not a block CIDR (host bits set?)") from None


def claim_block(client: IPAMClient, host: str, cidr: str) -> None:
    """Make `host` affine to block `cidr` (creating the block if needed). Raises
    `AlreadyExists` when another host holds it."""
    host = client._host(host)
    net = _block_net(cidr)
    cidr = str(net)
    for _ in range(client.retries):
        pool = client.state.pool_containing(net, fresh=True)
        if pool is None or pool.value is None:
            raise ValidationError("block", cidr, "is not in any IP pool")
        if net.prefixlen != pool.value.block_size:
            raise ValidationError("block", cidr, f"pool {pool.value.cidr} uses "
                                  f"/{pool.value.block_size} blocks")
        if pool.value.disabled:
            raise ValidationError("block", cidr, f"pool {pool.value.cidr} is disabled")
        entry = client.state.read_block(cidr)
        akey = keyspace.affinity_key(host, cidr)
        if entry.value is None:
            if entry.revision:
                raise CalicoError(f"block {cidr} holds invalid data; run the IPAM check")
            new = AllocationBlock.new(cidr, host, client.state.config().strict_affinity)
        elif entry.value.host == host:
            client.store.put(akey, "")
            client.state.add_affinity(host, cidr)
            return
        elif entry.value.host is not None:
            raise AlreadyExists(f"block {cidr} is already claimed by host {entry.value.host}")
        else:
            new = entry.value.copy()
            new.affinity = f"host:{host}"
        result = client._commit(cidr, entry.revision, new, {}, {},
                                pool=(pool.value.cidr, pool.revision), extra_ops=[Put(akey, "")])
        if result.succeeded:
            client.state.add_affinity(host, cidr)
            return
    raise Conflict(f"block {cidr} kept changing; gave up after {client.retries} attempts")


def release_affinity(client: IPAMClient, host: str, cidr: str) -> None:
    """Drop `host`'s affinity to block `cidr`: an empty block is deleted, a block with
    addresses stays (other hosts may then borrow from it)."""
    host = client._host(host)
    cidr = str(_block_net(cidr))
    akey = keyspace.affinity_key(host, cidr)
    for _ in range(client.retries):
        entry = client.state.read_block(cidr)
        block = entry.value
        if block is None or block.host != host:
            client.store.delete(akey)  # a stale affinity key, if any
            client.state.drop_affinity(host, cidr)
            return
        if block.is_empty():
            result = client._commit(cidr, entry.revision, None, {}, {}, old_host=host)
        else:
            new = block.copy()
            new.affinity = None
            result = client._commit(cidr, entry.revision, new, {}, {},
                                    extra_ops=[Delete(akey)])
        if result.succeeded:
            client.state.drop_affinity(host, cidr)
            return
    raise Conflict(f"block {cidr} kept changing; gave up after {client.retries} attempts")


def get_config(client: IPAMClient) -> IPAMConfig:
    return client.state.config()


def set_config(client: IPAMClient, config: IPAMConfig) -> None:
    """Write the IPAM config. New blocks take `strict_affinity` from it; existing blocks
    keep the flag they were created with."""
    client.store.put(keyspace.IPAM_CONFIG_KEY, encode(config.to_json()))


def remove_pool(client: IPAMClient, cidr: str, force: bool = False) -> list[str]:
    """Remove a pool. Refused (`PoolInUse`) while addresses are allocated in it unless
    `force`, which releases them; returns the addresses released."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValidationError("pool", cidr, "not a valid CIDR") from None
    pkey = keyspace.pool_key(str(net))
    store = client.store
    kv = store.get(pkey)
    if kv is None:
        raise NotFound(f"no IP pool {net}")
    pool = decode_pool(kv).value
    original, revision = kv.value, kv.mod_revision
    disabled_by_us = False
    if pool is not None and not pool.disabled:
        text = encode(dataclasses.replace(pool, disabled=True).to_json())
        result = store.txn_result([ModRevisionIs(pkey, revision)], [Put(pkey, text)])
        if not result.succeeded:
            raise Conflict(f"pool {net} changed while being removed; try again")
        revision, disabled_by_us = result.revision, True
    client.state.pool_map(net.version, fresh=True)
    released: list[str] = []
    for _ in range(client.retries):
        blocks = {c: e for c, e in client.state.list_blocks(net.version).items()
                  if within(c, net)}
        allocated = {c: e.value.allocated() for c, e in blocks.items()
                     if e.value is not None and e.value.allocated_count}
        invalid = [c for c, e in blocks.items() if e.value is None]
        if (allocated or invalid) and not force:
            if disabled_by_us:
                store.cas(pkey, original, revision)
            count = sum(len(a) for a in allocated.values())
            raise PoolInUse(f"pool {net} still has {count} allocated addresses"
                            + (f" and {len(invalid)} unreadable blocks" if invalid else "")
                            + "; release them first or remove the pool with force")
        for block_cidr, ips in allocated.items():
            unknown = client._release_in_block(block_cidr, sorted(ips))
            released += [ip for ip in ips if ip not in unknown]
        if allocated:
            continue  # re-list: emptied blocks are gone now
        for block_cidr, entry in blocks.items():
            host = entry.value.host if entry.value else None
            client._commit(block_cidr, entry.revision, None, {}, {}, old_host=host)
        if blocks:
            continue
        dangling: list[Op] = []  # affinity keys left without their block
        kvs, _ = store.list(keyspace.AFFINITY_DIR)
        for akv in kvs:
            parsed = keyspace.parse_key(akv.key)
            if isinstance(parsed, keyspace.AffinityKey) and within(parsed.cidr, net):
                dangling.append(Delete(akv.key))
                client.state.drop_affinity(parsed.hostname, parsed.cidr)
        for start in range(0, len(dangling), 100):
            store.txn([], dangling[start:start + 100])
        if store.txn([ModRevisionIs(pkey, revision)], [Delete(pkey)]):
            client.state.pool_map(net.version, fresh=True)
            return released
        raise Conflict(f"pool {net} changed while being removed; try again")
    raise Conflict(f"pool {net} kept changing; gave up after {client.retries} attempts")
