"""felix.config: the declared parameter table, precedence of sources, errors."""

from __future__ import annotations

import pytest

from felix.config import (
    PARAMS,
    SOURCE_DEFAULT,
    SOURCE_ENV,
    SOURCE_ETCD_GLOBAL,
    SOURCE_ETCD_HOST,
    SOURCE_FILE,
    ConfigError,
    load_config,
    read_config_file,
)


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg.InterfacePrefix == ("cali",)
    assert cfg.DefaultEndpointToHostAction == "DROP"
    assert cfg.PrometheusMetricsPort == 9091
    assert cfg.HealthPort == 9099
    assert cfg.refresh_interval == 90
    # ssh, DHCP and BGP in; DNS, DHCP, BGP and etcd out (Calico's defaults)
    assert cfg.FailsafeInboundHostPorts == (("tcp", 22), ("udp", 68), ("tcp", 179))
    assert set(cfg.FailsafeOutboundHostPorts) == {
        ("udp", 53), ("udp", 67), ("tcp", 179), ("tcp", 2379), ("tcp", 2380), ("tcp", 4001),
        ("tcp", 7001)}
    assert cfg.IptablesMarkMask == 0xFF000000
    assert cfg.source("InterfacePrefix") == SOURCE_DEFAULT
    assert cfg.FelixHostname  # gethostname()


def test_every_param_declared_once_with_help() -> None:
    names = [p.name for p in PARAMS]
    assert len(names) == len(set(names))
    assert all(p.help for p in PARAMS)


def test_precedence_each_layer_overrides_the_one_below() -> None:
    layers = dict(etcd_global={"InterfacePrefix": "g"}, etcd_host={"InterfacePrefix": "h"},
                  file_values={"InterfacePrefix": "f"}, env={"FELIX_INTERFACEPREFIX": "e"})
    expected = [("e", SOURCE_ENV), ("f", SOURCE_FILE), ("h", SOURCE_ETCD_HOST),
                ("g", SOURCE_ETCD_GLOBAL)]
    for drop, (value, source) in zip(["", "env", "file_values", "etcd_host"], expected,
                                     strict=True):
        if drop:
            layers[drop] = {} if drop != "env" else {}
        cfg = load_config(**layers)  # type: ignore[arg-type]
        assert cfg.InterfacePrefix == (value,)
        assert cfg.source("InterfacePrefix") == source


def test_bootstrap_params_ignored_from_etcd() -> None:
    cfg = load_config(env={"FELIX_FELIXHOSTNAME": "me"},
                      etcd_global={"EtcdEndpoints": "http://evil:1", "FelixHostname": "x"},
                      etcd_host={"LogFilePath": "/tmp/x"})
    assert cfg.FelixHostname == "me"
    assert cfg.EtcdEndpoints == ""
    assert cfg.LogFilePath is None


def test_etcd_endpoints_from_shared_env_variable() -> None:
    cfg = load_config(env={"ETCD_ENDPOINTS": "http://198.18.0.254:2379"})
    assert cfg.etcd_env() == {"ETCD_ENDPOINTS": "http://198.18.0.254:2379"}
    cfg = load_config(env={"FELIX_ETCDADDR": "h:4001", "FELIX_ETCDSCHEME": "http"})
    assert cfg.etcd_env() == {"ETCD_AUTHORITY": "h:4001", "ETCD_SCHEME": "http"}


@pytest.mark.parametrize("layer,source", [("file_values", SOURCE_FILE)])
def test_error_names_param_value_and_source(layer: str, source: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, **{layer: {"DefaultEndpointToHostAction": "MAYBE"}})
    err = info.value
    assert err.field == "DefaultEndpointToHostAction"
    assert err.value == "MAYBE"
    assert source in str(err) and "MAYBE" in str(err)


def test_a_bad_value_in_etcd_is_ignored_and_the_layer_below_applies(
        caplog: pytest.LogCaptureFixture) -> None:
    """etcd holds what anybody wrote: one bad key must not stop every felix starting."""
    cfg = load_config(env={}, etcd_global={"DefaultEndpointToHostAction": "RETURN"},
                      etcd_host={"DefaultEndpointToHostAction": "MAYBE"})
    assert cfg.DefaultEndpointToHostAction == "RETURN"
    assert cfg.source("DefaultEndpointToHostAction") == SOURCE_ETCD_GLOBAL
    cfg = load_config(env={}, etcd_global={"HealthPort": "99999"})
    assert cfg.HealthPort == 9099 and cfg.source("HealthPort") == "default"
    assert any("HealthPort" in r.message and "99999" in r.message for r in caplog.records)


@pytest.mark.parametrize("name,value", [
    ("HealthPort", "99999"), ("PrometheusMetricsEnabled", "perhaps"),
    ("RefreshInterval", "-1"), ("FailsafeInboundHostPorts", "22,x"),
    ("FailsafeOutboundHostPorts", "icmp:8"), ("FailsafeOutboundHostPorts", "tcp:70000"),
    ("IptablesMarkMask", "0x1"), ("LogSeverityScreen", "LOUD"), ("InterfacePrefix", ""),
])
def test_bad_values_from_env(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={f"FELIX_{name.upper()}": value})
    assert info.value.field == name
    assert SOURCE_ENV in str(info.value)


def test_typed_values() -> None:
    cfg = load_config(env={"FELIX_IPV6SUPPORT": "false", "FELIX_REFRESHINTERVAL": "2.5",
                           "FELIX_FAILSAFEINBOUNDHOSTPORTS": "22, udp:80,TCP:443",
                           "FELIX_FAILSAFEOUTBOUNDHOSTPORTS": "none",
                           "FELIX_INTERFACEPREFIX": "cali,tap",
                           "FELIX_DEFAULTENDPOINTTOHOSTACTION": "accept",
                           "FELIX_LOGSEVERITYSCREEN": "warn"})
    assert cfg.Ipv6Support is False
    assert cfg.refresh_interval == 2.5
    assert cfg.FailsafeInboundHostPorts == (("tcp", 22), ("udp", 80), ("tcp", 443))
    assert cfg.FailsafeOutboundHostPorts == ()
    assert cfg.InterfacePrefix == ("cali", "tap")
    assert cfg.DefaultEndpointToHostAction == "ACCEPT"
    assert cfg.LogSeverityScreen == "WARNING"


def test_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "felix.cfg"
    path.write_text("[global]\nInterfacePrefix = tap\nHealthPort = 9100\n")
    cfg = load_config(file_values=read_config_file(str(path)), env={})
    assert cfg.InterfacePrefix == ("tap",)
    assert cfg.HealthPort == 9100
    assert cfg.source("HealthPort") == SOURCE_FILE
    bad = tmp_path / "bad.cfg"
    bad.write_text("not an ini file\n")
    with pytest.raises(ConfigError) as info:
        read_config_file(str(bad))
    assert str(bad) in str(info.value)


def test_config_is_immutable_and_compares_by_value() -> None:
    a = load_config(env={"FELIX_FELIXHOSTNAME": "h"})
    b = load_config(env={"FELIX_FELIXHOSTNAME": "h"})
    c = load_config(env={"FELIX_FELIXHOSTNAME": "h"}, etcd_global={"HealthPort": "1234"})
    assert a == b and a != c
    with pytest.raises(AttributeError):
        a.HealthPort = 1  # type: ignore[misc]
