"""`calicoctl policy trace`: why a flow is allowed or dropped, asked from the shell.

Owns: the command and handing it to felix's trace program (`calico-felix-trace`, next
to this interpreter or on PATH) with the etcd options of this invocation in its
environment; its output and exit code are this command's. calicoctl does not import
felix: the trace must be felix's own calculation, so the dependency is on a program and
its command line (as `node run` runs `calico-confd --onetime`). The `calicoctl` program
itself hands `policy trace` over before click loads (`calicoctl.launch`, an exec); this
command is the path for everything else that reaches it (in-process callers, options
the hand-over does not know), with the same program, arguments and environment.

Leaves to others: the trace, its options and its help (`felix.trace.main`; see
docs/policy.md).
"""

from __future__ import annotations

import os
import subprocess

import click

from calicoctl.context import ctl
from calicoctl.errors import CommandFailed
from calicoctl.launch import PROGRAM, program_env, trace_command, trace_program


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
    program = trace_program()
    if program is None:
        raise CommandFailed(f"cannot trace: {PROGRAM} (installed with felix) is missing")
    env = program_env(os.environ, {
        "ETCD_ENDPOINTS": obj.endpoints, "ETCD_AUTHORITY": obj.authority,
        "ETCD_CA_CERT_FILE": obj.ca_cert, "ETCD_CERT_FILE": obj.cert_file,
        "ETCD_KEY_FILE": obj.key_file, "ETCD_USERNAME": obj.username})
    cmd = trace_command(args, obj.debug, program)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.stdout:
        click.echo(proc.stdout, nl=False)
    if proc.stderr:
        click.echo(proc.stderr, nl=False, err=True)
    click.get_current_context().exit(proc.returncode)


COMMANDS = [policy]
