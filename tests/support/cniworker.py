"""One long-lived process that makes CNI calls through the plugin's own code path,
for the CNI fuzzer's long run (tests/fuzz/test_fuzz_cni.py).

Run as `nsenter --net=/run/netns/HOST python -m tests.support.cniworker` (so it sits in
the simulated host's namespace, where a runtime would run the plugin). It reads one JSON
object per line on stdin: `{"plugin": "calico", "env": {...}, "stdin": "<base64>"}` and
answers each with one JSON line: `rc` (the exit status `cni.main.run` returned, the
function the `calico` console script calls), `stdout` (what the call wrote to its stdout
plus anything printed to sys.stdout), `stderr` (anything written to sys.stderr: log
records when the log file cannot be opened, logging's last-resort handler, warnings),
`escaped` (the traceback of an exception that got out of `run`, else null), and the
process's open file descriptors and threads after the call (a call that leaks either
would, in a runtime's fresh process, go unnoticed; here it is counted).

What a fresh process has that a long-lived one must be given back before every call:
- `os.environ` is exactly the call's environment (what the executable would inherit);
- the root logger has no handlers and level WARNING (a fresh interpreter's logging:
  `run` installs its own handler once it has read the configuration, and anything
  logged before that goes to logging's last resort, stderr);
- `sys.stdout` / `sys.stderr` are fresh buffers (captured per call).
`libcalico.client`'s memo of keys whose invalid stored value it has logged once only
decides whether that warning is logged again; the fuzzer's etcd never holds an invalid
value (only its pools and what the plugin writes), so the memo stays empty. Everything
else that lives at module level in cni/, libcalico/, workload/ and rtnl/ is either
constant or a memo of a pure function of its arguments (the `lru_cache`s on key builders,
CIDR parsing and selector parsing, the compiled key regexes, the libc handle of
`rtnl.netns`), so it cannot make one call's answer depend on an earlier one. The
datastore client lives in the call's `Context` and is closed when `run` returns.

The protocol goes over a duplicate of the original stdout; fd 1 itself is pointed at
fd 2, so nothing a call writes at the descriptor level can corrupt an answer.

The parent's side is `Worker`: starts the process in a host namespace, `call(env, stdin)`
-> `Answer`, `close()` (ends it and waits for it).

Leaves to others: what to call and what to assert (the fuzzer), the namespaces and etcd
(the fuzzer's fixtures).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import IO, Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _reset(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.WARNING)


def call(plugin: str, env: dict[str, str], data: bytes) -> dict[str, Any]:
    """One call of `cni.main.run`, as a fresh process of the executable would make it."""
    from cni.main import run

    _reset(env)
    out, err, stray = io.StringIO(), io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stray, err
    escaped = None
    rc: Any = None
    try:
        rc = run(plugin, dict(env), io.BytesIO(data), out)
    except BaseException:  # noqa: BLE001 - reported: `run` must be total
        escaped = traceback.format_exc()
    finally:
        sys.stdout, sys.stderr = saved
        _reset({})
    return {"rc": rc, "stdout": out.getvalue() + stray.getvalue(), "stderr": err.getvalue(),
            "escaped": escaped, "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count()}


@dataclass
class Answer:
    rc: int | None
    out: Any  # the parsed stdout (None when empty or not JSON)
    stdout: str
    stderr: str
    escaped: str | None
    fds: int
    threads: int


class Worker:
    """The worker process inside `host_ns`, answering one call at a time."""

    def __init__(self, host_ns: str, log: IO[bytes]) -> None:
        self.log = log
        # (open descriptors, threads) after the first call: every later call must
        # leave the process with the same (set by the caller).
        self.baseline: tuple[int, int] | None = None
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host_ns}", sys.executable, "-m",
             "tests.support.cniworker"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            text=True, encoding="utf-8")

    def call(self, env: dict[str, str], data: bytes, plugin: str = "calico") -> Answer:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"plugin": plugin, "env": env,
                                          "stdin": base64.b64encode(data).decode()}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise AssertionError(f"the CNI worker died (exit {self.proc.wait()}): "
                                 f"{self.log.read().decode(errors='replace')[-3000:]}")
        a = json.loads(line)
        try:
            out = json.loads(a["stdout"]) if a["stdout"].strip() else None
        except ValueError:
            out = None
        return Answer(a["rc"], out, a["stdout"], a["stderr"], a["escaped"], a["fds"],
                      a["threads"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main() -> int:
    # Everything the plugin needs imported up front, so the first call's answer counts
    # descriptors and threads the way every later one does.
    import cni.calico  # noqa: F401
    import cni.ipam  # noqa: F401
    import cni.main  # noqa: F401
    import libcalico.client  # noqa: F401

    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    for line in sys.stdin:
        req = json.loads(line)
        answer = call(req.get("plugin", "calico"), req["env"], base64.b64decode(req["stdin"]))
        proto.write(json.dumps(answer) + "\n")
        proto.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
