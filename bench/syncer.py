"""Benchmark: the syncer's snapshot and follow, against a bare etcd3 client, same run.

Starts a private etcd, writes N keys (20,000; --quick 2,000) under one prefix in batched
transactions, then measures, in alternating rounds:
- the syncer: from `Syncer.start()` until it is in sync with all N keys in the consumer's
  dict, then from the first of U updates (5,000; --quick 500, written by another client
  in batched transactions) until the consumer holds all of them;
- the baseline: a bare `etcd3` client doing `get_prefix` of the same prefix into a dict,
  then a `watch_prefix` loop from the next revision receiving the same kind of U updates.
Both consumers do the same work per key (decode, store in a dict). The figures are the
median over the rounds; ratio = syncer time / baseline time (goal: <= 1.5).
Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import etcd3

from bench.common import emit, median, parser, rate, ratio, timed
from libcalico.datastore import GRPC_OPTIONS, Datastore, Put
from libcalico.syncer import Syncer, SyncStatus, Update
from netsim.etcd import EtcdServer

PREFIX = "/calico/bench/v1/host/"
TXN_BATCH = 100  # etcd's default --max-txn-ops is 128
WRITERS = 4
GOAL_MAX_RATIO = 1.5
DEADLINE = 120.0


def key(i: int) -> str:
    return f"{PREFIX}host{i % 50:02d}/workload/docker/w{i:06d}/endpoint/eth0"


def value(i: int, generation: int) -> str:
    """An endpoint-shaped JSON value (~250 bytes)."""
    return json.dumps({
        "state": "active", "name": f"cali{i:011d}", "mac": "ee:ee:ee:ee:ee:ee",
        "profile_ids": [f"profile-{i % 100}"],
        "ipv4_nets": [f"198.18.{i // 256 % 256}.{i % 256}/32"],
        "ipv6_nets": [], "labels": {"app": f"app-{i % 20}", "generation": str(generation)},
    })


def write_batched(store: Datastore, items: Sequence[tuple[str, str]]) -> None:
    """Write in transactions of TXN_BATCH puts, WRITERS at a time (etcd batches their
    commits), so writing is quick and the consumers, not the disk, set the pace."""
    batches = [items[i:i + TXN_BATCH] for i in range(0, len(items), TXN_BATCH)]
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="bench-writer") as pool:
        for ok in pool.map(lambda b: store.txn([], [Put(k, v) for k, v in b]), batches):
            if not ok:
                raise RuntimeError("an unconditional write transaction failed")


def update_items(keys: int, updates: int, generation: int) -> list[tuple[str, str]]:
    """`updates` overwrites spread over the existing keys (the key count stays `keys`)."""
    step = max(1, keys // updates)
    return [(key((j * step) % keys), value(j, generation)) for j in range(updates)]


class _DictConsumer:
    """The syncer's consumer: applies updates to a dict, signals when it holds `target`."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.delivered = 0
        self.target = 0
        self.reached = threading.Event()

    def expect(self, delivered: int) -> None:
        self.target = delivered
        self.reached.clear()
        if self.delivered >= delivered:
            self.reached.set()

    def on_status(self, status: SyncStatus) -> None:
        pass

    def on_updates(self, updates: Sequence[Update]) -> None:
        data = self.data
        for u in updates:
            if u.value is None:
                data.pop(u.key, None)
            else:
                data[u.key] = u.value
        self.delivered += len(updates)
        if self.delivered >= self.target:
            self.reached.set()


def measure_syncer(server: EtcdServer, writer: Datastore, keys: int,
                   updates: list[tuple[str, str]]) -> dict[str, float]:
    store = server.client()
    consumer = _DictConsumer()
    consumer.expect(keys)
    syncer = Syncer(store, [PREFIX], consumer, name="bench-syncer")
    try:
        with timed() as snap:
            syncer.start()
            if not (syncer.wait_in_sync(DEADLINE) and consumer.reached.wait(DEADLINE)):
                raise RuntimeError("syncer did not reach in-sync")
        if len(consumer.data) != keys:
            raise RuntimeError(f"syncer snapshot held {len(consumer.data)} keys, not {keys}")
        consumer.expect(keys + len(updates))
        with timed() as follow:
            write_batched(writer, updates)
            if not consumer.reached.wait(DEADLINE):
                raise RuntimeError("syncer did not deliver every update")
        if syncer.resyncs != 1:
            raise RuntimeError(f"syncer resynced {syncer.resyncs} times during the benchmark")
    finally:
        syncer.stop()
        store.close()
    return {"snapshot_s": snap.seconds, "updates_s": follow.seconds}


