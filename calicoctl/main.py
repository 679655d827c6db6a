"""The `calicoctl` entry point: the top-level click group and global options.

Owns: the global options (etcd location and TLS, falling back to the ETCD_* variables;
--log-level; --debug), the table of top-level commands (`COMMAND_TABLE`: which module
holds each, and its one-line help), and the one place that turns exceptions into a
one-line message and a documented exit code (`calicoctl.errors`).

Leaves to others: each command (its module), everything datastore-related
(`libcalico`). Start-up must stay cheap (`calicoctl version` and `--help` must not
import etcd3, grpc, pyroute2 or yaml): a command's module is imported only when that
command runs or its own help is shown, `calicoctl --help` lists the commands from the
table without importing any of them, and command modules import heavy libraries inside
their functions.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from calicoctl.context import CtlContext
from calicoctl.errors import report

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Every top-level command: name -> (module in calicoctl, first paragraph of its help).
# The module's COMMANDS list holds the click command; the help text here is what
# `calicoctl --help` lists (tests/unit/test_calicoctl_ipam_misc.py checks that it
# matches the command's own help, so change both together).
COMMAND_TABLE: dict[str, tuple[str, str]] = {
    "apply": ("resources", "Create or update the resources in the file."),
    "bgp": ("bgp", "Configure global BGP: peers, node-to-node mesh, default AS."),
    "checksystem": ("checksystem", "Check kernel modules, binaries, sysctls and etcd; "
                                   "exit 1 on any failure."),
    "cni": ("cni", "Install the calico and calico-ipam CNI plugins."),
    "completion": ("version", "Print the shell-completion script for SHELL."),
    "config": ("config", "Manage felix and BGP configuration."),
    "container": ("container", "Add containers (network namespaces or Docker containers) "
                               "to the network."),
    "create": ("resources", "Create the resources in the file (error if any exists)."),
    "delete": ("resources", "Delete the resources named in the file."),
    "diags": ("diags", "Collect diagnostics into a tar.gz bundle."),
    "endpoint": ("endpoint", "Show endpoints and manage the profiles they use."),
    "get": ("resources", "Show resources of KIND (ipPool, profile, tier, policy, "
                         "workloadEndpoint, hostEndpoint, node, bgpPeer, bgpConfig, "
                         "felixConfig, ipamConfig)."),
    "hostendpoint": ("hostendpoint", "Manage host endpoints: a host's interfaces under policy "
                                     "(failsafe ports stay open)."),
    "ipam": ("ipam", "IP address management."),
    "node": ("node", "Run Calico on this host (`node` or `node run`), or manage nodes."),
    "policy": ("policy", "Ask the security policy questions: trace a flow."),
    "pool": ("pool", "Manage IP address pools."),
    "profile": ("profile", "Manage security profiles."),
    "replace": ("resources", "Replace the resources in the file (error if any is missing)."),
    "status": ("status", "Show this node and the state of its BGP sessions."),
    "version": ("version", "Print the calicoctl version."),
}


def load_command(name: str) -> click.Command | None:
    """The top-level command `name`, importing its module; None if there is none."""
    entry = COMMAND_TABLE.get(name)
    if entry is None:
        return None
    module = importlib.import_module(f"calicoctl.{entry[0]}")
    return next((c for c in module.COMMANDS if c.name == name), None)


class CalicoGroup(click.Group):
    """The top-level group: loads commands on demand and maps library errors to exit
    codes. State: `commands` holds the commands loaded so far (or added explicitly)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_TABLE})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            command = load_command(cmd_name)
            if command is not None:
                self.add_command(command)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, as click formats it, but from the table: no imports."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is None:  # a stand-in carrying the tabled help, for click's wording
                loaded = click.Command(name, help=COMMAND_TABLE[name][1])
            if not loaded.hidden:
                rows.append((name, loaded.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
@click.option("--etcd-username", envvar="ETCD_USERNAME", metavar="USER",
              help="etcd user, when etcd authentication is on [env ETCD_USERNAME]; the "
                   "password is read from ETCD_PASSWORD only.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="warning",
              show_default=True, help="Logging level on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, etcd_endpoints: str | None, etcd_authority: str | None,
        etcd_ca_cert_file: str | None, etcd_cert_file: str | None, etcd_key_file: str | None,
        etcd_username: str | None, log_level: str, debug: bool) -> None:
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
                         key_file=etcd_key_file, username=etcd_username, debug=debug)


def main() -> None:
    cli(prog_name="calicoctl")
