"""`calicoctl node image build` on a real engine: what the image holds, that it runs the
same supervisord program files as a host without Docker, and that a rebuild after a
one-line code change reuses the base and the dependency layer.

It builds from a copy of the checkout (so the test can change a line) on its own engine;
the base tar and the dependency wheels come from the machine's image cache, which the
session's `node_image_archive` fixture has filled (so no debootstrap here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from calicoctl.nodeimage import (
    DEFAULT_IMAGE,
    base_tar,
    dependency_wheels,
    image_key,
    packaged_files,
    source_root,
)
from netsim.dockerd import DockerEngine, engine_in_namespace
from netsim.topology import calicoctl_path

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE_SHARE = "/opt/calico/share/calico-node"
TOOLS = ("bird", "birdcl", "iptables", "ip6tables", "iptables-restore", "ipset", "ip",
         "conntrack", "supervisord", "supervisorctl", "calico-felix", "calico-confd",
         "calicoctl", "calico-node", "calico-libnetwork")


@pytest.fixture(scope="module")
def engine(node_image_archive: Path) -> Iterator[DockerEngine]:
    # The machine's cache holds the base and the dependency wheels (made with the
    # archive; made here only if someone emptied the cache since).
    base_tar(lambda line: None)
    dependency_wheels(source_root(), lambda line: None)
    with engine_in_namespace("imgt") as eng:
        yield eng


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the image is built from."""
    root = source_root()
    copy = tmp_path_factory.mktemp("src")
    for rel in [*packaged_files(root), Path("node-image/Dockerfile")]:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, copy / rel)
    return copy


def build(engine: DockerEngine, source: Path) -> str:
    proc = subprocess.run([calicoctl_path(), "node", "image", "build", "--source", str(source)],
                          env={**os.environ, **engine.env()}, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout


def cached_steps(output: str) -> dict[str, bool]:
    """Dockerfile instruction (its first words) -> whether the build reused its layer."""
    steps: dict[str, bool] = {}
    current = None
    for line in output.splitlines():
        m = re.match(r"\s*Step \d+/\d+ : (.*)", line)
        if m:
            current = " ".join(m.group(1).split()[:4])
            steps[current] = False
        elif current and "Using cache" in line:
            steps[current] = True
    return steps


def in_image(engine: DockerEngine, script: str) -> str:
    return engine.docker("run", "--rm", "--network", "none", "--entrypoint", "sh",
                         DEFAULT_IMAGE, "-c", script).stdout


def label(engine: DockerEngine) -> str:
    info = json.loads(engine.docker("image", "inspect", DEFAULT_IMAGE).stdout)[0]
    return str(info["Config"]["Labels"]["org.pycalico-net.source-key"])


def test_the_image_holds_the_stack_and_the_same_program_files(engine: DockerEngine,
                                                              source: Path) -> None:
    out = build(engine, source)
    assert re.search(r"base: reusing .*\.tar", out), out  # no debootstrap
    assert "wheels: reusing the dependency wheels" in out
    assert f"Built {DEFAULT_IMAGE}" in out
    assert label(engine) == image_key(source)
    info = json.loads(engine.docker("image", "inspect", DEFAULT_IMAGE).stdout)[0]
    assert info["Config"]["Entrypoint"] == ["/opt/calico/bin/calico-node"]
    # BIRD 2, the dataplane tools, supervisord and the project's programs are there ...
    where = in_image(engine, " ; ".join(f"command -v {t} || echo MISSING {t}" for t in TOOLS))
    assert "MISSING" not in where, where
    assert "BIRD version 2." in in_image(engine, "bird --version 2>&1")
    # ... and the node runs the very program files a host without Docker runs.
    for rel in ("supervisord.conf", "programs/bird.conf", "programs/confd.conf",
                "programs/felix.conf"):
        inside = in_image(engine, f"cat {NODE_SHARE}/{rel}")
        assert inside == (source_root() / "node-image" / rel).read_text(), rel


def test_a_one_line_change_rebuilds_only_the_last_layer(engine: DockerEngine,
                                                        source: Path) -> None:
    build(engine, source)  # warm: everything cached on this engine now
    module = source / "calicoctl" / "version.py"
    module.write_text(module.read_text() + "# rebuilt by test_node_image\n")
    out = build(engine, source)
    assert f"base: {DEFAULT_IMAGE.split(':')[0]}-base:" in out and "on the engine already" in out
    steps = cached_steps(out)
    deps = next(k for k in steps if k.startswith("RUN python3 -m venv"))
    project = next(k for k in steps if k.startswith("COPY wheels/project/"))
    assert steps[deps] is True and steps["COPY wheels/deps/ /tmp/wheels/deps/"] is True
    assert steps[project] is False
    assert label(engine) == image_key(source)
    installed = in_image(engine, "tail -n 1 /opt/calico/lib/python3.11/site-packages/"
                                 "calicoctl/version.py")
    assert installed == "# rebuilt by test_node_image\n"
