"""`python -m faults` (`scripts/faults.sh`): the reliability figures, printed as JSON.

    python -m faults [--quick] [matrix] [soak] [fuzz] [--only FAULT|WORD ...]
                     [--soak-seconds N]

- `matrix`: builds a 3-host cluster with a 3-member etcd and one workload per host, runs
  every fault of `faults.matrix` (the quick mode: felix kill -9, confd kill -9 and one
  etcd member kill) and prints, per fault, packets lost and the longest gap per flow,
  the time to converge after recovery, `ipam check` and the fresh-felix comparison;
- `soak`: the churn soak (`faults.soak`) on a fresh cluster: 10 minutes, or 30 s with
  `--quick`;
- `fuzz`: the hypothesis fuzzers in tests/fuzz with 10,000 examples per property (200
  with `--quick`; the CNI executable's property 60 in both), run by pytest; prints each
  property's outcome, time and the cases it ran (hypothesis's statistics); `--only
  WORD ...` picks the fuzzers whose names contain a word: `fuzz --only libnetwork cni`.
With no section named, all three run. The JSON also lands in faults/results/<section>.json.
The exit status is 1 when a goal is missed: a lossless fault lost packets, any fault took
more than 10 s to converge, a check failed, the soak leaked or grew more than 10%, a
fuzzer failed.

Leaves to others: everything it runs (`faults.*`, tests/fuzz).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CONVERGE_GOAL_S = 10.0
RSS_GOAL_PCT = 10.0


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def matrix_section(quick: bool, only: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    from faults.cluster import Cluster
    from faults.matrix import run_matrix

    started = time.monotonic()
    with Cluster(prefix="fltx") as cluster:
        cluster.start()
        results = run_matrix(cluster, quick, only)
    missed = []
    for r in results:
        if r["goal_lossless"] and (r["ping_lost"] or r["tcp_records_lost"]):
            missed.append(f"{r['fault']}: {r['ping_lost']} packets lost")
        if r["converge_after_recovery_s"] > CONVERGE_GOAL_S:
            missed.append(f"{r['fault']}: converged in {r['converge_after_recovery_s']} s")
        if not r["ipam_check_clean"] or not r["dataplane_matches_fresh_felix"]:
            missed.append(f"{r['fault']}: ipam check or fresh-felix comparison failed")
    return {"faults": results, "seconds": round(time.monotonic() - started, 1)}, missed


def soak_section(seconds: float) -> tuple[dict[str, Any], list[str]]:
    from faults.cluster import Cluster
    from faults.soak import soak

    with Cluster(prefix="flts") as cluster:
        cluster.start()
        result = soak(cluster, seconds)
    missed = []
    if result["leaks"] or not result["ipam_check_clean"]:
        missed.append(f"soak leaked: {result['leaks']}")
    if result["max_rss_growth_pct"] > RSS_GOAL_PCT:
        missed.append(f"soak: RSS grew {result['max_rss_growth_pct']}%")
    if result["daemons_restarted"]:
        missed.append(f"soak: daemons restarted {result['daemons_restarted']}")
    return result, missed


def cases_run(stats: str) -> dict[str, int]:
    """Examples each property ran in its generate phase, from hypothesis's statistics
    (`--hypothesis-show-statistics`), by test name: most properties run the profile's
    count, but one may run fewer (the CNI executable's, see tests/fuzz/test_fuzz_cni.py)."""
    out: dict[str, int] = {}
    name = None
    for line in stats.splitlines():
        head = re.match(r"^\S+::(\S+):$", line)
        if head:
            name = head.group(1)
            continue
        counted = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", line)
        if name is not None and counted and name not in out:
            out[name] = int(counted.group(1)) + int(counted.group(2))
    return out


def _failures(stdout: str) -> str:
    """The end of pytest's failure report and its summary, without the statistics."""
    before, _, after = stdout.partition(" Hypothesis Statistics ")
    summary = after[after.find("short test summary"):] if "short test summary" in after else ""
    return before[-2000:] + summary[-500:]


def fuzz_section(quick: bool, only: list[str] | None = None
                 ) -> tuple[dict[str, Any], list[str]]:
    profile = "quick" if quick else "full"
    select = ["-k", " or ".join(only)] if only else []
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "junit.xml")
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-o", "timeout=7200", "tests/fuzz", f"--junitxml={report}",
                               "--hypothesis-show-statistics", *select],
                              cwd=ROOT,
                              env={**os.environ, "CALICO_FUZZ_PROFILE": profile},
                              capture_output=True, text=True, check=False)
        tests: list[dict[str, Any]] = []
        counts = cases_run(proc.stdout)
        if os.path.exists(report):
            for case in ET.parse(report).getroot().iter("testcase"):
                failed = case.find("failure") is not None or case.find("error") is not None
                tests.append({"property": f"{case.get('classname')}::{case.get('name')}",
                              "passed": not failed, "seconds": float(case.get("time", 0)),
                              "cases": counts.get(str(case.get("name")))})
    examples = 200 if quick else 10_000
    result = {"profile": profile, "examples_per_property": examples, "properties": tests,
              "passed": sum(t["passed"] for t in tests),
              "failed": sum(not t["passed"] for t in tests),
              "seconds": round(time.monotonic() - started, 1)}
    missed = [] if proc.returncode == 0 else [f"fuzz: pytest exit {proc.returncode}: "
                                              + _failures(proc.stdout)]
    return result, missed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/faults.sh", description=__doc__.split("\n")[0])
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help="matrix, soak and/or fuzz (default: all three)")
    p.add_argument("--quick", action="store_true", help="the small versions (as the suite)")
    p.add_argument("--only", nargs="+", metavar="FAULT",
                   help="these faults only; with fuzz: the fuzzers whose test names "
                        "contain these words (pytest -k), e.g. libnetwork cni")
    p.add_argument("--soak-seconds", type=float, default=None,
                   help="soak length (default 600, 30 with --quick)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("faults: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    # Forking calicoctl from threads while gRPC calls run elsewhere makes gRPC's fork
    # handlers print a warning per fork; they are not needed (children exec at once).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    sections = args.sections or ["matrix", "soak", "fuzz"]
    unknown = [s for s in sections if s not in ("matrix", "soak", "fuzz")]
    if unknown:
        p.error(f"unknown section {unknown[0]!r} (matrix, soak, fuzz)")
    out: dict[str, Any] = {"quick": args.quick, "load_average_at_start": _load()}
    missed: list[str] = []
    RESULTS.mkdir(exist_ok=True)
    for section in sections:
        if section == "matrix":
            result, miss = matrix_section(args.quick, args.only)
        elif section == "soak":
            seconds = args.soak_seconds or (30.0 if args.quick else 600.0)
            result, miss = soak_section(seconds)
        else:
            result, miss = fuzz_section(args.quick, args.only)
        result["load_average_at_end"] = _load()
        out[section] = result
        missed += miss
        (RESULTS / f"{section}.json").write_text(json.dumps(result, indent=2) + "\n")
    out["goals_missed"] = missed
    print(json.dumps(out, indent=2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
