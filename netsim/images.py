"""Container images without a registry, for the Docker and podman tests,
the benchmarks and the demo.

Owns: `busybox_tar(applets)`, a root filesystem holding Debian's static busybox
(busybox-static, /bin/busybox) and a symlink per applet, as a tar stream that `docker
import -` and `podman import -` turn into an image.

Leaves to others: importing it (each test's own engine and storage).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence

BUSYBOX = "/bin/busybox"  # Debian busybox-static: runs in an otherwise empty image


def busybox_tar(applets: Sequence[str]) -> bytes:
    """A root filesystem with busybox and its applet links, as a tar stream."""
    if not os.path.exists(BUSYBOX):
        raise FileNotFoundError(f"{BUSYBOX} missing (./scripts/bootstrap.sh installs "
                                "busybox-static)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()
