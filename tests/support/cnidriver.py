"""A small CNI runtime for tests: runs a plugin executable the way the CNI spec says a
runtime does - the CNI_* variables in its environment, the network configuration on
stdin, the result or error read from stdout - inside a simulated host's namespace
(`nsenter --net`), as podman or a kubelet would. No `cnitool` here.

Owns: `Driver.call(command, conf, ...)` -> `Call` (exit status, the parsed JSON, the
raw stdout and stderr); `chain_add`/`chain_del` for a conflist (each plugin in turn,
prevResult passed along, DEL in reverse order, as libcni does).

Leaves to others: setting up hosts, etcd and the plugins (the tests' fixtures).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REFERENCE_PLUGINS = "/usr/lib/cni"


@dataclass
class Call:
    rc: int
    out: Any  # the parsed stdout (None when empty)
    stdout: str
    stderr: str

    @property
    def code(self) -> int | None:
        return self.out.get("code") if isinstance(self.out, dict) else None


@dataclass
class Driver:
    """Calls plugins found in `bin_dirs` (CNI_PATH) from inside `host_ns`."""

    host_ns: str
    bin_dirs: Sequence[str]

    def call(self, command: str, conf: Mapping[str, Any] | bytes, *, container: str = "",
             netns: str = "", ifname: str = "eth0", args: str = "IgnoreUnknown=1",
             plugin: str | None = None, env: Mapping[str, str] | None = None,
             drop: Sequence[str] = ()) -> Call:
        """Run one command of `plugin` (default: the config's `type`)."""
        if isinstance(conf, bytes):
            data, kind = conf, plugin or "calico"
        else:
            data, kind = json.dumps(conf).encode(), plugin or str(conf.get("type", "calico"))
        binary = next((os.path.join(d, kind) for d in self.bin_dirs
                       if os.access(os.path.join(d, kind), os.X_OK)), None)
        assert binary is not None, f"plugin {kind} not found in {self.bin_dirs}"
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CNI_COMMAND": command, "CNI_CONTAINERID": container,
                "CNI_NETNS": f"/run/netns/{netns}" if netns and "/" not in netns else netns,
                "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": ":".join(self.bin_dirs),
                **(env or {})}
        for name in drop:
            full.pop(name, None)
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.host_ns}", binary],
                              input=data, env=full, capture_output=True, timeout=120,
                              check=False)
        stdout = proc.stdout.decode()
        return Call(proc.returncode, json.loads(stdout) if stdout.strip() else None, stdout,
                    proc.stderr.decode())

    def chain_add(self, conflist: Mapping[str, Any], **kw: Any) -> Call:
        """ADD through every plugin of a conflist, prevResult passed along."""
        prev = None
        call = None
        for plugin in conflist["plugins"]:
            conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            if prev is not None:
                conf["prevResult"] = prev
            call = self.call("ADD", conf, **kw)
            if call.rc != 0:
                return call
            prev = call.out
        assert call is not None
        return call

    def chain_del(self, conflist: Mapping[str, Any], prev: Any = None, **kw: Any) -> list[Call]:
        """DEL through the plugins in reverse order (prevResult given to each)."""
        calls = []
        for plugin in reversed(conflist["plugins"]):
            conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            if prev is not None:
                conf["prevResult"] = prev
            calls.append(self.call("DEL", conf, **kw))
        return calls
