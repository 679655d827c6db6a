"""The demo's connectivity matrix: which checks run, what is expected, how it is shown.

Pure: no I/O. Owns the checks (ping, TCP to the denied port, TCP to another port; each
over IPv4 and IPv6, between every ordered pair of distinct workloads), the probe plan
handed to `demo.agent probe` for each source workload, the expected outcome before and
after the deny rule, the aligned tables and the one-line summaries (the system test and
CI read those: `matrix <phase> IPv<v>: ping N/M, tcp:P N/M, ... -> as expected`).

Leaves to others: running the probes (`demo.cluster` through `demo.agent`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DENIED_PORT = 8080
OPEN_PORT = 9090
FAMILIES = (4, 6)
OK, BLOCKED = "ok", "--"


@dataclass(frozen=True)
class Check:
    name: str  # as shown: "ping", "tcp:8080"
    kind: str  # "ping" or "tcp" (demo.agent's kinds)
    port: int = 0


CHECKS = (Check("ping", "ping"), Check(f"tcp:{DENIED_PORT}", "tcp", DENIED_PORT),
          Check(f"tcp:{OPEN_PORT}", "tcp", OPEN_PORT))


@dataclass(frozen=True)
class Target:
    """A workload as the matrix sees it: a short label and its addresses."""

    label: str  # "host1/w1"
    ipv4: str
    ipv6: str

    def address(self, family: int) -> str:
        return self.ipv4 if family == 4 else self.ipv6


# (source label, destination label, family, check name) -> reachable
Results = Mapping[tuple[str, str, int, str], bool]


def probe_plan(source: Target, targets: Sequence[Target]) -> list[list[object]]:
    """The checks `source` runs: [id, kind, address, port] for demo.agent's `probe`."""
    return [[f"{dst.label}|{fam}|{chk.name}", chk.kind, dst.address(fam), chk.port]
            for dst in targets if dst.label != source.label
            for fam in FAMILIES for chk in CHECKS]


def parse_probe(source: Target, answer: Mapping[str, bool]) -> dict[tuple[str, str, int, str],
                                                                    bool]:
    """demo.agent's answer for `source` as Results entries."""
    out = {}
    for check_id, ok in answer.items():
        dst, fam, name = check_id.split("|")
        out[(source.label, dst, int(fam), name)] = bool(ok)
    return out


def expected(check: Check, deny_rule: bool) -> bool:
    """Whether `check` should succeed: everything does, except TCP to the denied port
    once the deny rule is in place."""
    return not (deny_rule and check.port == DENIED_PORT)


def mismatches(results: Results, targets: Sequence[Target], deny_rule: bool) -> list[str]:
    """Every check whose result differs from the expectation (or is missing)."""
    wrong = []
    for src in targets:
        for dst in targets:
            if src.label == dst.label:
                continue
            for fam in FAMILIES:
                for chk in CHECKS:
                    got = results.get((src.label, dst.label, fam, chk.name))
                    if got != expected(chk, deny_rule):
                        state = "missing" if got is None else ("ok" if got else "blocked")
                        wrong.append(f"{src.label} -> {dst.label} IPv{fam} {chk.name}: {state}")
    return wrong


def render_table(results: Results, targets: Sequence[Target], family: int) -> list[str]:
    """Rows are sources, columns destinations; each cell shows the checks in order."""
    cell_w = max(len(" ".join(OK for _ in CHECKS)), *(len(t.label) for t in targets))
    corner = "from \\ to"
    label_w = max(len(corner), *(len(t.label) for t in targets))
    lines = [f"IPv{family}: each cell shows {' '.join(c.name for c in CHECKS)} "
             f"({OK} = reached, {BLOCKED} = no answer)",
             f"{corner:<{label_w}}  " + "  ".join(f"{t.label:<{cell_w}}"
                                                      for t in targets).rstrip()]
    for src in targets:
        cells = []
        for dst in targets:
            if src.label == dst.label:
                cells.append(f"{'.':<{cell_w}}")
                continue
            marks = []
            for chk in CHECKS:
                got = results.get((src.label, dst.label, family, chk.name))
                marks.append(OK if got else BLOCKED)
            cells.append(f"{' '.join(marks):<{cell_w}}")
        lines.append(f"{src.label:<{label_w}}  " + "  ".join(cells).rstrip())
    return lines


def summary(results: Results, targets: Sequence[Target], family: int, phase: str,
            deny_rule: bool) -> tuple[str, bool]:
    """`matrix <phase> IPv<v>: ping 30/30, tcp:8080 0/30, tcp:9090 30/30 -> as expected`
    (counts are successful/attempted) and whether it is as expected."""
    parts, good = [], True
    pairs = [(s.label, d.label) for s in targets for d in targets if s.label != d.label]
    for chk in CHECKS:
        got = [results.get((s, d, family, chk.name)) for s, d in pairs]
        reached = sum(1 for g in got if g)
        want = len(pairs) if expected(chk, deny_rule) else 0
        good = good and reached == want and None not in got
        parts.append(f"{chk.name} {reached}/{len(pairs)}")
    verdict = "as expected" if good else "NOT as expected"
    return f"matrix {phase} IPv{family}: {', '.join(parts)} -> {verdict}", good
