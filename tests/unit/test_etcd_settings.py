"""Unit tests for EtcdSettings.from_env: endpoints, the legacy authority, TLS variables and
the errors for bad settings. Parsing only; no etcd and no connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from libcalico.datastore import (
    DEFAULT_TIMEOUT,
    Datastore,
    Endpoint,
    EtcdSettings,
    parse_endpoint_url,
)
from libcalico.errors import ValidationError

TLS_ENV = {"ETCD_CA_CERT_FILE": "/etc/calico/ca.pem", "ETCD_CERT_FILE": "/etc/calico/cert.pem",
           "ETCD_KEY_FILE": "/etc/calico/key.pem"}


def test_default_is_local_authority() -> None:
    s = EtcdSettings.from_env({})
    assert s.endpoints == (Endpoint("http", "127.0.0.1", 2379),)
    assert s.endpoints[0].url == "http://127.0.0.1:2379"
    assert (s.ca_cert, s.cert_file, s.key_file) == (None, None, None)
    assert s.timeout == DEFAULT_TIMEOUT


def test_empty_variables_count_as_unset() -> None:
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "", "ETCD_AUTHORITY": "",
                               "ETCD_CA_CERT_FILE": ""})
    assert s.endpoints == (Endpoint("http", "127.0.0.1", 2379),)
    assert s.ca_cert is None


def test_authority() -> None:
    s = EtcdSettings.from_env({"ETCD_AUTHORITY": "198.18.0.10:4001"})
    assert s.endpoints == (Endpoint("http", "198.18.0.10", 4001),)


def test_authority_without_port_uses_2379() -> None:
    s = EtcdSettings.from_env({"ETCD_AUTHORITY": "etcd.example"})
    assert s.endpoints == (Endpoint("http", "etcd.example", 2379),)


def test_several_endpoints_keep_their_fail_over_order() -> None:
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS":
                               "http://198.18.0.3:2379, http://198.18.0.1:22379,,"
                               "http://[fd00::2]:2379 "})
    assert s.endpoints == (Endpoint("http", "198.18.0.3", 2379),
                           Endpoint("http", "198.18.0.1", 22379),
                           Endpoint("http", "fd00::2", 2379))
    assert [e.url for e in s.endpoints] == ["http://198.18.0.3:2379", "http://198.18.0.1:22379",
                                            "http://[fd00::2]:2379"]


def test_endpoints_win_over_authority() -> None:
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "http://198.18.0.5:2379",
                               "ETCD_AUTHORITY": "198.18.0.6:2379"})
    assert s.endpoints == (Endpoint("http", "198.18.0.5", 2379),)


def test_explicit_arguments_win_over_environment() -> None:
    env = {"ETCD_ENDPOINTS": "http://198.18.0.5:2379", **TLS_ENV}
    s = EtcdSettings.from_env(env, endpoints="http://198.18.0.7:1234", ca_cert="/ca",
                              cert_file="/c", key_file="/k", timeout=1.5)
    assert s.endpoints == (Endpoint("http", "198.18.0.7", 1234),)
    assert (s.ca_cert, s.cert_file, s.key_file, s.timeout) == ("/ca", "/c", "/k", 1.5)


def test_reads_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE",
                "ETCD_SCHEME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ETCD_AUTHORITY", "198.18.0.9:2379")
    assert EtcdSettings.from_env().endpoints == (Endpoint("http", "198.18.0.9", 2379),)


def test_https_endpoints_with_tls_files() -> None:
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "https://198.18.0.1:2379,https://198.18.0.2:2379",
                               **TLS_ENV})
    assert [e.scheme for e in s.endpoints] == ["https", "https"]
    assert s.ca_cert == "/etc/calico/ca.pem"
    assert s.cert_file == "/etc/calico/cert.pem"
    assert s.key_file == "/etc/calico/key.pem"


def test_https_with_ca_only_is_server_authentication() -> None:
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "https://198.18.0.1:2379",
                               "ETCD_CA_CERT_FILE": "/ca.pem"})
    assert s.ca_cert == "/ca.pem" and s.cert_file is None and s.key_file is None


def test_authority_with_ca_means_https() -> None:
    s = EtcdSettings.from_env({"ETCD_AUTHORITY": "198.18.0.1:2379", **TLS_ENV})
    assert s.endpoints == (Endpoint("https", "198.18.0.1", 2379),)


def test_authority_with_scheme_variable() -> None:
    s = EtcdSettings.from_env({"ETCD_AUTHORITY": "198.18.0.1:2379", "ETCD_SCHEME": "https",
                               "ETCD_CA_CERT_FILE": "/ca.pem"})
    assert s.endpoints == (Endpoint("https", "198.18.0.1", 2379),)


@pytest.mark.parametrize("env", [
    {"ETCD_ENDPOINTS": "https://198.18.0.1:2379"},
    {"ETCD_ENDPOINTS": "http://198.18.0.1:2379,https://198.18.0.2:2379"},
    {"ETCD_ENDPOINTS": "https://198.18.0.1:2379", "ETCD_CERT_FILE": "/c", "ETCD_KEY_FILE": "/k"},
    {"ETCD_AUTHORITY": "198.18.0.1:2379", "ETCD_SCHEME": "https"},
])
def test_https_without_ca_names_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        EtcdSettings.from_env(env)
    assert info.value.field == "ETCD_CA_CERT_FILE"
    assert "ETCD_CA_CERT_FILE" in str(info.value)


@pytest.mark.parametrize("env", [
    {"ETCD_ENDPOINTS": "https://198.18.0.1:2379", "ETCD_CA_CERT_FILE": "/ca",
     "ETCD_CERT_FILE": "/c"},
    {"ETCD_ENDPOINTS": "https://198.18.0.1:2379", "ETCD_CA_CERT_FILE": "/ca",
     "ETCD_KEY_FILE": "/k"},
])
def test_client_cert_needs_cert_and_key(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        EtcdSettings.from_env(env)
    assert "ETCD_CERT_FILE" in info.value.field and "ETCD_KEY_FILE" in info.value.field


@pytest.mark.parametrize("value", [
    ",", " , ", "ftp://198.18.0.1:2379", "http://", "http://198.18.0.1:notaport",
    "http://198.18.0.1:99999", "http://198.18.0.1:2379,ftp://198.18.0.2:2379",
    "unix://relative/etcd.sock:0", "unix:///tmp/etcd-no-port",
])
def test_bad_endpoints_name_the_variable_and_value(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        EtcdSettings.from_env({"ETCD_ENDPOINTS": value})
    assert info.value.field == "ETCD_ENDPOINTS"
    assert info.value.value.strip() in value


def test_bad_authority_names_its_variable() -> None:
    with pytest.raises(ValidationError) as info:
        EtcdSettings.from_env({"ETCD_AUTHORITY": "198.18.0.1:notaport"})
    assert info.value.field == "ETCD_AUTHORITY"


def test_unix_socket_endpoint() -> None:
    e = parse_endpoint_url("unix:///run/etcd/etcd.sock:0")
    assert e.scheme == "unix"
    assert e.url == "unix:///run/etcd/etcd.sock:0"
    assert e.grpc_target == ("unix:/run/etcd/etcd.sock", "0")


def test_url_without_scheme_is_http() -> None:
    assert parse_endpoint_url("198.18.0.4:2380") == Endpoint("http", "198.18.0.4", 2380)


@pytest.mark.parametrize("missing", ["ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"])
def test_unreadable_tls_file_names_the_variable(tmp_path: Path, missing: str) -> None:
    env = {"ETCD_ENDPOINTS": "https://127.0.0.1:1"}
    for var in ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
        path = tmp_path / var.lower()
        if var != missing:
            path.write_text("not used: the missing file is reported before connecting")
        env[var] = str(path)
    with (Datastore(EtcdSettings.from_env(env, timeout=1)) as store,
          pytest.raises(ValidationError) as info):
        store.get("/calico/v1/Ready")
    assert info.value.field == missing
    assert info.value.value == env[missing]


def test_user_and_password_come_together_and_the_password_is_never_shown() -> None:
    s = EtcdSettings.from_env({"ETCD_USERNAME": "calico", "ETCD_PASSWORD": "pw-123"})
    assert (s.username, s.password) == ("calico", "pw-123")
    assert "pw-123" not in repr(s)
    for env in ({"ETCD_USERNAME": "calico"}, {"ETCD_PASSWORD": "pw-123"}):
        with pytest.raises(ValidationError) as info:
            EtcdSettings.from_env(env)
        assert "pw-123" not in str(info.value)


def test_unixs_endpoints_are_tls_over_the_socket() -> None:
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "unixs:///run/etcd/etcd.sock:0",
                               "ETCD_CA_CERT_FILE": "/ca.pem"})
    assert s.endpoints[0].tls and s.endpoints[0].grpc_target == ("unix:/run/etcd/etcd.sock", "0")
    with pytest.raises(ValidationError):
        EtcdSettings.from_env({"ETCD_ENDPOINTS": "unixs:///run/etcd/etcd.sock:0"})


def test_errors_about_secret_fields_never_quote_the_value() -> None:
    for field in ("password", "bgp password", "SomeToken", "client_secret"):
        assert "hunter2" not in str(ValidationError(field, "hunter2", "bad"))
    assert "'eth0'" in str(ValidationError("interface", "eth0", "bad"))


def test_an_unclosed_ipv6_bracket_is_a_validation_error() -> None:
    """Found by tests/fuzz/test_fuzz_cni.py (`etcd_endpoints: "["`): urlsplit's
    ValueError was an internal error of the CNI plugin."""
    for url in ("[", "http://[fd00::1", "https://[::1:2379"):
        with pytest.raises(ValidationError) as info:
            parse_endpoint_url(url, field="etcd_endpoints")
        assert info.value.field == "etcd_endpoints"
