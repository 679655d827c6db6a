"""Benchmark: the syncer's snapshot and follow, against a bare etcd3 client, same run.

Starts a private etcd (data on tmpfs), writes N keys (20,000; --quick 2,000) under one
prefix in batched transactions, then measures, in alternating rounds, two phases:
- snapshot: the syncer from `Syncer.start()` until it is in sync with all N keys in the
  consumer's dict; the baseline, a bare `etcd3` client, from `get_prefix_response` of
  the same prefix until the same dict is filled.
- updates: both follow a watch from the snapshot's revision + 1. The consumer is held
  (blocked on a marker update), U updates (5,000; --quick 500) are written by another
  client in batched transactions while nobody consumes (the writer's time is reported
  apart, `writer_s`, and is not in either clock), then the consumer is released; clock
  from the release until the consumer holds all U. The baseline reads one Watch stream
  with etcd3's gRPC stub in its consumer thread (as the syncer does; etcd3's
  `watch_prefix` would decode the backlog in a helper thread while held, outside the
  clock), held and released the same way.
Both consumers do the same work per key (decode, store in a dict). The figures are the
median over the rounds; each phase's ratio = syncer / baseline, and each phase has its
goal (<= 1.5); `ratio` is the worse of the two.
Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import etcd3
import grpc
from etcd3 import etcdrpc

from bench.common import emit, median, parser, rate, ratio, timed
from libcalico.datastore import GRPC_OPTIONS, Datastore, Put
from libcalico.syncer import Syncer, SyncStatus, Update
from netsim.etcd import EtcdServer

PREFIX = "/calico/bench/v1/host/"
TXN_BATCH = 100  # etcd's default --max-txn-ops is 128
WRITERS = 4
GOAL_MAX_RATIO = 1.5  # for each phase
DEADLINE = 120.0
MARKER_KEY = 0  # key(0) carries the marker value that holds the consumer


def marker_value(generation: int) -> str:
    return json.dumps({"bench-marker": generation})


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


class _Hold:
    """Holds a consumer when it meets the marker value, until released."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.held = threading.Event()
        self.release = threading.Event()

    def check(self, value: str | None) -> None:
        if value == self.marker:
            self.held.set()
            if not self.release.wait(DEADLINE):
                raise RuntimeError("consumer held too long")


