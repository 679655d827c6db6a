"""Putting a rendered configuration live: validate, swap atomically, reload BIRD.

Owns: the live configuration file and BIRD's reloads. `BirdApplier.apply(text)`:
1. does nothing when `text` is what the live file already holds (and BIRD has it);
2. writes `text` to a temporary file next to the live one and checks it with
   `bird -p -c <tmp>`; an invalid text leaves the live file alone and is reported with
   the file, line, column, BIRD's message and the offending line (`ConfigError`);
3. renames the temporary file over the live one (atomic on one filesystem);
4. asks BIRD to load it: `birdc -s <socket> configure "<live file>"`. When BIRD is not
   running (no socket, connection refused) the reload stays pending: BIRD reads the file
   when it starts, and the daemon retries `reload()` until BIRD answers.

State: `_live` holds the live file's content as last written or read; `_rejected` the
last text `bird -p` refused (not checked again); `reload_pending` whether BIRD has yet
to load `_live`.

Leaves to others: what the text says (`confd.render`), when to apply (`confd.daemon`).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from libcalico.errors import CalicoError

_log = logging.getLogger(__name__)

# bird -p: "bird: /path/file.conf:12:3 syntax error, unexpected ..."
_BIRD_ERROR = re.compile(r"^(?:bird: )?(?P<file>[^\n]*?):(?P<line>\d+):(?P<col>\d+) (?P<msg>.*)$",
                         re.MULTILINE)
_NOT_RUNNING = ("Unable to connect to server control socket",)
_RELOAD_OK = ("Reconfigured", "Reconfiguration in progress",
              "Reconfiguration already in progress", "Reconfiguration ignored")


class CommandError(CalicoError):
    """A subprocess failed: carries the command, exit code, output and input."""

    def __init__(self, cmd: list[str], returncode: int, output: str, input_text: str = ""):
        self.cmd = cmd
        self.returncode = returncode
        self.output = output
        self.input_text = input_text
        super().__init__(f"{' '.join(cmd)} exited with {returncode}: {output.strip()}")


@dataclass(frozen=True)
class ConfigError:
    """Why BIRD refused a configuration, and where."""

    file: str
    line: int
    column: int
    message: str
    line_text: str

    def __str__(self) -> str:
        return (f"{self.file}:{self.line}:{self.column}: {self.message}"
                + (f": {self.line_text.strip()!r}" if self.line_text.strip() else ""))


@dataclass(frozen=True)
class ApplyResult:
    changed: bool = False  # the live file was replaced
    reloaded: bool = False  # BIRD has loaded the live file
    reload_pending: bool = False  # BIRD not reachable yet
    error: ConfigError | None = None  # the text was invalid; the live file is untouched


def parse_bird_error(output: str, text: str, checked_path: str) -> ConfigError:
    """BIRD's "file:line:col message", with the offending line of `text` (or the file)."""
    m = _BIRD_ERROR.search(output)
    if m is None:
        return ConfigError(checked_path, 0, 0, output.strip() or "bird -p failed", "")
    file, line, col = m["file"], int(m["line"]), int(m["col"])
    if os.path.basename(file) == os.path.basename(checked_path):
        lines = text.splitlines()
    else:
        try:
            lines = Path(file).read_text(errors="replace").splitlines()
        except OSError:
            lines = []
    line_text = lines[line - 1] if 0 < line <= len(lines) else ""
    return ConfigError(file, line, col, m["msg"].strip(), line_text)


class BirdApplier:
    """Owns one BIRD's configuration file and reloads it through its control socket."""

    def __init__(self, config_path: str, socket_path: str, *, bird_bin: str = "bird",
                 birdc_bin: str = "birdc", include_dir: str | None = None,
                 timeout: float = 30.0) -> None:
        self.config_path = Path(config_path)
        self.socket_path = socket_path
        self.bird_bin = bird_bin
        self.birdc_bin = birdc_bin
        self.include_dir = include_dir
        self.timeout = timeout
        try:
            self._live: str | None = self.config_path.read_text()
        except OSError:
            self._live = None
        self._rejected: str | None = None
        # BIRD may have been started with an older file: load ours once.
        self.reload_pending = True
        self.last_error: ConfigError | None = None
        self._waiting = False  # BIRD was found not running (logged once)

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout,
                              check=False)

    def check(self, text: str) -> tuple[Path | None, ConfigError | None]:
        """Write `text` to a temporary file and `bird -p` it: (path, None) or (None, error)."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        if self.include_dir:
            Path(self.include_dir).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.config_path.name}.",
                                   dir=self.config_path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            proc = self._run([self.bird_bin, "-p", "-c", tmp])
            if proc.returncode == 0:
                return Path(tmp), None
            error = parse_bird_error(proc.stderr + proc.stdout, text, tmp)
            os.unlink(tmp)
            return None, error
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def apply(self, text: str) -> ApplyResult:
        """Make `text` BIRD's configuration, if it is new and valid."""
        if text == self._live:
            if self.reload_pending:
                return ApplyResult(reloaded=self.reload(), reload_pending=self.reload_pending)
            return ApplyResult(reloaded=False)
        if text == self._rejected:
            return ApplyResult(error=self.last_error)
        tmp, error = self.check(text)
        if error is not None:
            self._rejected, self.last_error = text, error
            _log.error("rendered BIRD configuration is invalid; keeping %s: %s",
                       self.config_path, error)
            return ApplyResult(error=error)
        assert tmp is not None
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.config_path)
        self._live, self._rejected, self.last_error = text, None, None
        self.reload_pending = True
        reloaded = self.reload()
        return ApplyResult(changed=True, reloaded=reloaded, reload_pending=self.reload_pending)

    def reread_live(self) -> None:
        """Forget what we believe the live file holds: the next `apply` compares with the
        file itself, so a hand edit or a deleted file is repaired."""
        try:
            self._live = self.config_path.read_text()
        except OSError:
            self._live = None

    def reload(self) -> bool:
        """`birdc configure` the live file; False (reload stays pending) if BIRD is absent."""
        cmd = [self.birdc_bin, "-s", self.socket_path, "configure", f'"{self.config_path}"']
        proc = self._run(cmd)
        out = proc.stdout + proc.stderr
        if any(s in out for s in _RELOAD_OK):
            self.reload_pending = self._waiting = False
            _log.info("BIRD reconfigured from %s", self.config_path)
            return True
        if any(s in out for s in _NOT_RUNNING):
            if not self._waiting:
                _log.info("BIRD is not running at %s yet; it will load %s when it is",
                          self.socket_path, self.config_path)
            self._waiting = True
            self.reload_pending = True
            return False
        raise CommandError(cmd, proc.returncode, out)

    def bird_running(self) -> bool:
        proc = self._run([self.birdc_bin, "-s", self.socket_path, "show", "status"])
        return proc.returncode == 0 and "BIRD" in proc.stdout
