"""What a demo run created, on disk, and removing it again from that record alone.

Owns the state file (default /run/calico-demo/state.json; `--state-file` or
$CALICO_DEMO_STATE choose another): the namespaces the demo created (fabric, hosts,
workloads) in creation order, its directories (the topology's scratch directory with the
hosts' logs and run directories, etcd's data directory), and what `--keep` prints (etcd's
URL, hosts, workloads). It is written before anything it names is used, rewritten as the
demo grows, and removed last by `teardown`, which first removes the containers of the
Docker engines it names (--runtime=docker), then kills every process left in those
namespaces (TERM, then KILL), deletes the namespaces (their veths, routes, iptables and
ipsets go with them) and the directories. Only what the file names is touched.

Leaves to others: creating things (`demo.cluster`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netsim.netns import kill_namespace_processes, namespace_exists

DEFAULT_PATH = "/run/calico-demo/state.json"
# What marks calicoctl's own containers (calicoctl.nodedocker.COMPONENT_LABEL).
COMPONENT_LABEL = "org.pycalico-net.component"


def default_path() -> Path:
    return Path(os.environ.get("CALICO_DEMO_STATE") or DEFAULT_PATH)


@dataclass
class DemoState:
    path: Path
    pid: int = field(default_factory=os.getpid)
    namespaces: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, namespaces: tuple[str, ...] | list[str] = (),
            dirs: tuple[str, ...] | list[str] = (), **info: Any) -> None:
        """Record more of what the demo made and write the file (atomically)."""
        with self._lock:
            self.namespaces += [n for n in namespaces if n not in self.namespaces]
            self.dirs += [d for d in dirs if d not in self.dirs]
            self.info.update(info)
            data = {"pid": self.pid, "namespaces": self.namespaces, "dirs": self.dirs,
                    "info": self.info}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> DemoState | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"state file {path} is unreadable: {exc}") from exc
        return cls(path, int(data.get("pid", 0)), list(data.get("namespaces", [])),
                   list(data.get("dirs", [])), dict(data.get("info", {})))


def remove_containers(engine: str) -> int:
    """`docker rm -f` every container of the engine at `engine` (a DOCKER_HOST value)
    while it still runs: containers in namespaces of their own (the --runtime=docker
    workloads) are in no namespace the state names. The workloads go first, while the
    Docker driver they need to leave their network still runs. Returns how many."""
    env = {**os.environ, "DOCKER_HOST": engine}
    removed = 0
    try:
        ours = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={COMPONENT_LABEL}"],
                              capture_output=True, text=True, env=env, timeout=30,
                              check=False).stdout.split()
        every = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True,
                               env=env, timeout=30, check=False).stdout.split()
        for ids in ([i for i in every if i not in ours], ours):
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, env=env,
                               timeout=120, check=False)
                removed += len(ids)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return removed


def teardown(state: DemoState, say: Callable[[str], None] = print) -> bool:
    """Remove everything `state` names, then the state file. True when nothing is left."""
    for engine in (state.info.get("engines") or {}).values():
        remove_containers(str(engine))
    existing = [n for n in state.namespaces if namespace_exists(n)]
    killed = kill_namespace_processes(existing, timeout=5.0)
    for name in reversed(existing):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for d in state.dirs:
        shutil.rmtree(d, ignore_errors=True)
    left = [n for n in state.namespaces if namespace_exists(n)]
    left += [d for d in state.dirs if os.path.exists(d)]
    say(f"teardown: stopped {killed} processes, deleted {len(existing) - len(left)} "
        f"namespaces and {len(state.dirs)} directories"
        + (f"; could not remove: {', '.join(left)}" if left else ""))
    if not left:
        with contextlib.suppress(FileNotFoundError):
            state.path.unlink()
        if str(state.path) == DEFAULT_PATH:
            with contextlib.suppress(OSError):
                state.path.parent.rmdir()
    return not left
