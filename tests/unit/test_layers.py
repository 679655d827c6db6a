"""The layers of docs/architecture.md, checked on the source: which top-level package may
import which (every import statement, also those inside functions), that no module
imports another package's private names, and that the workload plumbing and calicoctl
do not pay for pyroute2 at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("libcalico", "rtnl", "workload", "calicoctl", "calico_libnetwork", "felix", "confd",
            "cni", "netsim", "demo", "bench", "faults", "tests")
SHIPPED = ("libcalico", "rtnl", "workload", "calicoctl", "calico_libnetwork", "felix", "confd",
           "cni")
_ALL = {"libcalico", "rtnl", "workload", "calicoctl", "calico_libnetwork", "felix", "confd",
        "cni", "netsim", "demo", "bench", "faults", "tests"}

# package -> the project packages it must never import (arrows point down only).
FORBIDDEN: dict[str, set[str]] = {
    "libcalico": _ALL - {"libcalico"},
    # The one rtnetlink client: at the bottom beside libcalico; felix and workload use it.
    "rtnl": _ALL - {"rtnl"},
    "workload": _ALL - {"workload", "libcalico", "rtnl"},
    # The ways in are siblings over the workload layer: none imports another, and they
    # reach the kernel through workload's steps, never netlink directly.
    "calicoctl": _ALL - {"calicoctl", "libcalico", "workload"},
    "calico_libnetwork": _ALL - {"calico_libnetwork", "libcalico", "workload"},
    # The CNI plugins: a thin adapter over the workload layer, like calicoctl container.
    "cni": _ALL - {"cni", "libcalico", "workload"},
    "felix": _ALL - {"felix", "libcalico", "rtnl"},
    "confd": _ALL - {"confd", "libcalico"},
    "netsim": {"calico_libnetwork", "cni", "demo", "bench", "faults", "tests"},
    "demo": {"bench", "faults", "tests"},
    "bench": {"demo", "faults", "tests"},
    "faults": {"demo", "bench", "tests"},
}
# Third-party modules a package must not import at all: libcalico owns no dataplane code;
# the CNI plugins (one process per call) use etcd's JSON gateway and rtnl (through the
# workload steps); rtnl is the standard library only, so that a CNI call never pays for
# pyroute2, and it starts no process.
FORBIDDEN_LIBS = {"libcalico": {"pyroute2", "subprocess"},
                  "rtnl": {"pyroute2", "subprocess"},
                  "cni": {"pyroute2", "etcd3", "grpc", "yaml"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import; `from a import b` gives a and a.b."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _sources() -> list[tuple[str, Path]]:
    return [(pkg, path) for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))]


def test_arrows_point_down_only() -> None:
    bad = []
    for pkg, path in _sources():
        forbidden = FORBIDDEN.get(pkg, set()) | FORBIDDEN_LIBS.get(pkg, set())
        for line, name in _imports(path):
            if name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def test_the_shipped_programs_never_import_test_or_demo_code() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for pkg, path in _sources() if pkg in SHIPPED
           for line, name in _imports(path)
           if name.split(".")[0] in ("tests", "netsim", "demo", "bench", "faults")]
    assert bad == []


def test_no_module_imports_another_packages_private_names() -> None:
    """`a.b._c` (a private module or name) may be imported only from inside `a.b`."""
    bad = []
    for _, path in _sources():
        me = _module_name(path)
        for line, name in _imports(path):
            parts = name.split(".")
            for i, part in enumerate(parts[1:], start=1):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    if me != owner and not me.startswith(owner + "."):
                        bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
                    break
    assert bad == []


def test_rtnl_imports_only_the_standard_library() -> None:
    """Every top-level module rtnl imports is in the standard library (or rtnl itself)."""
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for pkg, path in _sources() if pkg == "rtnl"
           for line, name in _imports(path)
           if name.split(".")[0] not in sys.stdlib_module_names | {"rtnl"}]
    assert bad == []


@pytest.mark.parametrize("module", ["rtnl.sock", "workload", "workload.gateway", "workload.veth",
                                    "workload.addresses", "workload.provision",
                                    "workload.verify", "calicoctl.container", "cni.calico"])
def test_pyroute2_is_imported_only_when_a_netlink_step_runs(module: str) -> None:
    code = f"import sys, {module}\nprint('pyroute2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "False"


def test_felix_starts_without_pyroute2_grpc_or_protobuf() -> None:
    """Everything felix's main() imports on its way to the first apply (no encapsulated
    pool): none of the heavy libraries. `import pyroute2` alone cost every felix start
    ~0.25 s of CPU, and grpc/protobuf ~30 MB (docs/scale.md)."""
    code = ("import sys, felix.main, felix.calc.graph, felix.dataplane.apply, felix.driver, "
            "felix.health, felix.status, felix.tunnel_keeper, libcalico.syncer, "
            "libcalico.etcdgateway\n"
            "print(sorted(m for m in ('pyroute2', 'grpc', 'etcd3', 'google.protobuf') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
