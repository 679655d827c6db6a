"""Felix configuration: one declared table of parameters and the loader that layers them.

Owns: `PARAMS`, the single declaration of every parameter (name, type, default, help,
whether it may come from etcd), the value parsers, and `load_config`, which layers the
sources with this precedence, lowest first:

    defaults < etcd global (/calico/v1/config/<Name>)
             < etcd per host (/calico/v1/host/<hostname>/config/<Name>)
             < config file (/etc/calico/felix.cfg or --config, ini section [global])
             < environment (FELIX_<UPPERCASE NAME>)

Bootstrap parameters (hostname, etcd connection, log file) may only come from the file
or the environment: felix needs them before it can read etcd. A bad value in the file or
the environment raises `ConfigError` naming the parameter, the value and the source it
came from; a bad value in etcd is logged and ignored (the layer below applies), so one
bad key cannot keep every felix in the cluster from starting.

A `Config` is immutable; a change produces a new object. When the configuration held in
etcd changes while felix runs, the driver builds the new `Config`; if it differs from the
running one felix re-executes itself (same argv), leaving the dataplane in place, and
the new process reconciles it. Config changes are rare, and one code path (start-up)
then handles every parameter, including ports and the hostname.

Leaves to others: reading etcd (the driver passes the global and per-host key/values it
read), key names (`libcalico.keyspace`), acting on the values.
"""

from __future__ import annotations

import configparser
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.tunnel import DEFAULT_IPIP_MTU, DEFAULT_VXLAN_MTU, VXLAN_PORT, VXLAN_VNI

_log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "/etc/calico/felix.cfg"
ENV_PREFIX = "FELIX_"

SOURCE_DEFAULT = "default"
SOURCE_ETCD_GLOBAL = "etcd global config"
SOURCE_ETCD_HOST = "etcd per-host config"
SOURCE_FILE = "config file"
SOURCE_ENV = "environment"


class ConfigError(ValidationError):
    """A parameter with a bad value; names parameter, value and where it came from."""

    def __init__(self, name: str, value: object, source: str, reason: str) -> None:
        self.source = source
        super().__init__(name, value, f"{reason} (from {source})")


# --- value parsers: str -> typed value, raising ValueError with a reason ----------------

def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on", "y", "t"):
        return True
    if low in ("false", "0", "no", "off", "n", "f"):
        return False
    raise ValueError("expected true or false")


