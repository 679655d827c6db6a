"""The shape of libcalico.ipam: layered modules, one write path, one retry loop.

- Each module imports on its own in a fresh interpreter - even without the package's
  `__init__` having run first - and pulls in only the IPAM modules below it.
- Only `commit` builds write transactions and runs retry loops; no module reaches into
  another object's private members or imports a private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.fresh import fresh_python

IPAM_DIR = Path(__file__).resolve().parents[2] / "libcalico" / "ipam"
# Bottom to top: each module may import only those before it.
LAYERS = ["block", "_state", "commit", "release", "pools", "client", "check"]


def test_every_module_is_listed_in_a_layer() -> None:
    assert sorted(p.stem for p in IPAM_DIR.glob("*.py") if p.stem != "__init__") == \
        sorted(LAYERS)


@pytest.mark.parametrize("name", LAYERS)
def test_module_imports_alone_in_a_fresh_interpreter(name: str) -> None:
    # As the first import of a process, through the package (its __init__ runs first).
    fresh_python(f"import libcalico.ipam.{name}")
    # Alone: the package is an empty shell, so only what the module itself imports runs.
    code = ("import sys, types\n"
            "import libcalico\n"
            f"shell = types.ModuleType('libcalico.ipam'); shell.__path__ = [{str(IPAM_DIR)!r}]\n"
            "sys.modules['libcalico.ipam'] = shell\n"
            f"import libcalico.ipam.{name}\n"
            "print(sorted(m.rpartition('.')[2] for m in sys.modules\n"
            "             if m.startswith('libcalico.ipam.')))\n")
    loaded = set(ast.literal_eval(fresh_python(code).strip()))
    below = set(LAYERS[:LAYERS.index(name) + 1])
    assert name in loaded and loaded <= below, f"{name} pulls in {sorted(loaded - below)}"


def _trees() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(IPAM_DIR.glob("*.py"))}


WRITE_OPS = {"Put", "Delete", "ModRevisionIs", "ValueIs", "Op", "Compare"}
WRITE_CALLS = {"put", "create", "create_or_raise", "cas", "cas_delete", "delete",
               "delete_prefix", "txn"}


def test_only_commit_writes_and_retries() -> None:
    offences = []
    for name, tree in _trees().items():
        if name == "commit":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "libcalico.datastore":
                offences += [f"{name} imports {a.name}" for a in node.names
                             if a.name in WRITE_OPS]
            if isinstance(node, ast.ImportFrom) and node.module == "libcalico.retry":
                offences.append(f"{name} imports from libcalico.retry")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in WRITE_CALLS):
                offences.append(f"{name}:{node.lineno} calls .{node.func.attr}()")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "range" and "retries" in ast.dump(node)):
                offences.append(f"{name}:{node.lineno} loops over the retry budget")
    assert offences == []


def test_no_private_member_of_another_object_or_module() -> None:
    offences = []
    for name, tree in _trees().items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ("self", "cls"))):
                offences.append(f"{name}:{node.lineno} uses .{node.attr}")
            if isinstance(node, ast.ImportFrom):
                offences += [f"{name}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.startswith("_")]
    assert offences == []
