"""`calicoctl checksystem`: can this machine run a node?

Owns: the checks and their report: kernel version; the xt_set and ip6_tables modules
(loaded, built in, or loadable: /proc/modules, modules.builtin/.dep,
/sys/module, /proc/config.gz); the iptables, ip6tables,
iptables-restore, ipset, ip and bird binaries; etcd reachable and at least 3.0; the
forwarding sysctls felix needs (read only: this command never changes the system).
Exits 1 when any check fails. `--fix` is accepted and ignored, as in v0.x.

Leaves to others: fixing anything (the node issue's start-up, the operator).
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable

import click

from calicoctl.context import ctl

REQUIRED_MODULES = ("xt_set", "ip6_tables")
# The kernel config option of each module, for kernels without /lib/modules.
MODULE_CONFIG = {"xt_set": "CONFIG_NETFILTER_XT_SET", "ip6_tables": "CONFIG_IP6_NF_IPTABLES"}
REQUIRED_BINARIES = ("iptables", "ip6tables", "iptables-restore", "ipset", "ip", "bird")
REQUIRED_SYSCTLS = {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"}
MIN_KERNEL = (2, 6, 24)
MIN_ETCD = (3, 0)

Check = tuple[str, bool, str]  # (what, ok, detail)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("-")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def module_available(name: str, release: str | None = None, root: str = "/") -> str | None:
    """How the module is available ("loaded", "built in", "loadable"), or None.

    Looks at /proc/modules, modules.builtin and modules.dep, /sys/module, and finally
    the kernel's own config (/proc/config.gz) for kernels shipped without modules."""
    release = release or platform.release()
    try:
        with open(os.path.join(root, "proc/modules")) as f:
            if any(line.split()[0] == name for line in f if line.strip()):
                return "loaded"
    except OSError:
        pass
    for fname, how in (("modules.builtin", "built in"), ("modules.dep", "loadable")):
        path = os.path.join(root, "lib/modules", release, fname)
        try:
            with open(path) as f:
                for line in f:
                    mod = line.split(":")[0].strip()
                    base = os.path.basename(mod).split(".ko")[0]
                    if base.replace("-", "_") == name:
                        return how
        except OSError:
            continue
    if os.path.isdir(os.path.join(root, "sys/module", name)):
        return "built in"
    option = MODULE_CONFIG.get(name)
    if option:
        import gzip

        try:
            with gzip.open(os.path.join(root, "proc/config.gz"), "rt") as f:
                for line in f:
                    if line.startswith(f"{option}="):
                        value = line.strip().split("=", 1)[1]
                        return {"y": "built in", "m": "loadable"}.get(value)
        except OSError:
            pass
    return None


def run_checks(etcd_version: Callable[[], str]) -> list[Check]:
    checks: list[Check] = []
    kernel = platform.release()
    checks.append(("kernel version", _version_tuple(kernel) >= MIN_KERNEL, kernel))
    for mod in REQUIRED_MODULES:
        how = module_available(mod)
        checks.append((f"kernel module {mod}", how is not None, how or "not found"))
    for binary in REQUIRED_BINARIES:
        path = shutil.which(binary)
        checks.append((f"binary {binary}", path is not None, path or "not on PATH"))
    for name, wanted in REQUIRED_SYSCTLS.items():
        try:
            with open(f"/proc/sys/{name}") as f:
                value = f.read().strip()
        except OSError as exc:
            value = f"unreadable: {exc.strerror}"
        checks.append((f"sysctl {name.replace('/', '.')}", value == wanted,
                       f"{value} (needs {wanted})"))
    try:
        version = etcd_version()
        ok = _version_tuple(version) >= MIN_ETCD
        checks.append(("etcd", ok, f"version {version}" + ("" if ok else " (needs >= 3.0)")))
    except Exception as exc:  # noqa: BLE001 - any failure is the check's result
        checks.append(("etcd", False, f"unreachable: {exc}"))
    return checks


@click.command("checksystem")
@click.option("--fix", is_flag=True, hidden=True, help="Deprecated; does nothing.")
def checksystem(fix: bool) -> None:
    """Check kernel modules, binaries, sysctls and etcd; exit 1 on any failure."""
    from calicoctl.errors import CommandFailed

    if fix:
        click.echo("Warning: --fix is deprecated and does nothing", err=True)
    checks = run_checks(lambda: ctl().store.version())
    for what, ok, detail in checks:
        click.echo(f"[{'OK' if ok else 'FAIL':>4}] {what}: {detail}")
    failed = [c for c in checks if not c[1]]
    if failed:
        raise CommandFailed(f"{len(failed)} check(s) failed: "
                            + ", ".join(c[0] for c in failed))
    click.echo("System meets the requirements")


COMMANDS = [checksystem]
