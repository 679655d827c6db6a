"""What each simulated host's programs cost: resident memory and CPU, per program.

Owns: finding the processes that live in each host's network namespace (one pass over
/proc, matching `/proc/PID/ns/net` against the inode of `/run/netns/NAME`: no process
per host), naming each by program (`felix`, `confd`, `bird`, `supervisord`, anything
else `other`), and reading for each its CPU seconds (user + system, plus those of the
children it waited for, so felix's iptables-save and ipset commands count as felix's),
its RSS (VmRSS) and its PSS (`smaps_rollup`: shared pages divided among the processes
sharing them, the fair share of the interpreter and libraries that 150 Python processes
map). `usage(before, after, seconds)` turns two samples into per-program and per-host
figures.

Leaves to others: which hosts exist and when to sample (the benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.common import percentile

PROGRAMS = ("felix", "confd", "bird", "supervisord")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    host: str
    program: str
    cpu_s: float  # utime + stime + cutime + cstime
    rss_kb: int
    pss_kb: int


def program_of(argv: list[str]) -> str:
    """felix, confd, bird, supervisord or other, from a command line."""
    words = " ".join(argv[:4])
    if "calico-felix" in words or "felix.main" in words:
        return "felix"
    if "calico-confd" in words or "confd.main" in words:
        return "confd"
    if "supervisord" in words:
        return "supervisord"
    if argv and os.path.basename(argv[0]) == "bird":
        return "bird"
    return "other"


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def _read_proc(pid: int) -> tuple[list[str], float, int, int] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        rss = pss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except (OSError, IndexError, ValueError):
        return None  # gone meanwhile, or a kernel thread
    if fields[0] == "Z":
        return None
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return argv, ticks / CLK_TCK, rss, pss


def sample(hosts: Mapping[str, str]) -> list[Proc]:
    """Every process in the hosts' namespaces (`hosts`: host name -> namespace name)."""
    by_inode = {ino: host for host, ns in hosts.items()
                if (ino := _netns_inode(ns)) is not None}
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        host = by_inode.get(int(link[5:-1])) if link.startswith("net:[") else None
        if host is None:
            continue
        info = _read_proc(int(entry))
        if info is None:
            continue
        argv, cpu, rss, pss = info
        out.append(Proc(int(entry), host, program_of(argv), cpu, rss, pss))
    return out


def _summary(values: list[float], digits: int = 2) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "max": 0.0}
    return {"mean": round(sum(values) / len(values), digits),
            "p50": round(percentile(values, 50), digits), "max": round(max(values), digits)}


def usage(before: Iterable[Proc], after: Iterable[Proc], seconds: float,
          hosts: Iterable[str]) -> dict[str, Any]:
    """Per program and per host: CPU in % of one core over `seconds` (processes present
    in both samples), RSS and PSS in MB (from `after`)."""
    hosts = list(hosts)
    start = {p.pid: p for p in before}
    cpu: dict[tuple[str, str], float] = {}
    rss: dict[tuple[str, str], float] = {}
    pss: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], int] = {}
    for p in after:
        key = (p.host, p.program)
        counts[key] = counts.get(key, 0) + 1
        rss[key] = rss.get(key, 0.0) + p.rss_kb / 1024
        pss[key] = pss.get(key, 0.0) + p.pss_kb / 1024
        if p.pid in start:
            cpu[key] = cpu.get(key, 0.0) + (p.cpu_s - start[p.pid].cpu_s) / seconds * 100
    programs = sorted({prog for _, prog in counts}, key=lambda x: (x not in PROGRAMS, x))
    per_program = {}
    for prog in programs:
        keys = [(h, prog) for h in hosts if (h, prog) in counts]
        per_program[prog] = {
            "processes_per_host": _summary([float(counts[k]) for k in keys], 1),
            "cpu_percent_of_core": _summary([cpu.get(k, 0.0) for k in keys], 3),
            "rss_mb": _summary([rss[k] for k in keys], 1),
            "pss_mb": _summary([pss[k] for k in keys], 1)}
    host_cpu = [sum(v for (h, _), v in cpu.items() if h == host) for host in hosts]
    host_rss = [sum(v for (h, _), v in rss.items() if h == host) for host in hosts]
    host_pss = [sum(v for (h, _), v in pss.items() if h == host) for host in hosts]
    return {"window_s": round(seconds, 1), "per_program": per_program,
            "per_host": {"cpu_percent_of_core": _summary(host_cpu, 3),
                         "rss_mb": _summary(host_rss, 1), "pss_mb": _summary(host_pss, 1)}}
