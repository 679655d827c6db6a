"""The Docker engine as calicoctl's node commands reach it: the `docker` client on PATH.

Owns: `DockerCLI`, which runs `docker ...` against the engine that DOCKER_HOST names
(default unix:///var/run/docker.sock), exactly as an operator's own `docker` would;
whether that engine answers; containers and images as `docker inspect` describes them;
and `DockerError`, the one exception a failed docker command raises (command, exit
code, stderr). `DOCKER_BUILDKIT=0` is set for every command: the engines we target
build with their classic builder, which needs no buildx plugin on the client.

Leaves to others: what to run (`calicoctl.nodedocker`, `calicoctl.nodeimage`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO, Any

from calicoctl.errors import CommandFailed

DEFAULT_HOST = "unix:///var/run/docker.sock"


class DockerError(CommandFailed):
    """A docker command failed: carries the command, its exit code and stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        super().__init__(f"{' '.join(self.cmd[:3])} ... exited {returncode}: "
                         f"{lines[-1] if lines else '(no error output)'}")


def engine_address(env: Mapping[str, str] | None = None) -> str:
    """The engine the docker client talks to: $DOCKER_HOST, else the default socket."""
    return (env if env is not None else os.environ).get("DOCKER_HOST") or DEFAULT_HOST


class DockerCLI:
    """Runs the docker client; `env` is the environment it sees (default: ours)."""

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> None:
        self.env = {**(env if env is not None else os.environ), "DOCKER_BUILDKIT": "0"}
        self.timeout = timeout

    @property
    def address(self) -> str:
        return engine_address(self.env)

    def run(self, *args: str, check: bool = True, timeout: float | None = None,
            stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[str]:
        """`docker ARGS`; raises DockerError on a non-zero exit when `check`."""
        cmd = ["docker", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                  stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                  timeout=timeout or self.timeout, check=False,
                                  errors="replace")
        except FileNotFoundError:
            raise DockerError(cmd, 127, "the docker client is not installed") from None
        except subprocess.TimeoutExpired:
            raise DockerError(cmd, -1, f"no answer within {timeout or self.timeout:.0f} s"
                              ) from None
        if check and proc.returncode != 0:
            raise DockerError(cmd, proc.returncode, proc.stderr)
        return proc

    def stream(self, *args: str, say: Any, stdin: IO[bytes] | None = None) -> None:
        """`docker ARGS` with its output passed line by line to `say` (progress)."""
        cmd = ["docker", *args]
        tail: list[str] = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              env=self.env, text=True, errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    say(line)
                    tail = [*tail[-19:], line]
        if proc.returncode != 0:
            raise DockerError(cmd, proc.returncode, "\n".join(tail))

    def may_answer(self) -> bool:
        """Cheaply, without running docker: the client is installed and, for a unix://
        engine, its socket exists (a tcp:// or ssh:// engine is left to the client)."""
        if shutil.which("docker", path=self.env.get("PATH")) is None:
            return False
        address = self.address
        return not address.startswith("unix://") or \
            os.path.exists(address.removeprefix("unix://"))

    def answers(self) -> str | None:
        """None when the engine answers; else why not (one line)."""
        if shutil.which("docker", path=self.env.get("PATH")) is None:
            return "the docker client is not installed"
        try:
            proc = self.run("version", "--format", "{{.Server.Version}}", check=False,
                            timeout=10)
        except DockerError as exc:
            return exc.stderr
        if proc.returncode == 0 and proc.stdout.strip():
            return None
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"docker version exited {proc.returncode}"

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        """`docker inspect --type KIND NAME` as a dict; None when there is no such thing."""
        proc = self.run("inspect", "--type", kind, name, check=False)
        if proc.returncode != 0:
            if "No such" in proc.stderr or "no such" in proc.stderr:
                return None
            raise DockerError(["docker", "inspect", "--type", kind, name], proc.returncode,
                              proc.stderr)
        data = json.loads(proc.stdout)
        return data[0] if data else None

    def container(self, name: str) -> dict[str, Any] | None:
        return self.inspect("container", name)

    def image(self, name: str) -> dict[str, Any] | None:
        return self.inspect("image", name)
