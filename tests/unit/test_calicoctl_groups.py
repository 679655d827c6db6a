"""NamedGroup: `GROUP [OPTIONS] NAME SUB ...` and `GROUP [OPTIONS] SUB ...` both route,
with the group's options before either form, and usage lines name the metavar."""

from __future__ import annotations

import click
from click.testing import CliRunner

from calicoctl.groups import NamedGroup, named_subgroup


def _group() -> click.Group:
    seen: dict[str, str] = {}

    @click.group(cls=NamedGroup)
    @click.option("--hostname", default="default-host")
    @click.pass_context
    def thing(ctx: click.Context, hostname: str) -> None:
        ctx.meta["host"] = hostname

    @thing.command("add")
    @click.argument("name")
    def add(name: str) -> None:
        click.echo(f"add {name} on {click.get_current_context().meta['host']}")

    @named_subgroup(thing, "THING", "Commands on one thing.")
    def named(ctx: click.Context, name: str) -> None:
        seen["name"] = name

    @named.command("show")
    @click.option("--wide", is_flag=True)
    def show(wide: bool) -> None:
        ctx = click.get_current_context()
        click.echo(f"show {seen['name']} on {ctx.meta['host']} wide={wide}")

    return thing


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(_group(), list(args))
    return res.exit_code, res.output


def test_both_forms_route_with_group_options_first() -> None:
    assert _run("add", "t1") == (0, "add t1 on default-host\n")
    assert _run("--hostname", "h2", "add", "t1") == (0, "add t1 on h2\n")
    assert _run("t1", "show") == (0, "show t1 on default-host wide=False\n")
    assert _run("--hostname", "h2", "t1", "show", "--wide") == (0, "show t1 on h2 wide=True\n")
    assert _run("--hostname=h3", "t1", "show") == (0, "show t1 on h3 wide=False\n")


def test_usage_names_the_metavar_and_unknown_words_still_fail() -> None:
    code, out = _run("t1", "nonsense")
    assert code == 2 and "No such command 'nonsense'" in out
    code, out = _run("t1", "show", "--bogus")
    assert code == 2 and "Usage: thing THING show [OPTIONS]" in out
    code, out = _run("--help")
    assert code == 0 and "Usage: thing COMMAND [ARGS]... | THING COMMAND [ARGS]..." in out
