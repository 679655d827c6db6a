"""A fresh interpreter for import checks: what a module pulls in, and whether it imports
at all, when nothing was imported before it.

Owns: `fresh_python`, which runs a snippet in a new interpreter (the test's own Python,
from the repository root) and returns its stdout; a failing snippet fails the test with
its stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fresh_python(code: str) -> str:
    """stdout of `code` run in a fresh interpreter (nothing imported beforehand)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, cwd=ROOT, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"fresh interpreter failed ({proc.returncode}):\n{code}\n"
                             f"{proc.stderr}")
    return proc.stdout
