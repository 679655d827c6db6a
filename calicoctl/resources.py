"""`calicoctl apply|create|replace|delete -f FILE|-` and `calicoctl get KIND [NAME]`.

Owns: reading resource files (YAML or JSON; one document, a list, or `---`-separated
documents), reporting YAML errors with their line number, validating EVERY document
before anything is written, and printing resources in every output format. What
`get -o yaml` prints is valid input for `apply`.

Leaves to others: per-kind validation (`libcalico.model.parse_resource`) and the
batched, transactional write (`CalicoClient.apply_resources`).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from calicoctl.context import ctl
from calicoctl.output import emit, output_option


def load_documents(text: str, source: str) -> list[Any]:
    """Every document in `text`; lists are flattened, empty documents skipped."""
    import yaml

    from libcalico.errors import ValidationError

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        docs = list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "unknown line"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValidationError(source, where, f"YAML error: {problem}") from None
    out: list[Any] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, list):
            out.extend(doc)
        else:
            out.append(doc)
    if not out:
        raise ValidationError(source, "", "contains no resources")
    return out


def parse_documents(docs: list[Any]) -> list[Any]:
    """Validate every document; the error names the document's number and field."""
    from libcalico.errors import ValidationError
    from libcalico.model import parse_resource

    resources = []
    for i, doc in enumerate(docs, 1):
        try:
            resources.append(parse_resource(doc))
        except ValidationError as exc:
            raise ValidationError(f"document {i}: {exc.field}", exc.value, exc.reason) from None
    return resources


def _read(filename: str) -> list[Any]:
    from libcalico.errors import ValidationError

    if filename == "-":
        data, source = sys.stdin.buffer.read(), "stdin"
    else:
        try:
            with open(filename, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValidationError("--filename", filename, exc.strerror or str(exc)) from None
        source = filename
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(source, f"byte {exc.start + 1}",
                              "is not UTF-8 text (resource files are YAML or JSON)") from None
    return parse_documents(load_documents(text, source))


def _make(mode: str, help_text: str) -> click.Command:
    @click.command(mode, help=help_text)
    @click.option("-f", "--filename", required=True, metavar="FILE",
                  help="YAML or JSON resource file; '-' reads stdin.")
    def command(filename: str) -> None:
        from libcalico.client import describe

        resources = _read(filename)
        ctl().client.apply_resources(resources, mode)
        verb = {"apply": "Applied", "create": "Created", "replace": "Replaced",
                "delete": "Deleted"}[mode]
        for r in resources:
            click.echo(f"{verb} {describe(r)}")

    return command


apply = _make("apply", "Create or update the resources in the file.")
create = _make("create", "Create the resources in the file (error if any exists).")
replace = _make("replace", "Replace the resources in the file (error if any is missing).")
delete = _make("delete", "Delete the resources named in the file.")


@click.command("get")
@click.argument("kind")
@click.argument("name", required=False)
@click.option("--hostname", default=None, help="Only resources of this host.")
@click.option("--tier", default=None, help="Policies of this tier only.")
@output_option
def get(kind: str, name: str | None, hostname: str | None, tier: str | None,
        output: str) -> None:
    """Show resources of KIND (ipPool, profile, tier, policy, workloadEndpoint,
    hostEndpoint, node, bgpPeer, bgpConfig, felixConfig, ipamConfig)."""
    from libcalico.model import resource_class

    cls = resource_class(kind)
    found = ctl().client.get_resources(cls.KIND, name, hostname=hostname, tier=tier)
    docs = [r.to_resource() for r in found]
    if output == "json":
        emit(output, docs[0] if name is not None and len(docs) == 1 else docs, [], [])
        return
    from calicoctl.tables import table_for

    headers, rows = table_for(cls.KIND, found, wide=False)
    wide_headers, wide_rows = table_for(cls.KIND, found, wide=True)
    emit(output, docs, headers, rows, wide_headers, wide_rows)


COMMANDS = [apply, create, replace, delete, get]
