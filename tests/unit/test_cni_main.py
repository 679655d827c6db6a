"""cni.main, the executables' shell, in process: every failure becomes one CNI error
object on stdout with the right code, logs go to the file, VERSION needs no config."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from cni import main
from libcalico.errors import (
    AddressInUse,
    AlreadyExists,
    CalicoError,
    DatastoreUnavailable,
    NotFound,
    PoolsExhausted,
    ValidationError,
)

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1"}


def call(env: dict[str, str], conf: Any, plugin: str = "calico") -> tuple[int, Any, str]:
    out = io.StringIO()
    raw = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    rc = main.run(plugin, env, io.BytesIO(raw), out)
    text = out.getvalue()
    assert text.count("\n") <= 1
    return rc, json.loads(text) if text else None, text


@pytest.mark.parametrize("exc, code", [
    (ValidationError("CNI_ARGS IP", "x", "bad"), 4),
    (ValidationError("ipam.ipv4_pools", "x", "bad"), 7),
    (DatastoreUnavailable("etcd unavailable"), 11),
    (PoolsExhausted("IPv4 pools exhausted"), 101),
    (AddressInUse("198.18.0.1", "h"), 102),
    (AlreadyExists("exists"), 103),
    (NotFound("gone"), 100),
    (CalicoError("netlink"), 100),
    (RuntimeError("boom"), 100),
])
def test_exceptions_map_to_codes(exc: BaseException, code: int) -> None:
    err = main.to_cni_error(exc)
    assert err.code == code and str(exc) in err.msg


def test_an_unexpected_exception_is_code_100_with_the_traceback_in_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: Any) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(main, "_commands", lambda plugin: {"ADD": broken})
    log = tmp_path / "sub" / "cni.log"
    conf = {"cniVersion": "0.4.0", "name": "n", "type": "calico", "log_file_path": str(log),
            "ipam": {"type": "calico-ipam"}}
    rc, out, _ = call(ENV, conf)
    assert rc == 1 and out["code"] == 100 and out["cniVersion"] == "0.4.0"
    assert "internal error: KeyError" in out["msg"]
    text = log.read_text()
    assert "Traceback" in text and "surprise" in text and "calico ADD c1" in text


def test_version_needs_no_configuration(tmp_path: Path) -> None:
    rc, out, _ = call({"CNI_COMMAND": "VERSION"}, b"",)
    assert rc == 0 and out["cniVersion"] == "1.1.0" and "0.3.0" in out["supportedVersions"]
    rc, out, _ = call({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"}, "calico-ipam")
    assert rc == 0 and out["cniVersion"] == "0.4.0"


def test_success_without_a_result_prints_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "_commands", lambda plugin: {"DEL": lambda ctx: None})
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "calico",
            "log_file_path": str(tmp_path / "l.log"), "ipam": {"type": "calico-ipam"}}
    rc, out, text = call({**ENV, "CNI_COMMAND": "DEL"}, conf)
    assert (rc, out, text) == (0, None, "")


@pytest.mark.parametrize("raw, version", [
    (b'{"cniVersion": "0.3.1"}', "0.3.1"),
    (b'{"cniVersion":"1.0.0","name":"x"}', "1.0.0"),
    (b'{"name": "x",\n  "cniVersion" :  "0.4.0" }', "0.4.0"),
    (b'{"cniVersion": "9.9.9"}', "1.1.0"),
    (b'{"cniVersion": 4}', "1.1.0"),
    (b'{"cniVersion": "0.4.0', "1.1.0"),
    (b"", "1.1.0"),
    (b"not json at all", "1.1.0"),
])
def test_version_reads_the_asked_version_without_json(raw: bytes, version: str) -> None:
    from cni.versions import SUPPORTED_VERSIONS

    out = io.StringIO()
    assert main.run("calico", {"CNI_COMMAND": "VERSION"}, io.BytesIO(raw), out) == 0
    assert json.loads(out.getvalue()) == {"cniVersion": version,
                                          "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_a_percent_in_the_environment_does_not_break_the_log(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Found by tests/fuzz/test_fuzz_cni.py: CNI_COMMAND '%' reached the log format
    string and logging printed a traceback to stderr."""
    log = tmp_path / "cni.log"
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "calico",
            "log_file_path": str(log), "ipam": {"type": "calico-ipam"}}
    rc, out, _ = call({**ENV, "CNI_COMMAND": "%s%(x)d%", "CNI_CONTAINERID": "%%"}, conf)
    assert rc == 1 and out["code"] == 4 and "CNI_COMMAND" in out["msg"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    assert "CNI_COMMAND" in log.read_text()
