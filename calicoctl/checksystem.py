"""`calicoctl checksystem`: can this machine run a node?

Owns: the checks and their report: kernel version; the xt_set and ip6_tables modules
(loaded, built in, or loadable: /proc/modules, modules.builtin/.dep,
/sys/module, /proc/config.gz); the iptables, ip6tables,
iptables-restore, ipset, ip and bird binaries; etcd reachable and at least 3.0; the
forwarding sysctls felix needs (read only: this command never changes the system).
Exits 1 when any check fails. `--fix` is accepted and ignored, as in v0.x.

The tunnels are optional checks (a WARN line, not a failure): whether this kernel can
create VXLAN and IPIP devices (`tunnel_support`), found by creating one in a throw-away
network namespace (`unshare --net`, which leaves the system as it was), else from the
module and kernel-config files above. `calicoctl pool add --ipip` asks the same.

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
MODULE_CONFIG = {"xt_set": "CONFIG_NETFILTER_XT_SET", "ip6_tables": "CONFIG_IP6_NF_IPTABLES",
                 "ipip": "CONFIG_NET_IPIP", "vxlan": "CONFIG_VXLAN"}
# Encapsulations: (check name, device kind, module, what to do without it).
TUNNEL_CHECKS = (("kernel VXLAN", "vxlan", "vxlan", "VXLAN pools cannot work on this host"),
                 ("kernel IPIP", "ipip", "ipip", "IPIP pools cannot work on this host; "
                  "use VXLAN pools (pool add --vxlan)"))
OPTIONAL_CHECKS = frozenset(name for name, *_ in TUNNEL_CHECKS)
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


def _probe_device(kind: str) -> tuple[bool | None, str]:
    """Create a `kind` device in a throw-away network namespace: (True, "") if the
    kernel can, (False, why) if it cannot, (None, why) if the probe could not run."""
    import subprocess

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None, "unshare or ip missing"
    try:
        extra = ["id", "1", "dstport", "4789"] if kind == "vxlan" else []
        proc = subprocess.run(["unshare", "--net", "--", "ip", "link", "add", "calico-probe",
                               "type", kind, *extra], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if proc.returncode == 0:
        return True, ""
    err = " ".join(proc.stderr.split())
    if proc.stderr.startswith("unshare"):
        return None, err
    return False, err


def tunnel_support(kind: str, root: str = "/", probe: bool = True) -> tuple[bool | None, str]:
    """Can this kernel create `kind` ("vxlan", "ipip") devices? (True, how), (False, why)
    or (None, why) when it cannot tell."""
    if probe:
        ok, why = _probe_device(kind)
        if ok is not None:
            return ok, (f"`ip link add type {kind}` works" if ok
                        else f"`ip link add type {kind}`: {why}")
    how = module_available(kind, root=root)
    if how is not None:
        return True, f"module {how}"
    option = MODULE_CONFIG[kind]
    try:
        import gzip

        with gzip.open(os.path.join(root, "proc/config.gz"), "rt") as f:
            if any(line.startswith(f"# {option} is not set") for line in f):
                return False, f"{option} is not set in this kernel and it has no module"
    except OSError:
        pass
    return None, f"no {kind} module found (no /proc/config.gz to be sure)"


def run_checks(etcd_version: Callable[[], str], tunnels: bool = True) -> list[Check]:
    """Every check; `tunnels=False` leaves out the optional tunnel checks (`node run`
    ignores them: each probes with a throw-away network namespace, two processes and
    the kernel's namespace teardown, per host started)."""
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
    for name, kind, _module, without in TUNNEL_CHECKS if tunnels else ():
        supported, detail = tunnel_support(kind)
        checks.append((name, supported is True,
                       detail if supported else f"{detail}: {without}"))
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
        level = "OK" if ok else "WARN" if what in OPTIONAL_CHECKS else "FAIL"
        click.echo(f"[{level:>4}] {what}: {detail}")
    failed = [c for c in checks if not c[1] and c[0] not in OPTIONAL_CHECKS]
    if failed:
        raise CommandFailed(f"{len(failed)} check(s) failed: "
                            + ", ".join(c[0] for c in failed))
    click.echo("System meets the requirements")


COMMANDS = [checksystem]
