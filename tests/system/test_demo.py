"""The README's main-job command end to end: `scripts/demo.sh` builds the 3-host cluster
(nodes without Docker, and with `--runtime=docker` as node containers), shows the matrix
before and after the deny rule, and leaves nothing behind.

Each run uses its own state file (so a demo a person keeps running is never touched) and
checks the outcome the demo prints (exit status, the matrix summaries) plus what is on the
machine afterwards: the namespaces and processes the state file names are gone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from netsim.netns import namespace_exists, namespace_pids
from netsim.netns import process_alive as alive
from netsim.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "scripts" / "demo.sh")
EXPECTED_LINES = [
    "matrix before IPv4: ping 30/30, tcp:8080 30/30, tcp:9090 30/30 -> as expected",
    "matrix before IPv6: ping 30/30, tcp:8080 30/30, tcp:9090 30/30 -> as expected",
    "matrix after IPv4: ping 30/30, tcp:8080 0/30, tcp:9090 30/30 -> as expected",
    "matrix after IPv6: ping 30/30, tcp:8080 0/30, tcp:9090 30/30 -> as expected",
]

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]


def demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEMO, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def cleanup(state: Path) -> None:
    if state.exists():
        demo("--teardown", "--state-file", str(state), timeout=60)


def test_keep_runs_the_matrix_then_teardown_removes_everything(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    try:
        run = demo("--keep", "--state-file", str(state))
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
        lines = run.stdout.splitlines()
        for line in EXPECTED_LINES:
            assert line in lines, run.stdout[-4000:]
        assert any(line.startswith("demo PASSED") for line in lines)
        # The rule the README (and the demo's docstring) names is the one the demo adds.
        assert "calicoctl profile demo rule add inbound --at=0 deny tcp to ports 8080" \
            in run.stdout
        assert f"scripts/demo.sh --teardown --state-file {state}" in run.stdout

        recorded = json.loads(state.read_text())
        namespaces = recorded["namespaces"]
        assert len(namespaces) == 1 + 3 + 6  # fabric, hosts, workloads
        assert all(namespace_exists(n) for n in namespaces)
        pids = [p for n in namespaces for p in namespace_pids(n)]
        assert len(pids) >= 3 * 4 + 1 + 6  # per host supervisord+3 programs, etcd, listeners
        # Still working after the demo returned: a workload reaches one on another host.
        wls = recorded["info"]["workloads"]
        src, dst = wls["host1/w1"], wls["host3/w2"]
        for addr in (dst["ipv4"], dst["ipv6"]):
            ping = subprocess.run(["ip", "netns", "exec", src["ns"], "ping", "-c", "1",
                                   "-W", "2", addr], capture_output=True, check=False)
            assert ping.returncode == 0, addr

        down = demo("--teardown", "--state-file", str(state), timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not state.exists()
        assert [n for n in namespaces if namespace_exists(n)] == []
        assert [p for p in pids if alive(p)] == []
        assert [d for d in recorded["dirs"] if os.path.exists(d)] == []
    finally:
        cleanup(state)


def test_interrupt_tears_down(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "demo.cluster", "--state-file", str(state)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Interrupt once the workloads exist (the state file names all ten namespaces).
        def workloads_recorded() -> list[str] | None:
            data = json.loads(state.read_text()) if state.exists() else {}
            return data["namespaces"] if len(data.get("namespaces", [])) == 10 else None

        namespaces = wait_for(workloads_recorded, timeout=120, message="the demo's workloads")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
        assert proc.returncode != 0, out[-3000:]
        assert "interrupted; tearing down" in err or "failed" in err, err
        assert "teardown: stopped" in out
        assert [n for n in namespaces if namespace_exists(n)] == []
        assert not state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cleanup(state)


def test_teardown_without_a_state_file_is_a_no_op(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "demo.cluster", "--teardown", "--state-file",
                          str(tmp_path / "none.json")], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0
    assert "nothing to tear down" in run.stdout


def test_refuses_to_start_while_a_kept_demo_exists(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": 1, "namespaces": [], "dirs": [], "info": {}}))
    run = subprocess.run([sys.executable, "-m", "demo.cluster", "--state-file", str(state)],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "--teardown" in run.stderr
    assert state.exists()


def test_docker_runtime_runs_the_same_matrix_with_node_containers(tmp_path: Path) -> None:
    """`--runtime=docker`: a Docker engine per host, containers calico-node and
    calico-libnetwork on each, the workloads `docker run` on a calico network; the same
    matrix; `--teardown` of the kept demo removes engines, containers and mounts."""
    state = tmp_path / "state.json"
    try:
        run = demo("--runtime=docker", "--keep", "--state-file", str(state), timeout=420)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
        lines = run.stdout.splitlines()
        for line in EXPECTED_LINES:
            assert line in lines, run.stdout[-4000:]
        assert "== 2. calicoctl node --runtime=docker on every host at once" in run.stdout
        assert sum(1 for line in lines if re.search(r"host\d: Calico node host\d is running",
                                                    line)) == 3
        recorded = json.loads(state.read_text())
        engines = recorded["info"]["engines"]
        assert sorted(engines) == ["host1", "host2", "host3"]
        # The workloads are `docker run --net=demo` containers of a calico network.
        assert "docker network create -d calico --ipam-driver calico-ipam --ipv6 demo" \
            in run.stdout
        for engine in engines.values():
            env = {**os.environ, "DOCKER_HOST": engine}
            ps = subprocess.run(["docker", "ps", "--format", "{{.Names}} {{.Image}}"],
                                env=env, capture_output=True, text=True, check=True).stdout
            assert "calico-node pycalico-net/node:" in ps
            assert "calico-libnetwork pycalico-net/node:" in ps
            for name in ("w1", "w2"):
                nets = subprocess.run(["docker", "inspect", "-f",
                                       "{{json .NetworkSettings.Networks}}", name], env=env,
                                      capture_output=True, text=True, check=True).stdout
                assert list(json.loads(nets)) == ["demo"]
        assert all(w["container"] in ("w1", "w2") and w["ns"] is None
                   for w in recorded["info"]["workloads"].values())
        namespaces = recorded["namespaces"]
        pids = [p for n in namespaces for p in namespace_pids(n)]

        down = demo("--teardown", "--state-file", str(state), timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert [n for n in namespaces if namespace_exists(n)] == []
        assert [p for p in pids if alive(p)] == []
        assert [d for d in recorded["dirs"] if os.path.exists(d)] == []
        with open("/proc/mounts") as f:
            mounts = f.read()
        assert not any(d in mounts for d in recorded["dirs"])
    finally:
        cleanup(state)
