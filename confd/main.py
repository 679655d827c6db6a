"""`calico-confd`: the command line of confd.

Owns: options, logging set-up, the etcd settings (`ETCD_*` variables through
`EtcdSettings.from_env`), signal handling (SIGTERM and SIGINT stop the loop cleanly) and
exit codes: 0 done (or stopped), 1 the configuration could not be produced or applied
(`--onetime`) or the datastore is unusable, 2 bad usage.

Leaves to others: everything else (`confd.daemon`, `confd.apply`, `confd.render`).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from types import FrameType

import click

from confd.apply import BirdApplier
from confd.render import DEFAULT_INCLUDE_DIR

_log = logging.getLogger("confd")

DEFAULT_CONFIG = "/etc/calico/bird.cfg"
DEFAULT_SOCKET = "/var/run/calico/bird.ctl"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--onetime", is_flag=True, help="Render and apply once, then exit.")
@click.option("--hostname", envvar="HOSTNAME", default=socket.gethostname,
              show_default="$HOSTNAME or the system's host name",
              help="This node's name in the datastore.")
@click.option("--config-file", default=DEFAULT_CONFIG, show_default=True,
              help="BIRD's configuration file (the one BIRD is started with).")
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True,
              help="BIRD's control socket.")
@click.option("--bird-bin", default="bird", show_default=True, help="The bird binary.")
@click.option("--birdc-bin", default="birdc", show_default=True, help="The birdc binary.")
@click.option("--include-dir", envvar="CALICO_BIRD_INCLUDE_DIR", default=DEFAULT_INCLUDE_DIR,
              show_default=True,
              help="Operators' directory: *.conf included at top level, *.peer in every "
                   "Calico BGP session.")
@click.option("--templates-dir", default=None,
              help="Jinja2 templates (default: $CALICO_CONFD_TEMPLATES, then the "
                   "installed templates).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--etcd-transport", envvar="ETCD_TRANSPORT", default="http", show_default=True,
              type=click.Choice(["http", "grpc"], case_sensitive=False),
              help="http: etcd's JSON gateway (standard library only); grpc: the etcd3 "
                   "package (~30 MB more resident memory) [env ETCD_TRANSPORT].")
def main(onetime: bool, hostname: str, config_file: str, socket_path: str, bird_bin: str,
         birdc_bin: str, include_dir: str, templates_dir: str | None, log_level: str,
         etcd_transport: str) -> None:
    """Render BIRD 2's configuration from etcd, validate it and reload BIRD on change."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from confd.daemon import ConfdDaemon, run_once
    from confd.render import find_templates_dir
    from libcalico.datastore import Datastore, EtcdSettings
    from libcalico.errors import CalicoError

    try:
        find_templates_dir(templates_dir)
        settings = EtcdSettings.from_env(transport=etcd_transport.lower())
    except (CalicoError, FileNotFoundError) as exc:
        click.echo(f"calico-confd: {exc}", err=True)
        sys.exit(2)
    applier = BirdApplier(config_file, socket_path, bird_bin=bird_bin, birdc_bin=birdc_bin,
                          include_dir=include_dir)
    store = Datastore(settings)
    try:
        if onetime:
            try:
                result = run_once(store, hostname, applier, include_dir=include_dir,
                                  templates_dir=templates_dir)
            except CalicoError as exc:
                click.echo(f"calico-confd: {exc}", err=True)
                sys.exit(1)
            if result is None or result.error is not None:
                click.echo("calico-confd: no valid configuration for "
                           f"{hostname}: {result.error if result else 'see the log'}",
                           err=True)
                sys.exit(1)
            return
        daemon = ConfdDaemon(store, hostname, applier, include_dir=include_dir,
                             templates_dir=templates_dir)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            _log.info("signal %d: stopping", signum)
            daemon.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        _log.info("confd for %s: %s, BIRD socket %s", hostname, config_file, socket_path)
        daemon.run()
    finally:
        store.close()
