"""The node image: `calicoctl node image build`, from this checkout, with no registry.

Owns the build and its three inputs, each made once and reused while it is unchanged:
1. the base: `debootstrap --variant=minbase --include=<BASE_PACKAGES> bookworm`,
   trimmed (apt caches, docs, man pages, locales) and kept as a tar in the cache
   directory under a key of the suite and package list, then `docker import`ed as
   `pycalico-net/node-base:<suite>-<key>`; an engine that has that tag skips all of it;
2. wheels built on the host: the dependencies (`pip wheel`, pinned to the versions
   installed next to this calicoctl, so the image runs what the tests ran), cached
   under a key of requirements and pins; and the project itself, built from a copy of
   exactly the files pyproject.toml packages, with a fixed SOURCE_DATE_EPOCH so that
   unchanged code gives a byte-identical wheel (and a cached layer);
3. `docker build` of node-image/Dockerfile with those wheels as the context (no network
   inside: `--network none`, `pip install --no-index`); dependencies and project are
   separate layers, so a code change rebuilds the last layer only.
The image is tagged `pycalico-net/node:<version>` (and any `--tag`) and labelled with
`image_key`, a digest of everything that goes into it.

The cache directory is $CALICO_IMAGE_CACHE, else /var/cache/pycalico-net; a lock file
there serialises builders. Progress goes to the caller's `say`.

Leaves to others: running the image (`calicoctl.nodedocker`), what runs inside it
(node-image/, `calicoctl.nodeentry`), the engine (`calicoctl.dockercli`).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import click

from calicoctl import __version__
from calicoctl.errors import CommandFailed

Say = Callable[[str], None]

IMAGE_REPO = "pycalico-net/node"
DEFAULT_IMAGE = f"{IMAGE_REPO}:{__version__}"
BASE_REPO = "pycalico-net/node-base"
SUITE = "bookworm"
IMAGE_PYTHON = (3, 11)  # Debian 12's python3: the wheels must match it
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = "/var/cache/pycalico-net"
# Debian packages of the base. supervisord comes with the project's wheels (the same
# version a host without Docker runs).
BASE_PACKAGES = ("bird2", "iptables", "ipset", "iproute2", "conntrack", "python3",
                 "python3-venv")
# What the base does not need at run time (removed before it is archived).
BASE_TRIM = ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
             "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*")
BASE_RECIPE = 1  # bump when the way the base is made changes
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest a zip (wheel) can record


def cache_dir() -> Path:
    return Path(os.environ.get("CALICO_IMAGE_CACHE") or DEFAULT_CACHE)


def source_root(given: str | None = None) -> Path:
    """The checkout to build: `given`, else the one this calicoctl runs from."""
    root = Path(given) if given else Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "node-image" /
                                                        "Dockerfile").is_file():
        raise CommandFailed(f"{root} is not a pycalico-net checkout (no pyproject.toml or "
                            "node-image/Dockerfile); give --source", code=2)
    return root


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- what goes in (pure apart from reading the checkout) ---------------------------------------

def base_key() -> str:
    return _digest(BASE_RECIPE, SUITE, sorted(BASE_PACKAGES), BASE_TRIM)[:12]


def base_tag() -> str:
    return f"{BASE_REPO}:{SUITE}-{base_key()}"


def _pyproject(root: Path) -> dict[str, object]:
    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirements(root: Path) -> list[str]:
    project = _pyproject(root)["project"]
    assert isinstance(project, dict)
    return list(project.get("dependencies", []))


def installed_pins() -> list[str]:
    """`name==version` of every distribution installed next to this calicoctl: the
    constraints the dependency wheels are built with."""
    from importlib import metadata

    own = {"pycalico-net", "pycalico_net"}
    pins = {f"{d.metadata['Name'].lower()}=={d.version}" for d in metadata.distributions()
            if d.metadata["Name"] and d.metadata["Name"].lower() not in own}
    return sorted(pins)


def deps_key(root: Path) -> str:
    return _digest(IMAGE_PYTHON, requirements(root), installed_pins())[:12]


def packaged_files(root: Path) -> list[Path]:
    """The checkout's files that the project wheel is made of (relative paths): the
    packages pyproject.toml's [tool.setuptools.packages.find] includes, its data files,
    pyproject.toml and the README."""
    data = _pyproject(root)
    tool = data.get("tool", {})
    assert isinstance(tool, dict)
    setuptools_cfg = tool.get("setuptools", {})
    patterns = setuptools_cfg.get("packages", {}).get("find", {}).get("include", [])
    files: set[Path] = {Path("pyproject.toml")}
    project = data.get("project", {})
    readme = project.get("readme") if isinstance(project, dict) else None
    if isinstance(readme, str):
        files.add(Path(readme))
    for top in sorted(p for p in root.iterdir() if (p / "__init__.py").is_file()):
        if any(fnmatch.fnmatch(top.name, pat) for pat in patterns):
            for path in top.rglob("*"):
                rel = path.relative_to(root)
                if path.is_file() and "__pycache__" not in rel.parts and \
                        path.suffix not in (".pyc", ".pyo"):
                    files.add(rel)
    for globs in setuptools_cfg.get("data-files", {}).values():
        for pattern in globs:
            files.update(p.relative_to(root) for p in root.glob(pattern) if p.is_file())
    return sorted(files)


def image_key(root: Path) -> str:
    """A digest of everything that goes into the image: the Dockerfile, the base recipe,
    the dependency pins and every packaged file of the checkout."""
    h = hashlib.sha256()
    h.update((root / "node-image" / "Dockerfile").read_bytes())
    h.update(f"{base_key()} {deps_key(root)} {__version__}".encode())
    for rel in packaged_files(root):
        h.update(f"\0{rel}\0".encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


# --- the cache ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _cache_lock(cache: Path, say: Say) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build using {cache}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], say: Say | None = None, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> None:
    """Run a build step; its output goes to `say` line by line (None: kept for errors)."""
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail = [*tail[-9:], line]
            if say is not None:
                say(f"  {line}")
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: "
                            + " | ".join(tail[-3:]))


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def base_tar(say: Say, mirror: str | None = None) -> Path:
    """The base root filesystem as a tar in the cache; debootstrap only when missing."""
    cache = cache_dir() / "base"
    tar = cache / f"{SUITE}-{base_key()}.tar"
    if tar.is_file():
        say(f"base: reusing {tar}")
        return tar
    with _cache_lock(cache_dir(), say):
        if tar.is_file():
            return tar
        if shutil.which("debootstrap") is None:
            raise CommandFailed("debootstrap is not installed (./scripts/bootstrap.sh, or "
                                "apt-get install debootstrap)")
        cache.mkdir(parents=True, exist_ok=True)
        mirror = mirror or os.environ.get("CALICO_DEBIAN_MIRROR") or DEFAULT_MIRROR
        started = time.monotonic()
        say(f"base: debootstrap {SUITE} from {mirror} with {', '.join(BASE_PACKAGES)} "
            "(about a minute, once)")
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
        try:
            rootfs = work / "rootfs"
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                  SUITE, str(rootfs), mirror], say)
            for pattern in BASE_TRIM:
                for path in rootfs.glob(pattern):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            partial = work / "rootfs.tar"
            _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
            os.replace(partial, tar)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        say(f"base: {tar} ({tar.stat().st_size // 2**20} MiB) in "
            f"{time.monotonic() - started:.0f} s")
        return tar


def dependency_wheels(root: Path, say: Say) -> Path:
    """A directory of wheels for every dependency (cached per requirements and pins)."""
    if sys.version_info[:2] != IMAGE_PYTHON:
        want = ".".join(map(str, IMAGE_PYTHON))
        raise CommandFailed(f"the image runs Python {want} (Debian 12); build it with a "
                            f"calicoctl running on Python {want}, not "
                            f"{sys.version_info.major}.{sys.version_info.minor}")
    target = cache_dir() / "wheels" / f"deps-{deps_key(root)}"
    if (target / ".complete").is_file():
        say(f"wheels: reusing the dependency wheels in {target}")
        return target
    with _cache_lock(cache_dir(), say):
        if (target / ".complete").is_file():
            return target
        say("wheels: building the dependency wheels (pip wheel, pinned to this "
            "calicoctl's environment)")
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="deps-", dir=target.parent))
        try:
            constraints = work / "constraints.txt"
            constraints.write_text("\n".join(installed_pins()) + "\n")
            _run(_pip("wheel", "-q", "--wheel-dir", str(work / "wheels"), "-c",
                      str(constraints), *requirements(root)), say)
            _run(_pip("download", "-q", "--dest", str(work / "wheels" / "build"),
                      *BUILD_REQUIREMENTS), say)
            (work / "wheels" / ".complete").write_text("")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(work / "wheels", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target


def build_python(deps: Path, say: Say) -> Path:
    """The python of a virtualenv holding the build requirements (setuptools, wheel),
    made once next to the dependency wheels: building the project's wheel then costs
    one call of setuptools' PEP 517 hook, not a fresh isolated environment each time."""
    env = deps / "buildenv"
    python = env / "bin" / "python"
    if (env / ".complete").is_file():
        return python
    with _cache_lock(cache_dir(), say):
        if (env / ".complete").is_file():
            return python
        shutil.rmtree(env, ignore_errors=True)
        say("wheels: making the build environment (setuptools, wheel)")
        _run([sys.executable, "-m", "venv", str(env)])
        _run([str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q",
              "--no-index", "--find-links", str(deps / "build"), *BUILD_REQUIREMENTS])
        (env / ".complete").write_text("")
        return python


