"""The one IPAM write path: every change IPAM makes in etcd is a transaction built here.

Owns: `Committer`, which turns an intended change into ONE etcd transaction guarded by the
mod_revisions the change was computed from, runs it, and brings the reader's caches
(`libcalico.ipam._state.IPAMState`) up to date with the outcome either way:
- `block`: write (or delete) one allocation block together with the handles whose counts
  it changes, and optionally create or delete a host's affinity key for it; compares the
  block's, each handle's and (optionally) the pool's revision. A lost compare returns the
  current block and handles in the same round trip (the failure branch reads them);
- `affinity` / `drop_affinities`: a host's affinity keys on their own;
- `handle`: rewrite (or delete) a handle from the blocks it was counted from;
- `pools`: write and delete several pool keys in one transaction (disable, restore, remove);
- `config`: the IPAM config key;
and `retry`, the bounded compare-and-swap loop every IPAM operation runs its steps in
(`libcalico.retry.retry_cas` with this client's budget). Values are encoded with
`libcalico.codec.dumps`, so one record always has one byte form.

Leaves to others: what to write - allocation (`client`), releases (`release`), pool-wide
work (`pools`), repair (`check`); reads and caches (`_state`); the block arithmetic
(`block`); key names (`libcalico.keyspace`); the etcd calls (`libcalico.datastore`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from libcalico import keyspace
from libcalico.codec import dumps
from libcalico.datastore import Datastore, Delete, Get, ModRevisionIs, Op, Put
from libcalico.ipam._state import IPAMState, Versioned, block_key, decode_handle, net_of, pool_key
from libcalico.ipam.block import AllocationBlock, IPAMHandle
from libcalico.model import IPAMConfig, IPPool
from libcalico.retry import retry_cas

_log = logging.getLogger(__name__)

T = TypeVar("T")

# Attempts per compare-and-swap loop before `Conflict` (as Calico's IPAM).
RETRIES = 100
# etcd refuses a transaction of more than 128 operations: deletes of loose keys are batched.
_MAX_OPS = 100

HandleStates = dict[str, Versioned[IPAMHandle]]
"""Known states of handles by id (a missing id: assumed absent). `Committer.block` updates
it with the outcome of each transaction, so a retry computes from current values."""


class Committer:
    """Runs IPAM's transactions on one datastore client and keeps `state`'s caches true.

    Stateless apart from `state` (the caches it updates) and `retries` (the budget of
    `retry`). Not thread-safe, like the client that owns it."""

    def __init__(self, state: IPAMState, retries: int = RETRIES) -> None:
        self.state = state
        self.retries = retries

    @property
    def store(self) -> Datastore:
        return self.state.store

    def retry(self, what: str, step: Callable[[], T | None]) -> T:
        """Run `step` (read, compute, commit) until it returns non-None, at most `retries`
        times; then `Conflict` naming `what`."""
        return retry_cas(what, step, self.retries)

    # --- blocks and handles ------------------------------------------------------------------

    def block(self, cidr: str, revision: int, new: AllocationBlock | None, *,
              handles: HandleStates | None = None, deltas: Mapping[str, int] | None = None,
              pool: Versioned[IPPool] | None = None, claim_for: str | None = None,
              unclaim_for: str | None = None) -> bool:
        """Write block `cidr` as `new` (None: delete it) if it is still at `revision`
        (0: absent), changing each handle in `deltas` by its count in the same transaction.

        `handles` holds the handles' known states (a missing one is assumed absent; a
        handle that drops to zero addresses is deleted). `pool` (the pool's entry the
        change was computed from) is compared too, so a pool disabled, edited or removed
        meanwhile stops the write. `claim_for` creates that host's affinity key for the
        block; `unclaim_for` deletes it. Returns whether it was written; either way the
        block, affinity and `handles` caches hold what etcd holds now.
        """
        bkey = block_key(cidr)
        compares = [ModRevisionIs(bkey, revision)]
        ops: list[Op] = [Delete(bkey) if new is None else Put(bkey, dumps(new.to_json()))]
        gets = [Get(bkey)]
        if claim_for is not None:
            ops.append(Put(keyspace.affinity_key(claim_for, cidr), ""))
        if unclaim_for is not None:
            ops.append(Delete(keyspace.affinity_key(unclaim_for, cidr)))
        if pool is not None:
            assert pool.value is not None
            compares.append(ModRevisionIs(pool_key(pool.value.cidr), pool.revision))
        handles = {} if handles is None else handles
        deltas = deltas or {}
        written: dict[str, IPAMHandle | None] = {}
        for handle_id, delta in deltas.items():
            hkey = keyspace.handle_key(handle_id)
            known = handles.get(handle_id, Versioned(None, 0))
            handle = known.value.copy() if known.value else IPAMHandle(handle_id)
            handle.add(cidr, delta)
            compares.append(ModRevisionIs(hkey, known.revision))
            gets.append(Get(hkey))
            if handle.is_empty():
                if known.revision:
                    ops.append(Delete(hkey))
                written[handle_id] = None
            else:
                ops.append(Put(hkey, dumps(handle.to_json())))
                written[handle_id] = handle
        result = self.store.txn_result(compares, ops, gets)
        if result.succeeded:
            self.state.note_block(cidr, Versioned(None, 0) if new is None
                                  else Versioned(new, result.revision))
            if claim_for is not None:
                self.state.add_affinity(claim_for, cidr)
            if unclaim_for is not None:
                self.state.drop_affinity(unclaim_for, cidr)
            for handle_id, value in written.items():
                handles[handle_id] = Versioned(value, result.revision if value else 0)
            return True
        # Lost: learn the current block and handles from the failure branch's reads. If
        # neither changed, the pool did (disabled, removed, edited): re-list the pools.
        kv = result.gets[bkey]
        unchanged = (kv.mod_revision if kv else 0) == revision
        self.state.note_block_kv(cidr, kv)
        for handle_id in deltas:
            kv = result.gets[keyspace.handle_key(handle_id)]
            unchanged &= (kv.mod_revision if kv else 0) == handles.get(
                handle_id, Versioned(None, 0)).revision
            handles[handle_id] = decode_handle(kv)
        if unchanged and pool is not None and pool.value is not None:
            self.state.pool_map(net_of(pool.value.cidr).version, fresh=True)
        return False

    def handle(self, handle_id: str, revision: int, counts: Mapping[str, int],
               blocks: Mapping[str, int]) -> bool:
        """Set handle `handle_id` (at `revision`, 0: absent) to `counts` (block CIDR ->
        addresses; empty: delete it), guarded by the revision of every block in `blocks`
        (CIDR -> revision) the counts were taken from. Returns whether it was written."""
        hkey = keyspace.handle_key(handle_id)
        compares = [ModRevisionIs(hkey, revision)]
        compares += [ModRevisionIs(block_key(c), r) for c, r in sorted(blocks.items())]
        op: Op = (Put(hkey, dumps(IPAMHandle(handle_id, dict(counts)).to_json())) if counts
                  else Delete(hkey))
        return self.store.txn(compares, [op])

    # --- affinities ----------------------------------------------------------------------------

    def affinity(self, host: str, cidr: str) -> None:
        """(Re)write `host`'s affinity key for block `cidr`, whose block names it already."""
        self.store.put(keyspace.affinity_key(host, cidr), "")
        self.state.add_affinity(host, cidr)

    def drop_affinities(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Delete the affinity keys of (host, block CIDR) pairs whose block does not name
        the host (stale or dangling keys), in transactions of at most 100 deletes."""
        todo = list(pairs)
        for start in range(0, len(todo), _MAX_OPS):
            chunk = todo[start:start + _MAX_OPS]
            self.store.txn([], [Delete(keyspace.affinity_key(h, c)) for h, c in chunk])
            for host, cidr in chunk:
                self.state.drop_affinity(host, cidr)

    # --- pools and config ---------------------------------------------------------------------

    def pools(self, changes: Mapping[str, tuple[int, IPPool | None]]) -> int | None:
        """Change several pools in one transaction: pool CIDR -> (the revision it must
        still have, its new value or None to delete it). Returns the revision written at,
        or None when some pool had changed (nothing was written)."""
        if len(changes) > _MAX_OPS:
            raise ValueError(f"at most {_MAX_OPS} pools change in one transaction")
        compares = [ModRevisionIs(pool_key(c), r) for c, (r, _) in sorted(changes.items())]
        ops: list[Op] = [Delete(pool_key(c)) if p is None else Put(pool_key(c), dumps(p.to_json()))
                         for c, (_, p) in sorted(changes.items())]
        result = self.store.txn_result(compares, ops)
        for version in sorted({net_of(c).version for c in changes}):
            self.state.pool_map(version, fresh=True)
        return result.revision if result.succeeded else None

    def config(self, config: IPAMConfig) -> None:
        """Write the IPAM config (new blocks take `strict_affinity` from it)."""
        self.store.put(keyspace.IPAM_CONFIG_KEY, dumps(config.to_json()))
