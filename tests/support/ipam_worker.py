"""A separate IPAM client process for the concurrency and crash tests.

Run as `python -m tests.support.ipam_worker --count N --host H --prefix P [--endpoints]`
with ETCD_ENDPOINTS set. It auto-assigns N single IPv4 addresses with handles `P-<i>` for
host H, printing one line `<ip> <handle>` per assignment as soon as it has it (so a
parent can kill it at any moment); with `--endpoints` it then writes a workload endpoint
using the address (so what it leaks when killed is exactly the allocations it had not yet
written an endpoint for). Its own Datastore client; exits 0 when done.
"""

from __future__ import annotations

import argparse
import json
import sys

from libcalico import keyspace
from libcalico.datastore import Datastore, EtcdSettings
from libcalico.ipam import IPAMClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--endpoints", action="store_true")
    args = parser.parse_args(argv)
    store = Datastore(EtcdSettings.from_env(timeout=30.0))
    client = IPAMClient(store)
    for i in range(args.count):
        handle = f"{args.prefix}-{i}"
        result = client.auto_assign(1, 0, handle, {"worker": args.prefix}, host=args.host)
        if not result.ipv4s:
            print(f"EXHAUSTED {result.messages}", flush=True)
            return 1
        ip = result.ipv4s[0]
        print(f"{ip} {handle}", flush=True)
        if args.endpoints:
            key = keyspace.workload_endpoint_key(args.host, "test", handle, "eth0")
            store.put(key, json.dumps({"state": "active", "name": "cali0123456789a",
                                       "profile_ids": [], "ipv4_nets": [f"{ip}/32"],
                                       "ipv6_nets": []}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