def project_wheel(root: Path, deps: Path, out: Path, say: Say) -> Path:
    """Build the project's wheel from a copy of its packaged files into `out`."""
    python = build_python(deps, say)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="calico-src-") as stage:
        for rel in packaged_files(root):
            (Path(stage) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, Path(stage) / rel)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        _run([str(python), "-c", "import sys; from setuptools import build_meta; "
              "build_meta.build_wheel(sys.argv[1])", str(out)], None, env=env,
             cwd=Path(stage))
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise CommandFailed(f"expected one project wheel in {out}, found {len(wheels)}")
    say(f"wheels: built {wheels[0].name}")
    return wheels[0]


# --- the build ----------------------------------------------------------------------------------

class DockerLike(Protocol):
    """What the build needs of an engine client (`calicoctl.dockercli.DockerCLI`)."""

    @property
    def address(self) -> str: ...

    def answers(self) -> str | None: ...

    def image(self, name: str) -> dict[str, Any] | None: ...

    def run(self, *args: str, check: bool = True, timeout: float | None = None,
            stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[str]: ...

    def stream(self, *args: str, say: Say, stdin: IO[bytes] | None = None) -> None: ...


@dataclass(frozen=True)
class Built:
    image: str
    image_id: str
    key: str
    seconds: float


def ensure_base(docker: DockerLike, say: Say, mirror: str | None = None) -> str:
    """The base image tag, imported into the engine unless it is there already."""
    tag = base_tag()
    if docker.image(tag) is not None:
        say(f"base: {tag} is on the engine already")
        return tag
    tar = base_tar(say, mirror)
    say(f"base: docker import {tar.name} as {tag}")
    with open(tar, "rb") as f:
        docker.run("import", "-", tag, stdin=f, timeout=600)
    return tag


def build_image(say: Say, tags: tuple[str, ...] = (), source: str | None = None,
                mirror: str | None = None, docker: DockerLike | None = None) -> Built:
    """Build the node image on the engine DOCKER_HOST names; returns what was built."""
    from calicoctl.dockercli import DockerCLI

    started = time.monotonic()
    root = source_root(source)
    docker = docker or DockerCLI(timeout=600)
    why = docker.answers()
    if why is not None:
        raise CommandFailed(f"no Docker engine answers at {docker.address}: {why}")
    key = image_key(root)
    base = ensure_base(docker, say, mirror)
    deps = dependency_wheels(root, say)
    names = (DEFAULT_IMAGE, *tags)
    with tempfile.TemporaryDirectory(prefix="calico-node-ctx-") as ctx:
        context = Path(ctx)
        shutil.copy2(root / "node-image" / "Dockerfile", context / "Dockerfile")
        (context / "wheels" / "deps").mkdir(parents=True)
        for wheel in sorted(deps.glob("*.whl")):
            shutil.copy2(wheel, context / "wheels" / "deps" / wheel.name)
        project_wheel(root, deps, context / "wheels" / "project", say)
        say(f"image: docker build (base {base})")
        args = ["build", "--network", "none", "--build-arg", f"BASE={base}",
                "--build-arg", f"VERSION={__version__}", "--build-arg", f"SOURCE_KEY={key}"]
        for name in names:
            args += ["-t", name]
        docker.stream(*args, str(context), say=lambda line: say(f"  {line}"))
    info = docker.image(names[0])
    if info is None:
        raise CommandFailed(f"docker build finished but {names[0]} is not on the engine")
    return Built(names[0], str(info["Id"]), key, time.monotonic() - started)


# --- the command --------------------------------------------------------------------------------

@click.group("image")
def image_group() -> None:
    """Build the node image (felix, confd, BIRD under supervisord) without a registry."""


@image_group.command("build")
@click.option("--tag", "tags", multiple=True, metavar="NAME",
              help=f"Another name for the image (it is always tagged {DEFAULT_IMAGE}).")
@click.option("--source", default=None, type=click.Path(file_okay=False),
              help="The checkout to build (default: the one this calicoctl runs from).")
@click.option("--mirror", default=None, metavar="URL",
              help=f"Debian mirror for the base [env CALICO_DEBIAN_MIRROR; default "
                   f"{DEFAULT_MIRROR}].")
def image_build(tags: tuple[str, ...], source: str | None, mirror: str | None) -> None:
    """Build the node image on the Docker engine DOCKER_HOST names.

    \b
    The Debian base (debootstrap, about a minute) and the dependency wheels are made
    once and cached in $CALICO_IMAGE_CACHE (default /var/cache/pycalico-net); a rebuild
    after a code change rebuilds only the image's last layer.
    """
    def say(line: str) -> None:
        click.echo(line)

    built = build_image(say, tags, source, mirror)
    click.echo(f"Built {built.image} ({built.image_id[7:19]}, source key {built.key}) "
               f"in {built.seconds:.1f} s")