def measure_bare(server: EtcdServer, writer: Datastore, keys: int,
                 updates: list[tuple[str, str]]) -> dict[str, float]:
    client = etcd3.client(host="127.0.0.1", port=server.port, timeout=30,
                          grpc_options=GRPC_OPTIONS)
    data: dict[str, str] = {}
    try:
        with timed() as snap:
            resp = client.get_prefix_response(PREFIX)
            for kv in resp.kvs:
                data[kv.key.decode()] = kv.value.decode()
            revision = resp.header.revision
        if len(data) != keys:
            raise RuntimeError(f"bare snapshot held {len(data)} keys, not {keys}")
        events, cancel = client.watch_prefix(PREFIX, start_revision=revision + 1)
        received = 0
        done = threading.Event()

        def follow() -> None:
            nonlocal received
            for ev in events:
                if isinstance(ev, etcd3.events.DeleteEvent):
                    data.pop(ev.key.decode(), None)
                else:
                    data[ev.key.decode()] = ev.value.decode()
                received += 1
                if received >= len(updates):
                    done.set()
                    return

        thread = threading.Thread(target=follow, name="bench-bare-watch", daemon=True)
        thread.start()
        try:
            with timed() as follow_time:
                write_batched(writer, updates)
                if not done.wait(DEADLINE):
                    raise RuntimeError("bare watch did not receive every update")
        finally:
            cancel()
            thread.join(10)
    finally:
        client.close()
    return {"snapshot_s": snap.seconds, "updates_s": follow_time.seconds}


def summarise(rounds: list[dict[str, float]], keys: int, updates: int) -> dict[str, Any]:
    snapshot = median([r["snapshot_s"] for r in rounds])
    follow = median([r["updates_s"] for r in rounds])
    total = median([r["snapshot_s"] + r["updates_s"] for r in rounds])
    return {
        "snapshot_s": round(snapshot, 4), "snapshot_keys_per_s": rate(keys, snapshot),
        "updates_s": round(follow, 4), "updates_per_s": rate(updates, follow),
        "total_s": round(total, 4), "keys_per_s": rate(keys + updates, total),
        "rounds_total_s": [round(r["snapshot_s"] + r["updates_s"], 4) for r in rounds],
    }


def _quiet_etcd3_watch_threads() -> None:
    """etcd3's watcher thread re-opens its stream forever and dies noisily once the
    baseline closes its client; that is the library's behaviour, not a result."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name.startswith("etcd3_watch"):
            return
        default(args)

    threading.excepthook = hook


def run(keys: int, updates: int, rounds: int) -> dict[str, Any]:
    # etcd's data goes on tmpfs when there is one (see scratch_dir): the disk's fsync
    # latency is not what is measured, and it is shared with whatever else is running.
    server = EtcdServer()
    try:
        server.start()
    except BaseException:
        server.cleanup()
        raise
    writer = server.client(timeout=30)
    try:
        with timed() as load:
            write_batched(writer, [(key(i), value(i, 0)) for i in range(keys)])
        results: dict[str, list[dict[str, float]]] = {"syncer": [], "baseline": []}
        measures: dict[str, Callable[..., dict[str, float]]] = {
            "syncer": measure_syncer, "baseline": measure_bare}
        generation = 0
        for r in range(rounds):
            order = ["syncer", "baseline"] if r % 2 == 0 else ["baseline", "syncer"]
            for name in order:
                generation += 1
                items = update_items(keys, updates, generation)
                results[name].append(measures[name](server, writer, keys, items))
    finally:
        writer.close()
        server.cleanup()
    syncer = summarise(results["syncer"], keys, updates)
    bare = summarise(results["baseline"], keys, updates)
    total_ratio = ratio(syncer["total_s"], bare["total_s"])
    return {
        "benchmark": "syncer",
        "keys": keys, "updates": updates, "rounds": rounds,
        "load_s": round(load.seconds, 3),
        "syncer": syncer,
        "baseline": {"name": "etcd3 get_prefix + watch_prefix", **bare},
        "ratio": total_ratio,
        "ratio_snapshot": ratio(syncer["snapshot_s"], bare["snapshot_s"]),
        "ratio_updates": ratio(syncer["updates_s"], bare["updates_s"]),
        "goal": {"max_ratio": GOAL_MAX_RATIO},
        "goal_met": total_ratio <= GOAL_MAX_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else "syncer benchmark")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each (default 5)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # fail-over notices while etcd starts
    _quiet_etcd3_watch_threads()
    keys, updates = (2000, 500) if args.quick else (20000, 5000)
    result = run(keys, updates, args.rounds)
    result["quick"] = args.quick
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
