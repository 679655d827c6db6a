"""`calicoctl version` and `calicoctl completion bash|zsh|fish`.

Owns: printing the version, and printing click's shell-completion script (the same
text `_CALICOCTL_COMPLETE=<shell>_source calicoctl` produces). Neither touches etcd.
"""

from __future__ import annotations

import click

from calicoctl import __version__


@click.command("version")
def version() -> None:
    """Print the calicoctl version."""
    click.echo(f"calicoctl version {__version__}")


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell-completion script for SHELL.

    \b
    bash: eval "$(calicoctl completion bash)"
    zsh:  eval "$(calicoctl completion zsh)"
    fish: calicoctl completion fish | source
    """
    from click.shell_completion import get_completion_class

    ctx = click.get_current_context()
    root = ctx.find_root()
    cls = get_completion_class(shell)
    assert cls is not None
    comp = cls(root.command, {}, "calicoctl", "_CALICOCTL_COMPLETE")
    click.echo(comp.source())


COMMANDS = [version, completion]
