"""The `calicoctl` program's first step: hand `policy trace` to felix's trace program
before anything else loads.

Owns: recognising `calicoctl [GLOBAL OPTIONS] policy trace ARGS` (`trace_handoff`: the
etcd options and --debug of the top-level group, each known here by name; --log-level
with one of its choices) and replacing this process with `calico-felix-trace` (exec), its
etcd options in the environment - what `calicoctl.policy` does through click, without
click: a query then pays one interpreter and felix's modules, not calicoctl's start-up
as well (~45 ms of CPU) and a process waiting on another. Anything else, or anything
unusual (an option not known here, `--help`, a missing program), goes to the click
group (`calicoctl.main`) unchanged, which also serves in-process callers (tests).
`program_env` and `trace_program` are shared with `calicoctl.policy`, so both paths
run the same program with the same environment.

Leaves to others: every command and its errors (`calicoctl.main`), the trace itself and
its options (`felix.trace.main`, a program: calicoctl never imports felix).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PROGRAM = "calico-felix-trace"
PROG_NAME = "calicoctl policy trace"

# The top-level group's options that take a value (calicoctl.main.cli; a unit test keeps
# the two in step) -> the variable `calico-felix-trace` reads it from (None: not passed).
VALUE_OPTIONS: dict[str, str | None] = {
    "--etcd-endpoints": "ETCD_ENDPOINTS", "--etcd-authority": "ETCD_AUTHORITY",
    "--etcd-ca-cert-file": "ETCD_CA_CERT_FILE", "--etcd-cert-file": "ETCD_CERT_FILE",
    "--etcd-key-file": "ETCD_KEY_FILE", "--etcd-username": "ETCD_USERNAME",
    "--log-level": None}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def trace_program() -> str | None:
    """`calico-felix-trace` next to this interpreter, else on PATH; None when missing."""
    here = Path(sys.executable).with_name(PROGRAM)
    if here.is_file():
        return str(here)
    return shutil.which(PROGRAM)


def program_env(env: Mapping[str, str], options: Mapping[str, str | None]) -> dict[str, str]:
    """`env` with the etcd options given on calicoctl's command line (variable -> value;
    unset or empty ones leave the environment's)."""
    out = dict(env)
    for var, value in options.items():
        if value:
            out[var] = value
    return out


def trace_command(args: Sequence[str], debug: bool, program: str) -> list[str]:
    cmd = [program, "--prog", PROG_NAME, *args]
    if debug and "--debug" not in args:
        cmd.append("--debug")
    return cmd


def trace_handoff(argv: Sequence[str], env: Mapping[str, str],
                  program: str) -> tuple[list[str], dict[str, str]] | None:
    """(command, environment) running `calicoctl ARGV` as `calico-felix-trace` when ARGV
    is `[GLOBAL OPTIONS] policy trace ARGS`; None for anything else."""
    options: dict[str, str | None] = {}
    debug = False
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name == "--debug" and not eq:
            debug, i = True, i + 1
            continue
        if name not in VALUE_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value, i = argv[i + 1], i + 1
        i += 1
        if name == "--log-level" and value not in LOG_LEVELS:
            return None  # click says why
        var = VALUE_OPTIONS[name]
        if var is not None:
            options[var] = value
    if list(argv[i:i + 2]) != ["policy", "trace"]:
        return None
    return trace_command(argv[i + 2:], debug, program), program_env(env, options)


def main() -> None:
    argv = sys.argv[1:]
    if "policy" in argv:  # cheap test first: every other command goes straight to click
        program = trace_program()
        handoff = trace_handoff(argv, os.environ, program) if program else None
        if handoff is not None:
            sys.stdout.flush()
            os.execve(handoff[0][0], handoff[0], handoff[1])
    from calicoctl.main import main as click_main

    click_main()
