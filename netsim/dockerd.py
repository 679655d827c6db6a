"""A private Docker engine per simulated host, for tests, benchmarks and the demo.

Owns: starting `dockerd` inside a host's network namespace with everything of its own
under one directory (data root, exec root, pid file, socket, log) and its own plugin
directory; waiting until it answers; running the docker client against it; loading
images; and removing all of it again: its containers, the daemon with its containerd
and shims, the mounts left below its directory, the directory.

How it starts (see /work/shared/reference/environment.md):

    nsenter --net=/run/netns/HOST unshare --mount --propagation private \\
        sh -c 'mount --bind DIR/plugins /run/docker/plugins && exec dockerd ...'

`nsenter --net` rather than `ip netns exec`, which remounts /sys and hides the cgroup
mounts dockerd needs; a private mount namespace with the engine's own `plugins`
directory bind-mounted on /run/docker/plugins, so that a network plugin's socket is
seen by this engine only (a plugin in a container with `-v /run/docker/plugins:...`
lands there; one started on the machine listens in `plugin_dir`), and so that it
survives `restart` (a restarted engine finds the plugins it had); no bridge, no iptables, no
forwarding or masquerading changes. Containers run with `--net=host` share HOST's
namespace. An engine that does not start raises `EngineFailed` with its log tail: the
README's install provides dockerd, so a test that needs one fails rather than skips.

`import_busybox` makes a tiny workload image without a registry.

Leaves to others: the namespaces (`netsim.netns`, `netsim.topology`) and
the node image (`netsim.nodeimage`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netsim.images import busybox_tar
from netsim.netns import Namespace, process_alive

PLUGIN_DIR = Path("/run/docker/plugins")
START_TIMEOUT_S = 60.0
BUSYBOX_APPLETS = ("sh", "sleep", "ip", "cat", "ping", "nc", "true")
COMPONENT_LABEL = "org.pycalico-net.component"  # calicoctl's containers (node, driver)


class EngineFailed(RuntimeError):
    """dockerd is missing, did not start, or a docker command failed."""


@dataclass
class DockerEngine:
    """One dockerd and everything it made, below `dir`."""

    netns: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    loaded: list[str] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def host(self) -> str:
        """The DOCKER_HOST value that reaches this engine."""
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.dir / "dockerd.log"

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    # --- starting ---------------------------------------------------------------------------

    @property
    def plugin_dir(self) -> Path:
        """This engine's plugin directory as the machine sees it: the engine sees it as
        /run/docker/plugins. A plugin started outside the engine listens here."""
        return self.dir / "plugins"

    @classmethod
    def start(cls, netns: str, parent: str | os.PathLike[str] | None = None,
              timeout: float = START_TIMEOUT_S) -> DockerEngine:
        """A dockerd in /run/netns/`netns`, answering; its directory goes below `parent`."""
        for binary in ("dockerd", "docker", "nsenter", "unshare"):
            if shutil.which(binary) is None:
                raise EngineFailed(f"{binary} is not installed (./scripts/bootstrap.sh "
                                   "installs docker.io)")
        # The mount point for each engine's private bind mount; it stays (docker.io's own
        # engine uses the same directory) and is never written to outside an engine.
        PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        engine = cls(netns, Path(tempfile.mkdtemp(prefix="dockerd-", dir=parent)))
        engine.plugin_dir.mkdir()
        try:
            engine._launch(timeout)
        except BaseException:
            engine.stop()
            raise
        return engine

    def _launch(self, timeout: float) -> None:
        d = self.dir
        cmd = ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount",
               "--propagation", "private", "sh", "-c",
               f'mount --bind "$0" {PLUGIN_DIR} && exec dockerd "$@"', str(self.plugin_dir),
               "--data-root", str(d / "data"), "--exec-root", str(d / "exec"),
               "--pidfile", str(d / "docker.pid"), "-H", self.host,
               "--iptables=false", "--ip6tables=false", "--ip-forward=false",
               "--ip-masq=false", "--bridge=none"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_answering(timeout)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop dockerd as its service manager would (SIGTERM: it stops its containers)
        and start it again on the same data; containers with a restart policy come back."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)  # dockerd itself (it stops containerd)
        self.proc.wait(timeout=90)
        self._launch(timeout)

    def _wait_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise EngineFailed(f"dockerd in {self.netns} exited ({self.proc.returncode})"
                                   f": {self.log_tail()}")
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise EngineFailed(f"dockerd in {self.netns} did not answer within "
                                   f"{timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.2)

    # --- using ------------------------------------------------------------------------------

    def docker(self, *args: str, input: bytes | None = None,  # noqa: A002
               check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` against this engine; output decoded as text."""
        try:
            raw = subprocess.run(["docker", *args], input=input, capture_output=True,
                                 env={**os.environ, **self.env(), "DOCKER_BUILDKIT": "0"},
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise EngineFailed(f"docker {' '.join(args)} timed out after {timeout:.0f} s"
                               ) from None
        proc = subprocess.CompletedProcess(raw.args, raw.returncode,
                                           raw.stdout.decode(errors="replace"),
                                           raw.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise EngineFailed(f"docker {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()}")
        return proc

    def load(self, tar: str | os.PathLike[str]) -> None:
        """`docker load` an image archive (`docker save` output)."""
        with open(tar, "rb") as f:
            raw = subprocess.run(["docker", "load", "-q"], stdin=f, capture_output=True,
                                 env={**os.environ, **self.env()}, timeout=300, check=False)
        if raw.returncode != 0:
            raise EngineFailed(f"docker load {tar}: {raw.stderr.decode(errors='replace')}")

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    # --- removing ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Remove every container, stop dockerd (it stops its containerd), kill what is
        left of ours, unmount whatever remains below the directory and remove it."""
        if self.proc is not None and self.proc.poll() is None:
            # Workloads first, while the containers serving them (calicoctl's: the node
            # and the Docker driver their networks need) still run.
            ours = self.docker("ps", "-aq", "--filter", f"label={COMPONENT_LABEL}",
                               check=False, timeout=30).stdout.split()
            every = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            for ids in ([i for i in every if i not in ours], ours):
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=120)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        pids = _processes_naming(str(self.dir))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(self.dir))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def engine_in_namespace(prefix: str) -> Iterator[DockerEngine]:
    """A namespace of its own (`prefix`-...) with a dockerd in it; both removed after."""
    ns = Namespace(prefix)
    eng = None
    try:
        eng = DockerEngine.start(ns.name)
        yield eng
    finally:
        if eng is not None:
            eng.stop()
        ns.delete()


def import_busybox(engine: DockerEngine, name: str) -> str:
    """An image with a static busybox and a few applet links, made without a registry
    (`docker import` of a tar stream, `netsim.images`); returns its name."""
    try:
        tar = busybox_tar(BUSYBOX_APPLETS)
    except FileNotFoundError as exc:
        raise EngineFailed(str(exc)) from None
    engine.docker("import", "-", name, input=tar)
    return name


def _processes_naming(text: str) -> list[int]:
    """PIDs whose command line contains `text` (our containerd and shims name our dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids
