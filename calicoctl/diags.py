"""`calicoctl diags`: a tar.gz of everything needed to debug a node.

Owns: what is collected (date, hostname, IPv4/IPv6 routes and addresses,
iptables-save, ip6tables-save, ipset list, BIRD's protocols, the felix/confd log
directory, a dump of the project's etcd keys with secrets masked, and, when the node runs
in Docker, the containers' `docker inspect` and logs and BIRD's protocols asked inside
the container: `calicoctl.nodedocker.diags_steps`), the progress
display on stderr, and `mask_secrets` (pure). A step that fails is recorded in the
bundle as its error; it does not stop the others.

Leaves to others: the datastore read (`libcalico.datastore`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from typing import Any

import click

from calicoctl.context import ctl
from calicoctl.nodedocker import diags_steps

MASK = "********"
_SECRET = re.compile(r"pass(word|wd)?|token|secret|private|key|credential", re.I)

COMMANDS_TO_RUN = [
    ("ipv4_route", ["ip", "-4", "route", "show", "table", "all"]),
    ("ipv6_route", ["ip", "-6", "route", "show", "table", "all"]),
    ("ipv4_addr", ["ip", "-4", "addr"]),
    ("ipv6_addr", ["ip", "-6", "addr"]),
    ("iptables-save", ["iptables-save", "-c"]),
    ("ip6tables-save", ["ip6tables-save", "-c"]),
    ("ipset_list", ["ipset", "list"]),
]


def mask_secrets(key: str, value: str) -> str:
    """The value with secrets masked: all of it when the key's last segment names a
    secret, else any JSON field (at any depth) whose name does, and any PEM block."""
    if _SECRET.search(key.rsplit("/", 1)[-1]):
        return MASK
    if "-----BEGIN" in value:
        return MASK
    try:
        data = json.loads(value)
    except ValueError:
        return value
    if not isinstance(data, dict | list):
        return value

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: MASK if _SECRET.search(str(k)) else walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    masked = walk(data)
    return value if masked == data else json.dumps(masked, sort_keys=True)


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not installed\n"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return f"{' '.join(cmd)}: timed out\n"
    out = proc.stdout
    if proc.returncode != 0:
        out += f"\n# exit {proc.returncode}: {proc.stderr.strip()}\n"
    return out


def _etcd_dump() -> str:
    from libcalico import keyspace

    kvs, revision = ctl().store.list(keyspace.ROOT + "/")
    lines = [f"# etcd revision {revision}, {len(kvs)} keys under {keyspace.ROOT}/"]
    lines += [f"{kv.key} = {mask_secrets(kv.key, kv.value)}" for kv in kvs]
    return "\n".join(lines) + "\n"


@click.command("diags")
@click.option("--log-dir", default="/var/log/calico", show_default=True,
              help="Directory of felix and confd logs to include.")
@click.option("--bird-socket", default="/var/run/calico/bird.ctl", show_default=True,
              help="BIRD's control socket.")
@click.option("--output-dir", default=".", show_default=True,
              help="Where to write diags-DDMMYY_HHMMSS.tar.gz.")
def diags(log_dir: str, bird_socket: str, output_dir: str) -> None:
    """Collect diagnostics into a tar.gz bundle."""
    stamp = datetime.datetime.now().strftime("%d%m%y_%H%M%S")
    name = f"diags-{stamp}"
    work = tempfile.mkdtemp(prefix="calicoctl-diags-")
    try:
        root = os.path.join(work, name)
        os.makedirs(root)
        steps: list[tuple[str, Callable[[], str]]] = [
            ("date", lambda: datetime.datetime.now().isoformat() + "\n"),
            ("hostname", lambda: socket.gethostname() + "\n"),
            *[(n, lambda c=c: _run(c)) for n, c in COMMANDS_TO_RUN],
            ("bird_protocols", lambda: _run(["birdcl", "-s", bird_socket, "show",
                                             "protocols", "all"])),
            ("etcd_calico", _etcd_dump),
            *diags_steps(),  # the node containers, when the node runs in Docker
        ]
        for i, (fname, collect) in enumerate(steps, 1):
            click.echo(f"[{i}/{len(steps) + 1}] collecting {fname}", err=True)
            try:
                text = collect()
            except Exception as exc:  # noqa: BLE001 - record and go on
                text = f"failed: {exc}\n"
            with open(os.path.join(root, fname), "w") as f:
                f.write(text)
        click.echo(f"[{len(steps) + 1}/{len(steps) + 1}] collecting logs from {log_dir}",
                   err=True)
        if os.path.isdir(log_dir):
            shutil.copytree(log_dir, os.path.join(root, "logs"), dirs_exist_ok=True,
                            ignore_dangling_symlinks=True)
        else:
            with open(os.path.join(root, "logs_missing"), "w") as f:
                f.write(f"no log directory at {log_dir}\n")
        os.makedirs(output_dir, exist_ok=True)
        target = os.path.abspath(os.path.join(output_dir, f"{name}.tar.gz"))
        with tarfile.open(target, "w:gz") as tar:
            tar.add(root, arcname=name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    click.echo(f"Diags saved to {target}")


COMMANDS = [diags]
