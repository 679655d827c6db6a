"""The `calicoctl` entry point: the top-level click group and global options.

Owns: the global options (etcd location and TLS, falling back to the ETCD_* variables;
--log-level; --debug), registration of the command groups (one module each), and the
one place that turns exceptions into a one-line message and a documented exit code
(`calicoctl.errors`).

Leaves to others: each command (its module), everything datastore-related
(`libcalico`). Importing this module must stay cheap (`calicoctl version` and `--help`
must not import etcd3, grpc, pyroute2 or yaml): command modules import those inside
their functions.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from calicoctl import (
    bgp,
    checksystem,
    config,
    container,
    diags,
    endpoint,
    ipam,
    node,
    pool,
    profile,
    resources,
    status,
    version,
)
from calicoctl.context import CtlContext
from calicoctl.errors import report

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class CalicoGroup(click.Group):
    """The top-level group: maps library errors to exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            from calicoctl.errors import CommandFailed
            from libcalico.errors import CalicoError

            obj = ctx.find_object(CtlContext)
            debug = bool(obj and obj.debug)
            if not isinstance(exc, CalicoError | CommandFailed) and not debug:
                # An unexpected bug: still one line, but say how to see more.
                click.echo(f"Error: unexpected {type(exc).__name__}: {exc} "
                           "(run with --debug for the traceback)", err=True)
                ctx.exit(1)
            ctx.exit(report(exc, debug))
        finally:
            obj = ctx.find_object(CtlContext)
            if obj is not None:
                obj.close()


@click.group(cls=CalicoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--etcd-endpoints", envvar="ETCD_ENDPOINTS", metavar="URLS",
              help="Comma-separated etcd URLs [env ETCD_ENDPOINTS].")
@click.option("--etcd-authority", envvar="ETCD_AUTHORITY", metavar="HOST:PORT",
              help="etcd host:port when no endpoints are given [env ETCD_AUTHORITY; "
                   "default 127.0.0.1:2379].")
@click.option("--etcd-ca-cert-file", envvar="ETCD_CA_CERT_FILE", metavar="FILE",
              help="CA certificate for https endpoints [env ETCD_CA_CERT_FILE].")
@click.option("--etcd-cert-file", envvar="ETCD_CERT_FILE", metavar="FILE",
              help="Client certificate [env ETCD_CERT_FILE].")
@click.option("--etcd-key-file", envvar="ETCD_KEY_FILE", metavar="FILE",
              help="Client key [env ETCD_KEY_FILE].")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="warning",
              show_default=True, help="Logging level on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, etcd_endpoints: str | None, etcd_authority: str | None,
        etcd_ca_cert_file: str | None, etcd_cert_file: str | None, etcd_key_file: str | None,
        log_level: str, debug: bool) -> None:
    """calicoctl: administer a Calico-style network (pools, profiles, policy,
    endpoints, containers, BGP, IPAM, config and diagnostics).

    \b
    Exit codes: 0 success, 1 failure, 2 bad usage or invalid input,
    3 not found / already exists / conflict, 4 datastore unreachable.
    """
    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if log_level == "warning":
        # Fail-over chatter would precede the one-line error; --log-level info shows it.
        logging.getLogger("libcalico.datastore").setLevel(logging.ERROR)
    ctx.obj = CtlContext(endpoints=etcd_endpoints, authority=etcd_authority,
                         ca_cert=etcd_ca_cert_file, cert_file=etcd_cert_file,
                         key_file=etcd_key_file, debug=debug)


for _module in (status, node, container, profile, endpoint, pool, bgp, ipam, checksystem,
                diags, version, config, resources):  # version also holds `completion`
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="calicoctl")