def _int(text: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise ValueError("expected an integer") from None


def _nonneg_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 < value < 65536:
        raise ValueError("expected a port number 1-65535")
    return value


def _ranged(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise ValueError(f"expected {what} from {lo} to {hi}")
        return value
    return parse


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


FAILSAFE_PROTOCOLS = ("tcp", "udp")


def _proto_ports(text: str) -> tuple[tuple[str, int], ...]:
    """`tcp:22, udp:68, 179` -> (("tcp", 22), ("udp", 68), ("tcp", 179)); a bare port is
    TCP; `none` (or nothing) is the empty list."""
    if text.strip().lower() in ("none", ""):
        return ()
    out: list[tuple[str, int]] = []
    for part in (p for p in text.replace(" ", "").split(",") if p):
        proto, sep, port = part.rpartition(":")
        proto = proto.lower() if sep else "tcp"
        if proto not in FAILSAFE_PROTOCOLS:
            raise ValueError(f"bad protocol {proto!r} in {part!r} (expected tcp or udp)")
        entry = (proto, _port(port))
        if entry not in out:
            out.append(entry)
    return tuple(out)


def _str(text: str) -> str:
    return text.strip()


def _opt_str(text: str) -> str | None:
    value = text.strip()
    return value or None


def _names(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise ValueError("expected at least one name")
    for name in names:
        if not name.isalnum() and not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"bad interface prefix {name!r}")
    return names


def _enum(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return parse


def _log_level(text: str) -> str | None:
    value = text.strip().upper()
    if value in ("NONE", ""):
        return None
    if value == "WARN":
        value = "WARNING"
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR, CRITICAL or NONE")
    return value


def _mark_mask(text: str) -> int:
    value = _int(text)
    if not 0 < value <= 0xFFFFFFFF or bin(value).count("1") < 4:
        raise ValueError("expected a 32-bit mask with at least 4 bits set")
    return value


def _ipv6_support(text: str) -> bool | None:
    if text.strip().lower() == "auto":
        return None
    return _bool(text)


def _hostname(text: str) -> str:
    value = text.strip()
    if not value or "/" in value or " " in value:
        raise ValueError("expected a hostname")
    return value


@dataclass(frozen=True)
class Param:
    """One parameter. `default` is the text form, parsed like any other source."""

    name: str
    parse: Callable[[str], Any]
    default: str
    help: str
    bootstrap: bool = False  # only from the config file or the environment


PARAMS: tuple[Param, ...] = (
    # bootstrap: needed before etcd can be read
    Param("FelixHostname", _hostname, "", "This host's name (default: gethostname()).", True),
    Param("EtcdEndpoints", _str, "", "Comma-separated etcd URLs; overrides EtcdAddr and "
          "EtcdScheme (also read from ETCD_ENDPOINTS).", True),
    Param("EtcdAddr", _str, "127.0.0.1:2379", "etcd host:port when EtcdEndpoints is unset.",
          True),
    Param("EtcdScheme", _enum("HTTP", "HTTPS"), "http", "http or https for EtcdAddr.", True),
    Param("EtcdCaFile", _opt_str, "", "CA bundle for https etcd.", True),
    Param("EtcdCertFile", _opt_str, "", "Client certificate for etcd.", True),
    Param("EtcdKeyFile", _opt_str, "", "Client key for etcd.", True),
    Param("EtcdTransport", _enum("HTTP", "GRPC"), "http", "How felix talks to etcd: http "
          "(etcd's JSON gateway, standard library only) or grpc (the etcd3 package: ~30 MB "
          "more resident memory); also read from ETCD_TRANSPORT.", True),
    Param("EtcdUsername", _opt_str, "", "etcd user, with etcd authentication on (also "
          "read from ETCD_USERNAME).", True),
    Param("EtcdPassword", _opt_str, "", "That user's password (also read from "
          "ETCD_PASSWORD; never logged).", True),
    Param("LogFilePath", _opt_str, "", "Log file; empty or none: no file.", True),
    # dataplane
    Param("InterfacePrefix", _names, "cali", "Comma list of workload interface prefixes."),
    Param("DefaultEndpointToHostAction", _enum("DROP", "RETURN", "ACCEPT"), "DROP",
          "Workload-to-host traffic: DROP; RETURN to INPUT after the endpoint's outbound "
          "policy; ACCEPT after the endpoint's outbound policy."),
    Param("Ipv6Support", _ipv6_support, "auto", "Program IPv6 too (auto: if ip6tables works)."),
    Param("RefreshInterval", _float, "90", "Seconds between full dataplane refreshes "
          "(repairs tampering); 0 disables."),
    Param("IptablesRefreshInterval", _float, "90", "Felix 1.x name of RefreshInterval; the "
          "smaller of the two applies."),
    Param("IptablesLockTimeoutSecs", _float, "10", "Seconds to wait for the xtables lock."),
    Param("IptablesMarkMask", _mark_mask, "0xff000000", "Mark bits felix may use."),
    Param("MaxIpsetSize", _nonneg_int, "1048576", "maxelem of felix's ipsets."),
    Param("FailsafeInboundHostPorts", _proto_ports, "tcp:22,udp:68,tcp:179",
          "[tcp|udp:]port list always open into the host through its host endpoints, "
          "whatever their policy (ssh, DHCP, BGP); a bare port is TCP; none: no ports."),
    Param("FailsafeOutboundHostPorts", _proto_ports,
          "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:4001,tcp:7001",
          "[tcp|udp:]port list the host may always reach through its host endpoints, "
          "whatever their policy (DNS, DHCP, BGP, etcd); none: no ports."),
    # tunnels (used while a pool with that encapsulation exists; see docs/felix.md)
    Param("VXLANMTU", _ranged(68, 65535, "an MTU"), str(DEFAULT_VXLAN_MTU),
          "MTU of vxlan.calico, and of workload interfaces in VXLAN pools (fabric MTU "
          "minus 50)."),
    Param("VXLANVNI", _ranged(1, 16777215, "a VXLAN network identifier"), str(VXLAN_VNI),
          "VXLAN network identifier of vxlan.calico (the same on every host)."),
    Param("VXLANPort", _port, str(VXLAN_PORT), "UDP port of VXLAN (the same on every host)."),
    Param("IpInIpMtu", _ranged(68, 65535, "an MTU"), str(DEFAULT_IPIP_MTU),
          "MTU of tunl0, and of workload interfaces in IPIP pools (fabric MTU minus 20)."),
    # logging
    Param("LogSeverityScreen", _log_level, "INFO", "Level logged to stderr (NONE: off)."),
    Param("LogSeverityFile", _log_level, "INFO", "Level logged to LogFilePath (NONE: off)."),
    # status and metrics
    Param("ReportingIntervalSecs", _float, "30", "Seconds between status reports; 0 off."),
    Param("ReportingTTLSecs", _float, "90", "Lease TTL of the liveness status key."),
    Param("EndpointReportingEnabled", _bool, "true", "Write per-endpoint status to etcd."),
    Param("EndpointReportingDelaySecs", _float, "1", "Minimum seconds between endpoint "
          "status writes (they are batched)."),
    Param("PrometheusMetricsEnabled", _bool, "false", "Serve Prometheus metrics."),
    Param("PrometheusMetricsPort", _port, "9091", "Port of the Prometheus metrics server."),
    Param("HealthEnabled", _bool, "true", "Serve /liveness and /readiness."),
    Param("HealthHost", _str, "127.0.0.1", "Address of the health server."),
    Param("HealthPort", _port, "9099", "Port of the health server."),
)

PARAMS_BY_NAME: Mapping[str, Param] = {p.name: p for p in PARAMS}
SECRET_PARAMS = frozenset({"EtcdPassword"})  # masked wherever a Config is shown


class Config:
    """An immutable, fully parsed configuration. Read values with `config.Name`;
    `source(name)` says where a value came from."""

    __slots__ = ("_values", "_sources")

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_sources", dict(sources))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Config is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._values.items())))

    def __repr__(self) -> str:
        shown = {k: ("********" if k in SECRET_PARAMS and v else v)
                 for k, v in self._values.items()}
        return f"Config({shown!r})"

    def source(self, name: str) -> str:
        return self._sources[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    # --- derived values (computed, not stored twice) ---------------------------------------

    @property
    def refresh_interval(self) -> float:
        values = [v for v in (self.RefreshInterval, self.IptablesRefreshInterval) if v > 0]
        return min(values) if values else 0.0

    def etcd_env(self) -> dict[str, str]:
        """ETCD_* variables for `libcalico.datastore.EtcdSettings.from_env`."""
        env: dict[str, str] = {}
        if self.EtcdEndpoints:
            env["ETCD_ENDPOINTS"] = self.EtcdEndpoints
        else:
            env["ETCD_AUTHORITY"] = self.EtcdAddr
            env["ETCD_SCHEME"] = self.EtcdScheme.lower()
        for name, var in (("EtcdCaFile", "ETCD_CA_CERT_FILE"),
                          ("EtcdCertFile", "ETCD_CERT_FILE"), ("EtcdKeyFile", "ETCD_KEY_FILE"),
                          ("EtcdUsername", "ETCD_USERNAME"), ("EtcdPassword", "ETCD_PASSWORD")):
            if self._values[name]:
                env[var] = self._values[name]
        return env


def read_config_file(path: str | None) -> dict[str, str]:
    """The `[global]` section of an ini file; a missing default file is empty."""
    if path is None:
        path = DEFAULT_CONFIG_FILE
        if not os.path.exists(path):
            return {}
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep CamelCase
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as exc:
        raise ConfigError("config file", path, SOURCE_FILE, str(exc).splitlines()[0]) from exc
    return dict(parser["global"]) if parser.has_section("global") else {}


def env_config(env: Mapping[str, str]) -> dict[str, str]:
    """`FELIX_<UPPERNAME>` variables, plus the shared ETCD_* ones for the etcd params."""
    out: dict[str, str] = {}
    upper = {p.name.upper(): p.name for p in PARAMS}
    for var, value in env.items():
        if var.startswith(ENV_PREFIX) and var[len(ENV_PREFIX):] in upper:
            out[upper[var[len(ENV_PREFIX):]]] = value
    for var, name in (("ETCD_ENDPOINTS", "EtcdEndpoints"), ("ETCD_CA_CERT_FILE", "EtcdCaFile"),
                      ("ETCD_CERT_FILE", "EtcdCertFile"), ("ETCD_KEY_FILE", "EtcdKeyFile"),
                      ("ETCD_TRANSPORT", "EtcdTransport"), ("ETCD_USERNAME", "EtcdUsername"),
                      ("ETCD_PASSWORD", "EtcdPassword")):
        if env.get(var) and name not in out:
            out[name] = env[var]
    return out


def load_config(*, file_values: Mapping[str, str] | None = None,
                env: Mapping[str, str] | None = None,
                etcd_global: Mapping[str, str] | None = None,
                etcd_host: Mapping[str, str] | None = None) -> Config:
    """Layer the sources (see the module docstring) into a new `Config`.

    Unknown names in etcd are ignored with a log line (other components share the
    directory); unknown names in the file or environment are ignored likewise.
    """
    layers = [
        (SOURCE_ETCD_GLOBAL, etcd_global or {}),
        (SOURCE_ETCD_HOST, etcd_host or {}),
        (SOURCE_FILE, file_values or {}),
        (SOURCE_ENV, env_config(os.environ if env is None else env)),
    ]
    raw: dict[str, str] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for name, text in layer.items():
            param = PARAMS_BY_NAME.get(name)
            if param is None:
                _log.debug("ignoring unknown config parameter %s from %s", name, source)
                continue
            if param.bootstrap and source in (SOURCE_ETCD_GLOBAL, SOURCE_ETCD_HOST):
                _log.warning("ignoring %s from %s: it may only be set in the config file "
                             "or the environment", name, source)
                continue
            if source in (SOURCE_ETCD_GLOBAL, SOURCE_ETCD_HOST):
                # etcd holds what anybody wrote: a bad value there is ignored (the layer
                # below applies), never fatal; a bad file or environment value is.
                try:
                    param.parse(text)
                except ValueError as exc:
                    _log.warning("ignoring %s=%r from %s: %s", name, text, source, exc)
                    continue
            raw[name] = text
            sources[name] = source
    values: dict[str, Any] = {}
    for param in PARAMS:
        text = raw.get(param.name, param.default)
        source = sources.setdefault(param.name, SOURCE_DEFAULT)
        if param.name == "FelixHostname" and not text.strip():
            text = socket.gethostname()
        try:
            values[param.name] = param.parse(text)
        except ValueError as exc:
            raise ConfigError(param.name, text, source, str(exc)) from None
    if bool(values["EtcdCertFile"]) != bool(values["EtcdKeyFile"]):
        name = "EtcdCertFile" if values["EtcdCertFile"] else "EtcdKeyFile"
        raise ConfigError(name, raw.get(name), sources[name],
                          "a client certificate needs both EtcdCertFile and EtcdKeyFile")
    return Config(values, sources)


def describe_params() -> str:
    """A plain-text table of every parameter, for `calico-felix --help-config`."""
    lines = []
    for p in PARAMS:
        where = " (file/env only)" if p.bootstrap else ""
        lines.append(f"{p.name} [default {p.default or '-'}]{where}: {p.help}")
    return "\n".join(lines)
