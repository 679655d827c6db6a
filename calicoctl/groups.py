"""click helpers for the seed-era command shapes.

Owns: `NamedGroup`, a group whose first argument may be either one of its own
subcommands (`profile add P`) or an object name followed by that object's
subcommands (`profile P rule add ...`, `endpoint ID profile show`,
`container C ip add IP`), as calicoctl v0.x's docopt grammar had it. The choice is made
after click has parsed the group's own options, so they may come first in either form:
`container --hostname H add C IP` and `container --hostname H C profile set P` alike.
Usage lines show the object's metavar where the name goes (`calicoctl container
CONTAINER ip add ...`).

Leaves to others: the commands themselves.
"""

from __future__ import annotations

from typing import Any

import click

NAMED = "<name>"


class NamedGroup(click.Group):
    """A group that routes `GROUP [OPTIONS] NAME SUB ...` to its hidden per-object group."""

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        named = self.commands.get(NAMED)
        first = args[0] if args else ""
        if named is not None and first not in self.commands and not first.startswith("-"):
            # The name stays in args: it is the per-object group's argument.
            return getattr(named, "metavar_name", NAMED), named, list(args)
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        named = self.commands.get(NAMED)
        extra = f" | {named.help_name_form}" if named is not None and hasattr(
            named, "help_name_form") else ""
        formatter.write_usage(ctx.command_path, f"COMMAND [ARGS]...{extra}")


class _NameArgument(click.Argument):
    """The object's name: parsed as an argument, but shown in usage lines as the
    command's own name (the metavar), not a second time after it."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def named_subgroup(parent: NamedGroup, metavar: str, help_text: str) -> Any:
    """Decorator: register a hidden per-object group taking `metavar` then subcommands."""

    def decorate(fn: Any) -> click.Group:
        group = click.group(name=NAMED, hidden=True, help=help_text)(
            click.argument("name", metavar=metavar, cls=_NameArgument)(
                click.pass_context(fn)))
        group.help_name_form = f"{metavar} COMMAND [ARGS]..."  # type: ignore[attr-defined]
        group.metavar_name = metavar  # type: ignore[attr-defined]
        parent.add_command(group)
        return group

    return decorate
