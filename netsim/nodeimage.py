"""The node image of this checkout for tests, benchmarks and the demo: built once per
content, then loaded into every private engine that needs it.

Owns `node_image_archive()`: a `docker save` archive of the image in the image cache
(`<cache>/images/node-<image_key>.tar`, cache = $CALICO_IMAGE_CACHE or
/var/cache/pycalico-net). When it is missing it is made with the real command,
`calicoctl node image build`, on a throw-away engine in a throw-away namespace (the
base and the dependency wheels come from the same cache, so only the first build on a
machine runs debootstrap). The key is `calicoctl.nodeimage.image_key`: any change to
what goes into the image makes a new archive; only the four most recently used archives
are kept. `load_node_image(engine)` puts the image on an engine.

Leaves to others: the build itself (`calicoctl.nodeimage`), the engines
(`netsim.dockerd`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path

from calicoctl.nodeimage import DEFAULT_IMAGE, cache_dir, image_key, source_root
from netsim.dockerd import DockerEngine, EngineFailed
from netsim.netns import Namespace
from netsim.topology import calicoctl_path

BUILD_TIMEOUT_S = 900.0
KEPT = 4  # archives kept in the cache, the newest first


def archive_path() -> Path:
    return cache_dir() / "images" / f"node-{image_key(source_root())}.tar"


def node_image_archive(log: Path | None = None) -> Path:
    """The archive of this checkout's node image, built if missing (see the module)."""
    target = archive_path()
    if target.is_file():
        with contextlib.suppress(OSError):
            os.utime(target)  # recently used: kept by _prune
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        _build(target, log or target.with_suffix(".log"))
    _prune(target)
    return target


def _build(target: Path, log: Path) -> None:
    ns = Namespace("imgbuild")
    engine = None
    try:
        engine = DockerEngine.start(ns.name, parent=target.parent)
        started = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.run([calicoctl_path(), "node", "image", "build"],
                                  env={**os.environ, **engine.env()}, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
                                  check=False)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-8:]
            raise EngineFailed(f"calicoctl node image build exited {proc.returncode} "
                               f"(log {log}): " + " | ".join(tail))
        partial = target.with_suffix(".partial")
        engine.docker("save", "-o", str(partial), DEFAULT_IMAGE, timeout=300)
        os.replace(partial, target)
        with open(log, "a") as out:
            out.write(f"saved {target} after {time.monotonic() - started:.1f} s\n")
    finally:
        if engine is not None:
            engine.stop()
        ns.delete()


def _prune(keep: Path) -> None:
    """Remove all but the KEPT most recently used archives (each is ~200 MB; several
    checkouts on one machine each use their own)."""
    others = sorted((p for p in keep.parent.glob("node-*.tar") if p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[KEPT - 1:]:
        with contextlib.suppress(OSError):
            old.unlink()
            old.with_suffix(".log").unlink(missing_ok=True)


def load_node_image(engine: DockerEngine) -> str:
    """Put this checkout's node image on `engine`; returns its name."""
    if not engine.has_image(DEFAULT_IMAGE):
        engine.load(node_image_archive())
    return DEFAULT_IMAGE
