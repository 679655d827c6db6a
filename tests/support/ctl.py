"""Helpers for calicoctl tests: run the CLI in-process with click's runner."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from click.testing import CliRunner

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden", "calicoctl")


@dataclass
class Result:
    code: int
    out: str
    err: str


class Ctl:
    """Runs `calicoctl ARGS` against the given etcd environment."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = {"ETCD_AUTHORITY": "", "ETCD_CA_CERT_FILE": "", "ETCD_CERT_FILE": "",
                    "ETCD_KEY_FILE": "", "HOSTNAME": "ctl-host", **env}

    def __call__(self, *args: str, input: str | bytes | None = None,  # noqa: A002
                 code: int | None = 0) -> Result:
        from calicoctl.main import cli

        runner = CliRunner()
        res = runner.invoke(cli, list(args), input=input, env=self.env, prog_name="calicoctl")
        result = Result(res.exit_code, res.stdout, res.stderr)
        if code is not None and res.exit_code != code:
            raise AssertionError(f"calicoctl {' '.join(args)}: exit {res.exit_code} "
                                 f"(wanted {code})\nstdout: {res.stdout}\nstderr: "
                                 f"{res.stderr}\n{res.exc_info if res.exception else ''}")
        return result


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/calicoctl/NAME; UPDATE_GOLDEN=1 rewrites it."""
    path = os.path.join(GOLDEN_DIR, name)
    if os.environ.get("UPDATE_GOLDEN"):
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    assert os.path.exists(path), f"missing golden file {name} (run with UPDATE_GOLDEN=1)"
    with open(path) as f:
        assert text == f.read(), f"output differs from golden file {name}"
