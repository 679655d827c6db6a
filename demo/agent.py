"""A stand-alone script the demo runs inside workload namespaces (no project imports).

Owns two verbs:
  agent.py serve PORT...   TCP listeners (IPv4 and IPv6, one dual-stack socket per port)
                           that answer "ok"; prints "ready" once all of them listen.
  agent.py probe JSON      runs every check of JSON (a list of [id, kind, address, port])
                           concurrently and prints {id: true|false} as JSON. kind is
                           "ping" (one echo request, 1 s) or "tcp" (connect and read "ok").

Leaves to others: which checks to run and what the results mean (`demo.matrix`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

TIMEOUT_S = 1.0


def serve(ports: list[int]) -> None:
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.listen(128)
        socks.append(s)
    threads = [threading.Thread(target=_accept_loop, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


def _accept_loop(s: socket.socket) -> None:
    while True:
        conn, _ = s.accept()
        try:
            conn.sendall(b"ok")
        except OSError:
            pass
        finally:
            conn.close()


def check(kind: str, address: str, port: int) -> bool:
    if kind == "ping":
        cmd = ["ping", "-n", "-q", "-c", "1", "-W", str(int(TIMEOUT_S)), address]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              check=False).returncode == 0
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect((address, port))
            return s.recv(16) == b"ok"
    except OSError:
        return False


def probe(checks: list[list]) -> dict[str, bool]:
    with ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
        results = pool.map(lambda c: check(c[1], c[2], int(c[3])), checks)
        return {c[0]: ok for c, ok in zip(checks, results, strict=True)}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve([int(p) for p in argv[1:]])
        return 0
    if len(argv) == 2 and argv[0] == "probe":
        print(json.dumps(probe(json.loads(argv[1]))))
        return 0
    print("usage: agent.py serve PORT... | agent.py probe JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
