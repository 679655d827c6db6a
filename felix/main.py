"""`calico-felix`: the process entry point.

Owns: command-line parsing (click), logging set-up, the start-up sequence (bootstrap
config from file + environment -> etcd client -> config from etcd, retried with
backoff until etcd answers -> metrics/health servers -> dataplane owners, calculation,
status reporter, tunnel keeper, interface watcher, syncer -> the driver loop), signal handling
(SIGTERM/SIGINT end the loop; the dataplane is left as it is) and the self re-exec
when the configuration in etcd changes.

Leaves to others: everything the loop does (`felix.driver`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

import click

from felix.config import Config, ConfigError, describe_params, load_config, read_config_file
from libcalico import keyspace

if TYPE_CHECKING:
    from felix.driver import Driver
    from libcalico.datastore import Datastore

_log = logging.getLogger("felix")


def setup_logging(config: Config, override: str | None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s %(process)d: %(message)s")
    levels = []
    screen = override or config.LogSeverityScreen
    if screen:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(screen)
        handler.setFormatter(fmt)
        root.addHandler(handler)
        levels.append(logging.getLevelName(screen))
    if config.LogFilePath and config.LogSeverityFile:
        os.makedirs(os.path.dirname(config.LogFilePath) or ".", exist_ok=True)
        fh = logging.FileHandler(config.LogFilePath)
        fh.setLevel(config.LogSeverityFile)
        fh.setFormatter(fmt)
        root.addHandler(fh)
        levels.append(logging.getLevelName(config.LogSeverityFile))
    root.setLevel(min(levels) if levels else logging.CRITICAL)


def ipv6_available() -> bool:
    """Auto-detection for Ipv6Support=auto: IPv6 enabled and ip6tables usable."""
    from felix.dataplane.cmd import CommandFailed, CommandRunner

    if not os.path.exists("/proc/net/if_inet6"):
        return False
    try:
        CommandRunner().run(["ip6tables-save", "-t", "filter"])
    except CommandFailed:
        return False
    return True


def load_etcd_config(store: Datastore, boot: Config, file_values: dict[str, str],
                     stop: threading.Event) -> tuple[Config, bool] | None:
    """Read the config keys from etcd (retrying with backoff) and layer everything; and
    whether a pool is encapsulated (felix then follows the allocation blocks)."""
    from felix.driver import encapsulated_pools
    from libcalico.errors import DatastoreError
    from libcalico.retry import Backoff

    backoff = Backoff(0.2, 10.0)
    while not stop.is_set():
        try:
            glob, _ = store.list(keyspace.CONFIG_DIR)
            host, _ = store.list(keyspace.host_config_dir(boot.FelixHostname))
            pools, _ = store.list(keyspace.POOL_DIR)
            break
        except DatastoreError as exc:
            delay = backoff.next()
            _log.warning("etcd not reachable (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay)
    else:
        return None
    values_g = {k.key.rsplit("/", 1)[1]: k.value for k in glob}
    values_h = {k.key.rsplit("/", 1)[1]: k.value for k in host}
    return (load_config(file_values=file_values, etcd_global=values_g, etcd_host=values_h),
            encapsulated_pools([(kv.key, kv.value) for kv in pools]))


def run(config_path: str | None, log_level: str | None) -> int:
    try:
        file_values = read_config_file(config_path)
        boot = load_config(file_values=file_values)
    except ConfigError as exc:
        click.echo(f"calico-felix: {exc}", err=True)
        return 2
    setup_logging(boot, log_level)
    stop = threading.Event()
    driver_box: list[Driver] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _log.info("received signal %d: stopping (the dataplane stays as it is)", signum)
        stop.set()
        if driver_box:
            driver_box[0].stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from felix.calc.graph import CalcGraph, CalcSettings
    from felix.dataplane.apply import Owners
    from felix.driver import Driver, felix_prefixes, start_watcher
    from felix.health import Health, Metrics
    from felix.status import StatusReporter
    from felix.tunnel_keeper import TunnelKeeper
    from libcalico.datastore import Datastore, EtcdSettings
    from libcalico.errors import ValidationError
    from libcalico.syncer import Syncer

    try:
        store = Datastore(EtcdSettings.from_env(boot.etcd_env(),
                                                transport=boot.EtcdTransport.lower()))
    except ValidationError as exc:
        _log.error("bad etcd settings: %s", exc)
        return 2
    try:
        loaded = load_etcd_config(store, boot, file_values, stop)
    except ConfigError as exc:
        _log.error("bad configuration: %s", exc)
        return 2
    if loaded is None:
        return 0
    config, blocks = loaded
    setup_logging(config, log_level)
    ipv6 = config.Ipv6Support if config.Ipv6Support is not None else ipv6_available()
    _log.info("felix starting on host %s (IPv6 %s, refresh every %.0fs)", config.FelixHostname,
              "on" if ipv6 else "off", config.refresh_interval)

    metrics = Metrics()
    health = Health(stale_after=max(60.0, 3 * config.refresh_interval))
    try:
        if config.PrometheusMetricsEnabled:
            metrics.serve(config.PrometheusMetricsPort)
        if config.HealthEnabled:
            health.serve(config.HealthPort, config.HealthHost)
    except OSError as exc:
        _log.warning("could not start the metrics/health server: %s", exc)

    versions = (4, 6) if ipv6 else (4,)
    owners = Owners.create(config, versions)
    calc = CalcGraph(CalcSettings.from_config(config, ipv6))
    status = None
    if config.ReportingIntervalSecs > 0 or config.EndpointReportingEnabled:
        status = StatusReporter(store, config.FelixHostname, config.ReportingIntervalSecs,
                                config.ReportingTTLSecs, config.EndpointReportingEnabled,
                                config.EndpointReportingDelaySecs).start()
    tunnels = TunnelKeeper(store, config.FelixHostname, config.refresh_interval).start()
    driver = Driver(config, owners, calc, status=status, metrics=metrics, health=health,
                    file_values=file_values, tunnels=tunnels, follows_blocks=blocks)
    driver_box.append(driver)
    if stop.is_set():
        driver.stop()
    watcher = start_watcher(driver, config)
    syncer = Syncer(store, felix_prefixes(blocks), driver, name="felix-syncer")
    syncer.start()
    try:
        driver.run()
    finally:
        syncer.stop()
        watcher.stop()
        tunnels.stop()
        if status is not None:
            status.stop(revoke=not driver.restart_requested)
        health.stop()
        owners.close()
        store.close()
    if driver.restart_requested:
        _log.warning("re-executing felix to apply the new configuration")
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "felix.main", *sys.argv[1:]])
    _log.info("felix stopped")
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Config file (default /etc/calico/felix.cfg if it exists).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                               case_sensitive=False), default=None,
              help="Override LogSeverityScreen.")
@click.option("--help-config", is_flag=True, help="List every configuration parameter.")
def main(config_path: str | None, log_level: str | None, help_config: bool) -> None:
    """Felix: programs this host's routes, iptables and ipsets from etcd."""
    if help_config:
        click.echo(describe_params())
        return
    sys.exit(run(config_path, log_level.upper() if log_level else None))


if __name__ == "__main__":
    main()
