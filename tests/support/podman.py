"""podman as a CNI runtime inside a simulated host, configured per test, never machine-wide.

Owns: `Podman(host_ns, workdir, plugin_dirs, network_dir)`: a private containers.conf
(CONTAINERS_CONF: the CNI network backend, the plugin dirs, the conflist dir, the
ulimits podman needs here, no event log, file locks), private storage (`--root`, `--runroot`,
`--tmpdir`, the vfs driver) under `workdir`, and every podman command run in the
host's network namespace with `nsenter --net` (so CNI plugins run there and the host
end of each veth lands there; `ip netns exec` would remount /sys). `load_image`
imports a tar stream with /var/lib hidden behind a tmpfs in a private mount namespace:
image imports write a blob-info cache to /var/lib/containers/cache otherwise.
`close()` removes every container, unmounts what podman left below `workdir`, removes
`workdir`, and removes /var/lib/cni if podman created it (libcni's result cache) and
nothing else is in it.

Leaves to others: the hosts, the plugins and their conflists, what runs in the
containers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CNI_CACHE = Path("/var/lib/cni")  # libcni's cache; podman 4.3 has no setting for it


class PodmanError(AssertionError):
    pass


class Podman:
    def __init__(self, host_ns: str, workdir: Path, plugin_dirs: Sequence[str],
                 network_dir: Path) -> None:
        if shutil.which("podman") is None:
            raise PodmanError("podman is not installed (./scripts/bootstrap.sh installs it)")
        self.host_ns = host_ns
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache_existed = CNI_CACHE.exists()
        conf = self.dir / "containers.conf"
        dirs = ", ".join(json.dumps(d) for d in plugin_dirs)
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f"cni_plugin_dirs = [{dirs}]\n"
            f"network_config_dir = {json.dumps(str(network_dir))}\n"
            "[engine]\n"
            'events_logger = "none"\n'
            # File locks under --tmpdir: the default shm locks live in /dev/shm for good.
            'lock_type = "file"\n')
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "CONTAINERS_CONF": str(conf), "HOME": str(self.dir)}
        self.base = ["podman", "--root", str(self.dir / "root"), "--runroot",
                     str(self.dir / "runroot"), "--tmpdir", str(self.dir / "tmp"),
                     "--storage-driver", "vfs", "--network-config-dir", str(network_dir),
                     "--cgroup-manager", "cgroupfs"]

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None,  # noqa: A002
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.host_ns}", *self.base,
                               *args], input=input, capture_output=True, env=self.env,
                              timeout=timeout, check=False)
        out = subprocess.CompletedProcess(proc.args, proc.returncode,
                                          proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} exited {proc.returncode}: "
                              f"{out.stderr.strip()[-1500:]}")
        return out

    def load_image(self, tar: bytes, name: str) -> None:
        cmd = " ".join([*self.base, "import", "-", name])
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs podman-cache /var/lib && exec {cmd}"],
                              input=tar, capture_output=True, env=self.env, timeout=120,
                              check=False)
        if proc.returncode != 0:
            raise PodmanError(f"podman import exited {proc.returncode}: "
                              f"{proc.stderr.decode(errors='replace')[-1500:]}")

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self("inspect", "--type", "container", name).stdout)[0]

    def netns(self, name: str) -> str:
        """The container's network namespace path (/run/netns/netns-...)."""
        return str(self.inspect(name)["NetworkSettings"]["SandboxKey"])

    def close(self) -> None:
        if (self.dir / "root").exists():
            self("rm", "--all", "--force", "--time", "0", check=False)
            self("rmi", "--all", "--force", check=False)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if str(self.dir) in line.split()[1]]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.cache_existed and CNI_CACHE.exists():
            files = [p for p in CNI_CACHE.rglob("*") if p.is_file()]
            if not files:
                shutil.rmtree(CNI_CACHE, ignore_errors=True)
