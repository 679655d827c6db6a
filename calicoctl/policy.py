"""`calicoctl policy trace`: why a flow is allowed or dropped, asked from the shell.

Owns: the command and handing it to felix's trace program (`calico-felix-trace`, next
to this interpreter or on PATH) with the etcd options of this invocation in its
environment; its output and exit code are this command's. calicoctl does not import
felix: the trace must be felix's own calculation, so the dependency is on a program and
its command line (as `node run` runs `calico-confd --onetime`).

Leaves to others: the trace, its options and its help (`felix.trace.main`; see
docs/policy.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from calicoctl.context import ctl
from calicoctl.errors import CommandFailed

PROGRAM = "calico-felix-trace"


def trace_program() -> str:
    here = Path(sys.executable).with_name(PROGRAM)
    if here.is_file():
        return str(here)
    found = shutil.which(PROGRAM)
    if found is None:
        raise CommandFailed(f"cannot trace: {PROGRAM} (installed with felix) is missing")
    return found


@click.group()
def policy() -> None:
    """Ask the security policy questions: trace a flow."""


@policy.command("trace", add_help_option=False,
                context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def trace(args: tuple[str, ...]) -> None:
    """Trace a flow through felix's rules: --from SRC --to DST [--protocol P] [--port N]
    [--source-port N] [-o text|json|yaml] (see --help)."""
    obj = ctl()
    env = dict(os.environ)
    for var, value in (("ETCD_ENDPOINTS", obj.endpoints), ("ETCD_AUTHORITY", obj.authority),
                       ("ETCD_CA_CERT_FILE", obj.ca_cert), ("ETCD_CERT_FILE", obj.cert_file),
                       ("ETCD_KEY_FILE", obj.key_file)):
        if value:
            env[var] = value
    cmd = [trace_program(), "--prog", "calicoctl policy trace", *args]
    if obj.debug and "--debug" not in args:
        cmd.append("--debug")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.stdout:
        click.echo(proc.stdout, nl=False)
    if proc.stderr:
        click.echo(proc.stderr, nl=False, err=True)
    click.get_current_context().exit(proc.returncode)


COMMANDS = [policy]
