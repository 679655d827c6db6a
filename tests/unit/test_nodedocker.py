"""The node container's settings, its entry point's command and the image's inputs, as
values: what `docker run` gets, what PID 1 runs, which files make the image (pure parts of
calicoctl.nodedocker, calicoctl.nodeentry and calicoctl.nodeimage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from calicoctl import nodeimage
from calicoctl.nodedocker import (
    LIBNETWORK_SOCKET,
    NODE_CAPABILITIES,
    DockerNodeSpec,
    render_libnetwork_run,
    render_node_run,
    resolve_runtime,
    tail,
)
from calicoctl.nodeentry import clear_stale_state, graceful_bird_stop, node_command

ETCD = {"ETCD_ENDPOINTS": "https://198.18.0.254:2379", "ETCD_CA_CERT_FILE": "/etc/ca.pem",
        "ETCD_CERT_FILE": "/etc/cert.pem", "ETCD_KEY_FILE": "/etc/key.pem"}


def parse(args: list[str]) -> dict[str, object]:
    """The `docker run` arguments as {"flags", "env", "mounts", "labels", "image"}."""
    assert args[0] == "run"
    flags: list[str] = []
    env: dict[str, str] = {}
    mounts: list[str] = []
    labels: dict[str, str] = {}
    rest = args[1:-1]
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("-e", "-v", "--label", "--name", "--security-opt", "--entrypoint"):
            value = rest[i + 1]
            if a == "-e":
                k, v = value.split("=", 1)
                env[k] = v
            elif a == "-v":
                mounts.append(value)
            elif a == "--label":
                k, v = value.split("=", 1)
                labels[k] = v
            else:
                flags.append(f"{a}={value}")
            i += 2
        else:
            flags.append(a)
            i += 1
    return {"flags": flags, "env": env, "mounts": mounts, "labels": labels,
            "image": args[-1]}


def spec(**kw: object) -> DockerNodeSpec:
    base: dict[str, object] = dict(name="host1", ip="198.18.0.1", ip6="fd00:198:18::1",
                                   as_num=64513, backend="bird", run_dir="/run/calico-h1",
                                   log_dir="/var/log/calico-h1", image="img:1")
    base.update(kw)
    return DockerNodeSpec(**base)  # type: ignore[arg-type]


def test_the_node_container_gets_host_networking_explicit_caps_and_its_identity() -> None:
    env = {"FELIX_LOGSEVERITYSCREEN": "debug", "NO_DEFAULT_POOLS": "1", "HOME": "/root",
           "DOCKER_HOST": "unix:///x"}
    run = parse(render_node_run(spec(), "198.18.0.1", ETCD, env, "/etc/calico/bird.d"))
    flags = run["flags"]
    assert isinstance(flags, list)
    assert "--net=host" in flags and "--detach" in flags
    assert "--name=calico-node" in flags
    assert not any("privileged" in f for f in flags)
    assert "--cap-drop=ALL" in flags
    assert sorted(f.split("=")[1] for f in flags if f.startswith("--cap-add=")) == \
        sorted(NODE_CAPABILITIES)
    assert "--security-opt=systempaths=unconfined" in flags
    assert "--restart=unless-stopped" in flags
    assert run["mounts"] == ["/etc/ca.pem:/etc/ca.pem:ro", "/etc/cert.pem:/etc/cert.pem:ro",
                             "/etc/key.pem:/etc/key.pem:ro",
                             "/var/log/calico-h1:/var/log/calico-h1",
                             "/run/calico-h1:/run/calico-h1",
                             "/etc/calico/bird.d:/etc/calico/bird.d"]
    assert run["env"] == {
        "HOSTNAME": "host1", "IP": "198.18.0.1", "IP6": "fd00:198:18::1", "AS": "64513",
        "CALICO_NETWORKING_BACKEND": "bird", "CALICO_RUN_DIR": "/run/calico-h1",
        "CALICO_LOG_DIR": "/var/log/calico-h1", "CALICO_BIRD_INCLUDE_DIR": "/etc/calico/bird.d",
        "FELIX_LOGSEVERITYSCREEN": "debug", "NO_DEFAULT_POOLS": "1", **ETCD}
    assert run["labels"] == {"org.pycalico-net.component": "node",
                             "org.pycalico-net.node": "host1"}
    assert run["image"] == "img:1"


def test_relative_directories_are_mounted_by_absolute_path_and_defaults_left_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = parse(render_node_run(spec(run_dir="run", log_dir="log", ip6=None, as_num=None,
                                     image=None), "198.18.0.1",
                                {"ETCD_ENDPOINTS": "http://127.0.0.1:2379"}, {}, "/inc"))
    assert f"{tmp_path}/run:{tmp_path}/run" in run["mounts"]  # type: ignore[operator]
    env = run["env"]
    assert isinstance(env, dict)
    assert "IP6" not in env and "AS" not in env
    assert env["CALICO_LOG_DIR"] == f"{tmp_path}/log"
    assert run["image"] == nodeimage.DEFAULT_IMAGE


def test_the_driver_container_runs_its_entry_point_with_the_plugin_directory() -> None:
    run = parse(render_libnetwork_run(spec(), ETCD, "unix:///var/run/docker.sock"))
    flags = run["flags"]
    assert isinstance(flags, list)
    assert "--name=calico-libnetwork" in flags and "--net=host" in flags
    assert "--entrypoint=calico-libnetwork" in flags
    assert "/run/docker/plugins:/run/docker/plugins" in run["mounts"]  # type: ignore[operator]
    # The engine's API, for network names and labels: its socket and DOCKER_HOST.
    assert "/var/run/docker.sock:/var/run/docker.sock" in run["mounts"]  # type: ignore[operator]
    assert run["env"] == {"HOSTNAME": "host1", "CALICO_LIBNETWORK_SOCKET": LIBNETWORK_SOCKET,
                          "DOCKER_HOST": "unix:///var/run/docker.sock", **ETCD}


def test_the_driver_container_reaches_a_tcp_engine_without_a_mount() -> None:
    run = parse(render_libnetwork_run(spec(), ETCD, "tcp://198.18.0.1:2375"))
    assert not any("docker.sock" in m for m in run["mounts"])  # type: ignore[attr-defined]
    assert run["env"]["DOCKER_HOST"] == "tcp://198.18.0.1:2375"  # type: ignore[index]
    assert run["labels"] == {"org.pycalico-net.component": "libnetwork",
                             "org.pycalico-net.node": "host1"}
    assert run["image"] == "img:1"


def test_the_entry_point_runs_the_runtime_none_start_up_from_the_environment() -> None:
    cmd = node_command({"HOSTNAME": "host1", "IP": "198.18.0.1", "AS": "64513",
                        "CALICO_NETWORKING_BACKEND": "none", "CALICO_RUN_DIR": "/r",
                        "CALICO_LOG_DIR": "/l", "IP6": ""})
    assert cmd[0].endswith("/calicoctl")
    assert cmd[1:] == ["node", "run", "--runtime=none", "--detach=false", "--name=host1",
                       "--ip=198.18.0.1", "--as=64513", "--backend=none", "--log-dir=/l",
                       "--run-dir=/r"]


def test_a_new_container_clears_what_the_last_one_left(tmp_path: Path) -> None:
    for name in ("supervisord.pid", "supervisor.sock", "bird.cfg"):
        (tmp_path / name).write_text("x")
    clear_stale_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.cfg"]
    assert graceful_bird_stop(tmp_path) == "BIRD is not running"
    (tmp_path / "bird.pid").write_text("999999999")
    assert graceful_bird_stop(tmp_path) == "BIRD is not running"


def test_tail_keeps_the_last_distinct_lines() -> None:
    text = "a\n\nb\nerr: x\nerr: x\nerr: x\n"
    assert tail(text) == "a | b | err: x"
    assert tail(text, 2) == "b | err: x"
    assert tail("") == ""


def test_runtime_is_none_without_any_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_runtime("docker") == "docker"
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr("os.path.exists", lambda p: False)
    assert resolve_runtime(None) == "none"


def _tree(root: Path) -> None:
    (root / "pyproject.toml").write_text(
        '[project]\nname = "x"\nreadme = "README.md"\ndependencies = []\n'
        '[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n'
        '[tool.setuptools.data-files]\n"share/x" = ["data/*.conf"]\n')
    (root / "README.md").write_text("x")
    for rel in ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/m.py",
                "pkg/__pycache__/m.cpython-311.pyc", "tests/__init__.py",
                "tests/test_x.py", "data/a.conf", "data/b.txt", "node-image/Dockerfile"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


def test_the_image_is_made_of_exactly_the_packaged_files(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert [str(p) for p in nodeimage.packaged_files(tmp_path)] == [
        "README.md", "data/a.conf", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/m.py",
        "pyproject.toml"]


def test_the_image_key_follows_the_packaged_files_only(tmp_path: Path) -> None:
    _tree(tmp_path)
    key = nodeimage.image_key(tmp_path)
    assert nodeimage.image_key(tmp_path) == key
    (tmp_path / "tests" / "test_x.py").write_text("changed")
    (tmp_path / "data" / "b.txt").write_text("changed")
    assert nodeimage.image_key(tmp_path) == key
    (tmp_path / "pkg" / "sub" / "m.py").write_text("# one line more\n")
    changed = nodeimage.image_key(tmp_path)
    assert changed != key
    (tmp_path / "node-image" / "Dockerfile").write_text("FROM other")
    assert nodeimage.image_key(tmp_path) not in (key, changed)


def test_the_base_tag_names_suite_and_recipe() -> None:
    assert nodeimage.base_tag() == f"pycalico-net/node-base:bookworm-{nodeimage.base_key()}"
    assert len(nodeimage.base_key()) == 12


def test_the_include_directory_default_is_confds() -> None:
    from calicoctl.nodedocker import DEFAULT_BIRD_INCLUDE_DIR
    from confd.render import DEFAULT_INCLUDE_DIR

    assert DEFAULT_BIRD_INCLUDE_DIR == DEFAULT_INCLUDE_DIR
