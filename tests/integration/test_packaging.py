"""`pip install .` (not editable) gives working programs that find their data files.

The project's tracked files are copied to a temp dir and installed from there with
`pip install --no-deps` into a fresh venv, so the installed copy cannot lean on the
checkout. The venv reaches the dependencies through a .pth line naming this project's
.venv site-packages (a plain path: the editable install's own .pth hook there is not
run), so nothing is downloaded; the build runs without isolation, with the setuptools
the test extras install (the pyproject's build requirement). Every program then runs
from the venv with the working directory outside the checkout: `--help`, `version`,
confd rendering a BIRD configuration from the installed templates, and the node code
finding the installed supervisord configuration. The build output must carry no
deprecation warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict, str]]:
    tmp = tmp_path_factory.mktemp("pkg")
    src, venv, work = tmp / "src", tmp / "venv", tmp / "work"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALICO_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work, env=env)
    target = Path(subprocess.run([venv / "bin" / "python", "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    (target / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    build = _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
                 "-v", "--no-deps", "--no-build-isolation", "--no-cache-dir", src,
                 cwd=work, env=env)
    try:
        yield venv, env, build.stdout + build.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_build_is_clean_and_installs_a_copy(installed: tuple[Path, dict, str]) -> None:
    venv, env, output = installed
    assert "Successfully installed pycalico-net" in output
    assert "deprecat" not in output.lower(), [line for line in output.splitlines()
                                              if "deprecat" in line.lower()]
    code = ("import calicoctl, cni, confd, felix, libcalico, netsim, workload\n"
            "for m in (calicoctl, cni, confd, felix, libcalico, netsim, workload):\n"
            "    print(m.__file__)")
    out = _run(venv / "bin" / "python", "-c", code, cwd=venv, env=env).stdout.split()
    assert len(out) == 7 and all(path.startswith(str(venv)) for path in out), out


@pytest.mark.parametrize("cmd, expect", [
    (["calicoctl", "--help"], "container"),
    (["calicoctl", "version"], "0.1.0"),
    (["calico-felix", "--help"], "Usage"),
    (["calico-confd", "--help"], "--onetime"),
    (["calicoctl", "cni", "--help"], "install"),
])
def test_the_installed_programs_run(installed: tuple[Path, dict, str], cmd: list[str],
                                    expect: str) -> None:
    venv, env, _ = installed
    out = _run(venv / "bin" / cmd[0], *cmd[1:], cwd=venv, env=env).stdout
    assert expect in out


def test_confd_renders_from_the_installed_templates(installed: tuple[Path, dict, str]
                                                    ) -> None:
    venv, env, _ = installed
    code = ("from confd.render import find_templates_dir, render\n"
            "from confd.view import build_view\n"
            "print(find_templates_dir())\n"
            "view = build_view({'/calico/bgp/v1/host/h1/ip_addr_v4': '198.18.0.1',\n"
            "                   '/calico/bgp/v1/global/as_num': '64512'})\n"
            "print(render(view, 'h1'))")
    out = _run(venv / "bin" / "python", "-c", code, cwd=venv, env=env).stdout
    assert out.splitlines()[0] == str(venv / "share" / "calico-confd" / "templates")
    assert "router id 198.18.0.1;" in out


def test_the_node_code_finds_the_installed_supervisord_config(
        installed: tuple[Path, dict, str]) -> None:
    venv, env, _ = installed
    code = ("from calicoctl.supervisor import node_image_dir\n"
            "d = node_image_dir()\n"
            "print(d)\n"
            "print(sorted(p.name for p in (d / 'programs').iterdir()))")
    out = _run(venv / "bin" / "python", "-c", code, cwd=venv, env=env).stdout.splitlines()
    assert out[0] == str(venv / "share" / "calico-node")
    assert out[1] == "['bird.conf', 'confd.conf', 'felix.conf']"
    assert (Path(out[0]) / "supervisord.conf").is_file()


def test_the_installed_cni_plugins_run(installed: tuple[Path, dict, str],
                                       tmp_path: Path) -> None:
    """The console scripts, and the launchers `calicoctl cni install` writes, which run
    the installed copy (site-packages) with `python -I -S`."""
    venv, env, _ = installed
    version = {**env, "CNI_COMMAND": "VERSION"}
    for name in ("calico", "calico-ipam"):
        proc = subprocess.run([venv / "bin" / name], input='{"cniVersion": "0.3.1"}',
                              capture_output=True, text=True, env=version, cwd=tmp_path,
                              check=True)
        assert '"cniVersion": "0.3.1"' in proc.stdout
    _run(venv / "bin" / "calicoctl", "cni", "install", "--bin-dir", tmp_path / "bin",
         cwd=tmp_path, env=env)
    launcher = (tmp_path / "bin" / "calico").read_text()
    assert launcher.startswith(f"#!{venv}/bin/python") and str(venv) in launcher
    assert str(ROOT) not in launcher
    proc = subprocess.run([tmp_path / "bin" / "calico-ipam"], input="{}",
                          capture_output=True, text=True, env=version, cwd=tmp_path,
                          check=True)
    assert '"supportedVersions"' in proc.stdout
