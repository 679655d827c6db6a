"""`calicoctl cni install`: put the `calico` and `calico-ipam` CNI plugins where CNI
runtimes find them, and optionally a network configuration list that uses them.

Owns:
- the launchers written into the CNI bin dir (default /opt/cni/bin): small Python
  scripts that run this installation's plugin entry points (`cni.main:calico` and
  `cni.main:calico_ipam`) with `python -I -S` and the package's own directory on
  sys.path. Isolated mode keeps a runtime's PYTHON* variables out; skipping `site`
  saves ~15 ms of every call (the plugins need only the standard library and this
  project's packages). Written to a temporary name and renamed, so a runtime never
  runs half a file; an existing file that this command did not write (or a conflist
  with other contents) is replaced only with `--force`;
- with `--conf-dir`: `<conf-dir>/10-<network>.conflist` (spec 1.0.0): `calico` with
  calico-ipam, this node's name and the etcd settings calicoctl itself uses, followed
  by the reference `portmap` plugin (port mappings, e.g. `podman run -p`).

Leaves to others: the plugins themselves (`cni`), the runtime's own configuration
(which conflist directory and plugin path it reads: see docs/cni.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from calicoctl.context import ctl, this_hostname

MARKER = "# Installed by `calicoctl cni install`"
ENTRY_POINTS = {"calico": "calico", "calico-ipam": "calico_ipam"}


def package_root() -> str:
    """The directory holding this installation's `cni`, `workload` and `libcalico`
    packages (site-packages, or the source tree of an editable install)."""
    import importlib.util

    roots = set()
    for package in ("cni", "workload", "libcalico"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            from calicoctl.errors import CommandFailed

            raise CommandFailed(f"the {package} package is not installed with calicoctl")
        roots.add(str(Path(spec.origin).resolve().parent.parent))
    if len(roots) != 1:
        from calicoctl.errors import CommandFailed

        raise CommandFailed(f"cni, workload and libcalico come from different places: {roots}")
    return roots.pop()


def render_launcher(name: str, python: str, root: str) -> str:
    """The text of the launcher for plugin `name` (pure)."""
    return (f"#!{python} -IS\n{MARKER}: the {name} CNI plugin of {root}.\n"
            "import sys\n"
            f"sys.path.insert(0, {root!r})\n"
            f"from cni.main import {ENTRY_POINTS[name]}\n"
            f"sys.exit({ENTRY_POINTS[name]}())\n")


def _check_replaceable(path: Path, text: str, force: bool, ours: bool) -> None:
    """An existing file may be replaced only with `force`, if it holds `text` already,
    or (`ours`) if it carries this command's marker; `AlreadyExists` otherwise."""
    if not path.exists() or force:
        return
    try:
        current = path.read_text(errors="replace")
    except OSError:
        current = ""
    if current != text and not (ours and MARKER in current[:400]):
        from libcalico.errors import AlreadyExists

        raise AlreadyExists(f"{path} exists with other contents (--force replaces it)")


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Write by renaming a temporary file over `path`: nobody reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def render_conflist(network: str, nodename: str, etcd: dict[str, str], ipv6: bool,
                    mtu: int | None, log_file: str | None, portmap: bool) -> dict[str, Any]:
    """The network configuration list `--conf-dir` writes (pure)."""
    calico: dict[str, Any] = {"type": "calico", **etcd, "nodename": nodename,
                              "log_level": "info",
                              "ipam": {"type": "calico-ipam", "assign_ipv4": True,
                                       "assign_ipv6": ipv6}}
    if mtu is not None:
        calico["mtu"] = mtu
    if log_file is not None:
        calico["log_file_path"] = log_file
    plugins = [calico]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True},
                        "snat": True})
    return {"cniVersion": "1.0.0", "name": network, "plugins": plugins}


def _etcd_settings() -> dict[str, str]:
    from libcalico.datastore import EtcdSettings

    c = ctl()
    s = EtcdSettings.from_env(endpoints=c.endpoints, authority=c.authority,
                              ca_cert=c.ca_cert, cert_file=c.cert_file, key_file=c.key_file)
    out = {"etcd_endpoints": ",".join(e.url for e in s.endpoints)}
    for key, value in (("etcd_ca_cert_file", s.ca_cert), ("etcd_cert_file", s.cert_file),
                       ("etcd_key_file", s.key_file)):
        if value:
            out[key] = value
    return out


@click.group("cni")
def cni() -> None:
    """Install the calico and calico-ipam CNI plugins."""


@cni.command("install")
@click.option("--bin-dir", default="/opt/cni/bin", show_default=True,
              type=click.Path(file_okay=False), help="Where the runtime looks for plugins.")
@click.option("--conf-dir", default=None, type=click.Path(file_okay=False),
              help="Also write <conf-dir>/10-<network>.conflist.")
@click.option("--network", default="calico", show_default=True,
              help="The network name in the conflist.")
@click.option("--nodename", default=None, help="This node's name in the conflist "
              "(default: $HOSTNAME, else the system hostname).")
@click.option("--ipv6", is_flag=True, help="The conflist assigns an IPv6 address too.")
@click.option("--mtu", type=click.IntRange(68, 65535), default=None,
              help="MTU of the workload interfaces in the conflist.")
@click.option("--log-file", default=None, help="The plugins' log file in the conflist "
              "(default /var/log/calico/cni/cni.log).")
@click.option("--portmap/--no-portmap", default=True, show_default=True,
              help="Chain the reference portmap plugin after calico in the conflist.")
@click.option("--force", is_flag=True, help="Replace files this command did not write.")
def cni_install(bin_dir: str, conf_dir: str | None, network: str, nodename: str | None,
                ipv6: bool, mtu: int | None, log_file: str | None, portmap: bool,
                force: bool) -> None:
    """Install the calico and calico-ipam plugins into BIN_DIR (and a conflist)."""
    from libcalico.model.validate import validate_name

    validate_name("network", network)
    root = package_root()
    # (path, text, mode, carries our marker): all checked before any is written.
    files = [(Path(bin_dir) / name, render_launcher(name, sys.executable, root), 0o755, True)
             for name in ENTRY_POINTS]
    if conf_dir is not None:
        conf = render_conflist(network, this_hostname(nodename), _etcd_settings(), ipv6, mtu,
                               log_file, portmap)
        files.append((Path(conf_dir) / f"10-{network}.conflist",
                      json.dumps(conf, indent=2) + "\n", 0o644, False))
    for path, text, _, ours in files:
        _check_replaceable(path, text, force, ours)
    for path, text, mode, _ in files:
        _write_atomically(path, text, mode)
        click.echo(f"Installed {path}")


COMMANDS = [cni]
