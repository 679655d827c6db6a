"""Rendering of command results as table, wide table, JSON or YAML.

Owns: the `-o/--output` option, the bordered table layout (the seed-era calicoctl's
prettytable look), and JSON/YAML dumps of plain data (resource documents for
resources). YAML is imported only when asked for.

Leaves to others: what the rows and documents contain (each command module).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

FORMATS = ("table", "wide", "json", "yaml")


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-o", "--output", "output", type=click.Choice(FORMATS),
                        default="table", show_default=True,
                        help="Output format.")(fn)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A bordered table; cells may hold several lines."""
    cells = [[str(c) if c is not None else "" for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in cell.split("\n")))
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> list[str]:
        split = [v.split("\n") for v in values]
        height = max(len(s) for s in split) if split else 1
        return ["| " + " | ".join((s[n] if n < len(s) else "").ljust(w)
                                  for s, w in zip(split, widths, strict=True)) + " |"
                for n in range(height)]

    out = [rule, *line(list(headers)), rule]
    for row in cells:
        out += line(row)
    out.append(rule)
    return "\n".join(out)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def dump_yaml(data: Any, multi: bool = False) -> str:
    """YAML text; with `multi` a list becomes `---`-separated documents."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    if multi and isinstance(data, list):
        return yaml.dump_all(data, Dumper=dumper, default_flow_style=False,
                             sort_keys=False, explicit_start=True).rstrip("\n")
    return yaml.dump(data, Dumper=dumper, default_flow_style=False,
                     sort_keys=False).rstrip("\n")


def emit(fmt: str, data: Any, headers: Sequence[str], rows: Iterable[Sequence[Any]],
         wide_headers: Sequence[str] | None = None,
         wide_rows: Iterable[Sequence[Any]] | None = None) -> None:
    """Print `data` (json/yaml) or the table (table/wide) for one command's result."""
    if fmt == "json":
        click.echo(dump_json(data))
    elif fmt == "yaml":
        click.echo(dump_yaml(data, multi=True))
    elif fmt == "wide" and wide_headers is not None and wide_rows is not None:
        click.echo(render_table(wide_headers, wide_rows))
    else:
        click.echo(render_table(headers, rows))
