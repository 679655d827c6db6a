"""`calico-node`: the first process (PID 1) of the node container.

Owns, in order:
1. clearing what an earlier container left in the run directory (mounted from the
   host, so it outlives containers): supervisord's pid file and socket. Nothing of
   ours runs in a container that is just starting, and a stale pid could name one of
   this container's own processes;
2. starting the node exactly as `calicoctl node --runtime=none` does, as its child:
   `calicoctl node run --runtime=none --detach=false` with the name, addresses, AS and
   backend the host's calicoctl passed in the environment (HOSTNAME, IP, IP6, AS,
   CALICO_NETWORKING_BACKEND, CALICO_RUN_DIR, CALICO_LOG_DIR). It registers the node,
   writes BIRD's first configuration and then becomes supervisord running the
   installed node-image/supervisord.conf: the same program files as a host without
   Docker;
3. on SIGTERM or SIGINT (`docker stop`, `docker restart`, the engine shutting down): a
   BGP graceful restart. BIRD is told `graceful restart`, so it exits without closing
   its sessions: its peers keep this node's routes (stale, for the restart time) and
   the kernel here keeps them too (`persist`). Then supervisord is stopped; felix
   leaves the dataplane as it is. A node container that comes back within the restart
   time loses no traffic. (`calicoctl node stop` stops BIRD first through
   supervisord, so its sessions close and peers withdraw the routes, as without
   Docker.)
4. reaping every orphan, as a PID 1 must, and exiting with supervisord's status.

Leaves to others: the start-up itself (`calicoctl.noderun`), the programs
(node-image/), the container's settings (`calicoctl.nodedocker`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

GRACEFUL_WAIT_S = 10.0


class _Stop(Exception):
    """Raised by the signal handler to leave the wait loop."""


def node_command(env: Mapping[str, str]) -> list[str]:
    """The `calicoctl node run` command the environment describes (pure)."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "calicoctl"), "node", "run",
           "--runtime=none", "--detach=false"]
    for option, var in (("--name", "HOSTNAME"), ("--ip", "IP"), ("--ip6", "IP6"),
                        ("--as", "AS"), ("--backend", "CALICO_NETWORKING_BACKEND"),
                        ("--log-dir", "CALICO_LOG_DIR"), ("--run-dir", "CALICO_RUN_DIR")):
        if env.get(var):
            cmd.append(f"{option}={env[var]}")
    return cmd


def clear_stale_state(run_dir: Path) -> None:
    for name in ("supervisord.pid", "supervisor.sock"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def graceful_bird_stop(run_dir: Path) -> str:
    """Ask BIRD for a graceful restart and wait until it has exited; what happened."""
    try:
        pid = int((run_dir / "bird.pid").read_text().strip())
    except (OSError, ValueError):
        return "BIRD is not running"
    if not _alive(pid):
        return "BIRD is not running"
    proc = subprocess.run(["birdcl", "-s", str(run_dir / "bird.ctl"), "graceful", "restart"],
                          capture_output=True, text=True, timeout=10, check=False)
    deadline = time.monotonic() + GRACEFUL_WAIT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        return f"BIRD did not exit after `graceful restart`: {proc.stdout.strip()}"
    return "BIRD stopped for a graceful restart"


def main() -> None:
    env = dict(os.environ)
    run_dir = Path(env.get("CALICO_RUN_DIR") or "/var/run/calico")
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_state(run_dir)
    # The handler only raises while we wait, so a signal never interrupts a step half done.
    flags = {"requested": False, "waiting": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        flags["requested"] = True
        if flags["waiting"]:
            raise _Stop

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    child = subprocess.Popen(node_command(env), env=env)
    stopping = False
    status = 1
    while True:
        if flags["requested"] and not stopping:
            stopping = True
            print(f"calico-node: stopping: {graceful_bird_stop(run_dir)}", flush=True)
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        try:
            flags["waiting"] = True
            if flags["requested"] and not stopping:
                continue
            pid, raw = os.waitpid(-1, 0)
        except _Stop:
            continue
        except ChildProcessError:
            break
        finally:
            flags["waiting"] = False
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(raw)
            child.returncode = status
            break
    # Orphans the programs left behind are reaped before the container ends.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    print(f"calico-node: exiting ({status})", flush=True)
    sys.exit(status if status >= 0 else 128 - status)
