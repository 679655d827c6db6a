"""click helpers for the seed-era command shapes.

Owns: `NamedGroup`, a group whose first argument may be either one of its own
subcommands (`profile add P`) or an object name followed by that object's
subcommands (`profile P rule add ...`, `endpoint ID profile show`,
`container C ip add IP`), as calicoctl v0.x's docopt grammar had it.

Leaves to others: the commands themselves.
"""

from __future__ import annotations

from typing import Any

import click

NAMED = "<name>"


class NamedGroup(click.Group):
    """A group that routes `GROUP NAME SUB ...` to its hidden per-object group."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if (args and not args[0].startswith("-") and args[0] not in self.commands
                and NAMED in self.commands):
            args = [NAMED, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        named = self.commands.get(NAMED)
        extra = f" | {named.help_name_form}" if named is not None and hasattr(
            named, "help_name_form") else ""
        formatter.write_usage(ctx.command_path, f"COMMAND [ARGS]...{extra}")


def named_subgroup(parent: NamedGroup, metavar: str, help_text: str) -> Any:
    """Decorator: register a hidden per-object group taking `metavar` then subcommands."""

    def decorate(fn: Any) -> click.Group:
        group = click.group(name=NAMED, hidden=True, help=help_text)(
            click.argument("name", metavar=metavar)(click.pass_context(fn)))
        group.help_name_form = f"{metavar} COMMAND [ARGS]..."  # type: ignore[attr-defined]
        parent.add_command(group)
        return group

    return decorate