class _DictConsumer:
    """The syncer's consumer: applies updates to a dict, signals when it holds `target`;
    holds (blocks) after applying a batch that holds the marker, until released."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.delivered = 0
        self.target = 0
        self.reached = threading.Event()
        self.hold: _Hold | None = None

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
        hold = self.hold
        if hold is not None:
            for u in updates:
                hold.check(u.value)


def measure_syncer(server: EtcdServer, writer: Datastore, keys: int,
                   updates: list[tuple[str, str]], generation: int) -> dict[str, float]:
    store = server.client()
    consumer = _DictConsumer()
    consumer.expect(keys)
    syncer = Syncer(store, [PREFIX], consumer, name="bench-syncer")
    hold = _Hold(marker_value(generation))
    try:
        with timed() as snap:
            syncer.start()
            if not (syncer.wait_in_sync(DEADLINE) and consumer.reached.wait(DEADLINE)):
                raise RuntimeError("syncer did not reach in-sync")
        if len(consumer.data) != keys:
            raise RuntimeError(f"syncer snapshot held {len(consumer.data)} keys, not {keys}")
        consumer.hold = hold
        writer.put(key(MARKER_KEY), hold.marker)
        if not hold.held.wait(DEADLINE):
            raise RuntimeError("the syncer never delivered the marker")
        consumer.expect(keys + 1 + len(updates))
        with timed() as writing:
            write_batched(writer, updates)
        with timed() as follow:
            hold.release.set()
            if not consumer.reached.wait(DEADLINE):
                raise RuntimeError("syncer did not deliver every update")
        if syncer.resyncs != 1:
            raise RuntimeError(f"syncer resynced {syncer.resyncs} times during the benchmark")
    finally:
        hold.release.set()
        syncer.stop()
        store.close()
    return {"snapshot_s": snap.seconds, "updates_s": follow.seconds,
            "writer_s": writing.seconds}


def measure_bare(server: EtcdServer, writer: Datastore, keys: int,
                 updates: list[tuple[str, str]], generation: int) -> dict[str, float]:
    client = etcd3.client(host="127.0.0.1", port=server.port, timeout=30,
                          grpc_options=GRPC_OPTIONS)
    data: dict[str, str] = {}
    hold = _Hold(marker_value(generation))
    try:
        with timed() as snap:
            resp = client.get_prefix_response(PREFIX)
            for kv in resp.kvs:
                data[kv.key.decode()] = kv.value.decode()
            revision = resp.header.revision
        if len(data) != keys:
            raise RuntimeError(f"bare snapshot held {len(data)} keys, not {keys}")
        # The watch read in the consumer's own thread straight from etcd3's gRPC stub, so
        # that a held consumer leaves the backlog undecoded, as the syncer's does.
        stop = threading.Event()

        def requests() -> Iterator[Any]:
            start = PREFIX.encode()
            yield etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
                key=start, range_end=start[:-1] + bytes([start[-1] + 1]),
                start_revision=revision + 1))
            stop.wait()

        call = etcdrpc.WatchStub(client.channel).Watch(requests())
        received = 0
        done = threading.Event()

        def follow() -> None:
            nonlocal received
            try:
                for rs in call:
                    for ev in rs.events:
                        name = ev.kv.key.decode()
                        value = None if ev.type == 1 else ev.kv.value.decode()
                        if value is None:
                            data.pop(name, None)
                        else:
                            data[name] = value
                        received += 1
                        if received >= len(updates) + 1:
                            done.set()
                            return
                        hold.check(value)
            except grpc.RpcError:
                if not stop.is_set():
                    raise

        thread = threading.Thread(target=follow, name="bench-bare-watch", daemon=True)
        thread.start()
        try:
            writer.put(key(MARKER_KEY), hold.marker)
            if not hold.held.wait(DEADLINE):
                raise RuntimeError("the bare watch never received the marker")
            with timed() as writing:
                write_batched(writer, updates)
            with timed() as follow_time:
                hold.release.set()
                if not done.wait(DEADLINE):
                    raise RuntimeError("bare watch did not receive every update")
        finally:
            hold.release.set()
            stop.set()
            call.cancel()
            thread.join(10)
    finally:
        client.close()
    return {"snapshot_s": snap.seconds, "updates_s": follow_time.seconds,
            "writer_s": writing.seconds}


def summarise(rounds: list[dict[str, float]], keys: int, updates: int) -> dict[str, Any]:
    snapshot = median([r["snapshot_s"] for r in rounds])
    follow = median([r["updates_s"] for r in rounds])
    total = median([r["snapshot_s"] + r["updates_s"] for r in rounds])
    return {
        "snapshot_s": round(snapshot, 4), "snapshot_keys_per_s": rate(keys, snapshot),
        "updates_s": round(follow, 4), "updates_per_s": rate(updates, follow),
        "total_s": round(total, 4), "keys_per_s": rate(keys + updates, total),
        "writer_s": round(median([r["writer_s"] for r in rounds]), 4),
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
                results[name].append(measures[name](server, writer, keys, items, generation))
    finally:
        writer.close()
        server.cleanup()
    syncer = summarise(results["syncer"], keys, updates)
    bare = summarise(results["baseline"], keys, updates)
    ratios = {"snapshot": ratio(syncer["snapshot_s"], bare["snapshot_s"]),
              "updates": ratio(syncer["updates_s"], bare["updates_s"])}
    met = {phase: r <= GOAL_MAX_RATIO for phase, r in ratios.items()}
    return {
        "benchmark": "syncer",
        "keys": keys, "updates": updates, "rounds": rounds,
        "load_s": round(load.seconds, 3),
        "clock": {
            "snapshot": "syncer: Syncer.start() to in-sync with all keys in the consumer's "
                        "dict; baseline: get_prefix_response call to the dict filled",
            "updates": "from releasing the held consumer (the updates already committed, "
                       "written while nobody consumed) until it holds all of them; the "
                       "writer's own time is writer_s, outside the clock"},
        "syncer": syncer,
        "baseline": {"name": "a bare etcd3 client: get_prefix_response of the same prefix, "
                             "then one Watch stream from the next revision read with "
                             "etcd3's gRPC stub in the consumer's thread, same dict work",
                     **bare},
        "ratio": max(ratios.values()),  # the worse phase
        "ratio_snapshot": ratios["snapshot"],
        "ratio_updates": ratios["updates"],
        "ratio_total": ratio(syncer["total_s"], bare["total_s"]),
        "goal": {"max_ratio": GOAL_MAX_RATIO, "applies_to": "each phase"},
        "goals_met": met,
        "goal_met": all(met.values()),
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
