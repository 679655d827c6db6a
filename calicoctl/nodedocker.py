"""`calicoctl node --runtime=docker`: the node, and the Docker driver, as containers.

Owns:
- what the containers get, as pure `docker run` arguments (`render_node_run`,
  `render_libnetwork_run`): host networking, explicit capabilities (never
  `--privileged`), writable /proc/sys, mounts, environment, labels, restart policy.
  docs/node.md says why each is needed;
- `run_in_docker`, in this order: the engine answers (else one line naming
  --runtime=none), the image is there (else one line naming `calicoctl node image
  build`), no container of that name that is not ours and no node of ours already
  running, no node without Docker answering in the same run directory; then, as
  without Docker, the cluster defaults and the node's registration (so every refusal
  comes before anything is written or started); then `docker run`, the id printed as
  the seed did, and a wait until felix, confd and BIRD run inside (asked through
  supervisord's socket in the mounted run directory), naming any that failed with the
  tail of its log; with `--libnetwork`, container calico-libnetwork running the
  driver's entry point `calico-libnetwork`, and a wait for its socket in
  /run/docker/plugins (or its exit, shown with its last output);
- `stop_in_docker` (BIRD stopped through supervisord first, so its sessions close and
  peers withdraw the routes, as without Docker; then `docker stop`), `status_in_docker`
  (programs through the socket, BGP sessions from `birdcl` inside the container),
  `containers_to_remove` (for `node remove`), `resolve_runtime` (which runtime a
  stop/status means) and the diagnostics `calicoctl diags` adds.

Leaves to others: the engine client (`calicoctl.dockercli`), building the image
(`calicoctl.nodeimage`), what runs in the container (`calicoctl.nodeentry`, which runs
the same start-up as `--runtime=none`: `calicoctl.noderun`), the driver itself
(`calico_libnetwork`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from calicoctl.dockercli import DockerCLI
from calicoctl.errors import EXIT_INVALID, CommandFailed

NODE_CONTAINER = "calico-node"
LIBNETWORK_CONTAINER = "calico-libnetwork"
COMPONENT_LABEL = "org.pycalico-net.component"  # "node" or "libnetwork": ours
NODE_LABEL = "org.pycalico-net.node"  # the node name
LIBNETWORK_PROGRAM = "calico-libnetwork"  # console script: calico_libnetwork.main:main
PLUGIN_DIR = "/run/docker/plugins"
LIBNETWORK_SOCKET = f"{PLUGIN_DIR}/calico.sock"
# NET_ADMIN: routes, addresses, iptables, ipsets, conntrack and /proc/sys/net writes;
# NET_RAW: iptables' `set` match (felix's rules match ipsets) looks sets up over a raw
# socket ("Can't open socket to ipset" without it); NET_BIND_SERVICE: BIRD
# listens on TCP port 179. Nothing else: supervisord and the programs run as root on
# files root owns.
NODE_CAPABILITIES = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")
# The driver makes veths and routes in the host namespace and writes etcd: NET_ADMIN.
LIBNETWORK_CAPABILITIES = ("NET_ADMIN",)
STOP_TIMEOUT_S = 30
LIBNETWORK_WAIT_S = 20.0
# calicoctl's own variables the node container gets as they are.
PASSED_PREFIXES = ("FELIX_",)
PASSED_VARIABLES = ("NO_DEFAULT_POOLS",)
ETCD_FILE_VARIABLES = ("ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE")
# confd's default operators' include directory (confd.render.DEFAULT_INCLUDE_DIR; a unit
# test keeps them equal), named here so that calicoctl need not import confd.
DEFAULT_BIRD_INCLUDE_DIR = "/etc/calico/bird.d"


@dataclass(frozen=True)
class DockerNodeSpec:
    """What `calicoctl node --runtime=docker` was asked for."""

    name: str
    ip: str | None
    ip6: str | None
    as_num: int | None
    backend: str
    run_dir: str
    log_dir: str
    image: str | None = None
    libnetwork: bool = False

    @property
    def image_name(self) -> str:
        from calicoctl.nodeimage import DEFAULT_IMAGE

        return self.image or DEFAULT_IMAGE


# --- what the containers get (pure) ---------------------------------------------------------

def _env_args(env: Mapping[str, str]) -> list[str]:
    return [a for k, v in sorted(env.items()) for a in ("-e", f"{k}={v}")]


def _common_args(name: str, component: str, node: str, capabilities: tuple[str, ...],
                 etcd: Mapping[str, str]) -> list[str]:
    args = ["run", "--detach", "--name", name, "--net=host", "--restart=unless-stopped",
            f"--stop-timeout={STOP_TIMEOUT_S}", "--label", f"{COMPONENT_LABEL}={component}",
            "--label", f"{NODE_LABEL}={node}", "--cap-drop=ALL"]
    args += [f"--cap-add={cap}" for cap in capabilities]
    for var in ETCD_FILE_VARIABLES:
        if etcd.get(var):
            args += ["-v", f"{etcd[var]}:{etcd[var]}:ro"]
    if os.environ.get("ETCD_PASSWORD"):
        # By name only: docker copies the value from its own environment, so the password
        # is on no command line (it is in the container's configuration, as any env is).
        args += ["-e", "ETCD_PASSWORD"]
    return args


def render_node_run(spec: DockerNodeSpec, ip: str, etcd: Mapping[str, str],
                    env: Mapping[str, str], include_dir: str) -> list[str]:
    """`docker run` arguments for the node container (everything it gets)."""
    run_dir, log_dir = os.path.abspath(spec.run_dir), os.path.abspath(spec.log_dir)
    args = _common_args(NODE_CONTAINER, "node", spec.name, NODE_CAPABILITIES, etcd)
    # Docker mounts /proc/sys read-only and refuses mounts below /proc; felix and the
    # start-up write /proc/sys/net (forwarding, per-interface proxy ARP, rp_filter).
    args += ["--security-opt", "systempaths=unconfined"]
    for path in (log_dir, run_dir, include_dir):
        args += ["-v", f"{path}:{path}"]
    container_env = {
        "HOSTNAME": spec.name, "IP": ip, "CALICO_NETWORKING_BACKEND": spec.backend,
        "CALICO_RUN_DIR": run_dir, "CALICO_LOG_DIR": log_dir,
        "CALICO_BIRD_INCLUDE_DIR": include_dir, **etcd}
    if spec.ip6:
        container_env["IP6"] = spec.ip6
    if spec.as_num is not None:
        container_env["AS"] = str(spec.as_num)
    container_env.update({k: v for k, v in env.items()
                          if k.startswith(PASSED_PREFIXES) or k in PASSED_VARIABLES})
    return [*args, *_env_args(container_env), spec.image_name]


def render_libnetwork_run(spec: DockerNodeSpec, etcd: Mapping[str, str],
                          docker_host: str) -> list[str]:
    """`docker run` arguments for the Docker network and IPAM driver's container: the
    same image, its entry point `calico-libnetwork`, its sockets in the engine's plugin
    directory, and the engine's API (`docker_host`, its socket mounted when it is one):
    the driver asks it for a network's name and labels, which the plugin calls lack."""
    args = _common_args(LIBNETWORK_CONTAINER, "libnetwork", spec.name,
                        LIBNETWORK_CAPABILITIES, etcd)
    args += ["-v", f"{PLUGIN_DIR}:{PLUGIN_DIR}"]
    if docker_host.startswith("unix://"):
        engine_socket = docker_host.removeprefix("unix://")
        args += ["-v", f"{engine_socket}:{engine_socket}"]
    args += ["--entrypoint", LIBNETWORK_PROGRAM]
    container_env = {"HOSTNAME": spec.name, "CALICO_LIBNETWORK_SOCKET": LIBNETWORK_SOCKET,
                     "DOCKER_HOST": docker_host, **etcd}
    return [*args, *_env_args(container_env), spec.image_name]


def is_ours(info: Mapping[str, Any], component: str) -> bool:
    labels = (info.get("Config") or {}).get("Labels") or {}
    return bool(labels.get(COMPONENT_LABEL) == component)


# --- the engine and its containers -----------------------------------------------------------

def engine_or_fail(docker: DockerCLI) -> None:
    why = docker.answers()
    if why is not None:
        raise CommandFailed(f"no Docker engine answers at {docker.address} ({why}); start "
                            "one (or set DOCKER_HOST), or run the programs on this host with "
                            "--runtime=none")


def resolve_runtime(explicit: str | None) -> str:
    """The runtime a `node stop|status` means: as given, else docker when the engine
    DOCKER_HOST names has our calico-node container, else none."""
    if explicit:
        return explicit
    from calicoctl.dockercli import DEFAULT_HOST, engine_address

    address = engine_address()
    if address == DEFAULT_HOST and not os.path.exists(DEFAULT_HOST.removeprefix("unix://")):
        return "none"  # the usual case without Docker: no process started to find out
    docker = DockerCLI(timeout=10)
    if docker.answers() is not None:
        return "none"
    info = docker.container(NODE_CONTAINER)
    return "docker" if info is not None and is_ours(info, "node") else "none"


def _state(info: Mapping[str, Any]) -> Mapping[str, Any]:
    return info.get("State") or {}


def tail(text: str, lines: int = 3) -> str:
    """The last `lines` distinct non-empty lines of `text`, on one line (pure)."""
    out: list[str] = []
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and line not in out:
            out.insert(0, line)
            if len(out) == lines:
                break
    return " | ".join(out)


def _logs_tail(docker: DockerCLI, name: str) -> str:
    proc = docker.run("logs", "--tail", "20", name, check=False)
    return tail(proc.stdout + proc.stderr) or "(no output)"


def _file_tail(path: Path) -> str:
    try:
        return tail(path.read_text(errors="replace")) or "(empty log)"
    except OSError:
        return f"(no log at {path})"


def _check_name_free(docker: DockerCLI, name: str, component: str) -> bool:
    """True when a stopped container of ours has the name (it will be replaced); raises
    when the name belongs to something else or to a running node of ours."""
    from libcalico.errors import Conflict

    info = docker.container(name)
    if info is None:
        return False
    if not is_ours(info, component):
        raise Conflict(f"a container named {name} that calicoctl did not make exists on "
                       f"the engine at {docker.address} (image "
                       f"{(info.get('Config') or {}).get('Image')}); remove or rename it")
    if _state(info).get("Running") or _state(info).get("Restarting"):
        raise Conflict(f"container {name} is already running on the engine at "
                       f"{docker.address}; stop it first with `calicoctl node stop`")
    return True


def run_in_docker(spec: DockerNodeSpec, detach: bool, timeout: float) -> None:
    from calicoctl.context import ctl
    from calicoctl.nodecommon import etcd_environment, node_ipv4, register
    from calicoctl.supervisor import NodePaths, Supervisor
    from libcalico.errors import Conflict, NotFound

    if not detach:
        raise CommandFailed("--detach=false needs --runtime=none (the node container "
                            "always runs detached; `docker logs -f calico-node` follows it)",
                            code=EXIT_INVALID)
    docker = DockerCLI()
    engine_or_fail(docker)
    if docker.image(spec.image_name) is None:
        from calicoctl.nodeimage import DEFAULT_IMAGE

        build = "calicoctl node image build" + (
            f" --tag {spec.image_name}" if spec.image_name != DEFAULT_IMAGE else "")
        raise NotFound(f"image {spec.image_name} is not on the engine at {docker.address}; "
                       f"build it with `{build}`")
    replace = [name for name, component in ((NODE_CONTAINER, "node"),
                                            (LIBNETWORK_CONTAINER, "libnetwork"))
               if (component == "node" or spec.libnetwork)
               and _check_name_free(docker, name, component)]
    paths = NodePaths(Path(os.path.abspath(spec.run_dir)), Path(os.path.abspath(spec.log_dir)))
    if Supervisor(paths, local=False).running():
        raise Conflict(f"a Calico node already runs from {spec.run_dir} without Docker; stop "
                       "it first with `calicoctl node stop --runtime=none`")
    ip, network = node_ipv4(spec.ip)
    register(spec.name, ip, spec.ip6, spec.as_num, network)
    if network is not None:  # the container registers the same address and subnet
        ip = f"{ip}/{network.split('/')[1]}"
    etcd = etcd_environment()
    ctl().close()
    include_dir = _include_dir()
    for path in (paths.run_dir, paths.log_dir, Path(include_dir)):
        path.mkdir(parents=True, exist_ok=True)
    for name in replace:
        docker.run("rm", name)
    node_id = docker.run(*render_node_run(spec, ip, etcd, os.environ, include_dir)
                         ).stdout.strip()
    click.echo(f"Calico node is running with id: {node_id}")
    libnetwork_id = None
    if spec.libnetwork:
        libnetwork_id = docker.run(*render_libnetwork_run(spec, etcd, docker.address)
                                   ).stdout.strip()
        click.echo(f"Calico libnetwork driver is running with id: {libnetwork_id}")
    click.echo("Waiting for felix, confd and BIRD to start")
    _wait_node(docker, paths, timeout)
    if libnetwork_id is not None:
        _wait_libnetwork(docker, min(timeout, LIBNETWORK_WAIT_S))
    click.echo(f"Calico node {spec.name} is running")


def _include_dir() -> str:
    return os.path.abspath(os.environ.get("CALICO_BIRD_INCLUDE_DIR")
                           or DEFAULT_BIRD_INCLUDE_DIR)


def _wait_node(docker: DockerCLI, paths: Any, timeout: float) -> None:
    """Until every program runs inside or one has failed for good; raises naming the
    failed ones with the tail of their logs (or the container's last output)."""
    from calicoctl.nodecommon import print_programs
    from calicoctl.supervisor import Supervisor

    supervisor = Supervisor(paths, local=False)
    inspected = 0.0

    def container_alive() -> None:
        # The engine is asked once a second (each ask is a docker process competing with
        # the starting programs for CPU), supervisord's socket every 0.2 s.
        nonlocal inspected
        if time.monotonic() - inspected < 1.0:
            return
        inspected = time.monotonic()
        info = docker.container(NODE_CONTAINER) or {}
        state = _state(info)
        if not state.get("Running") or state.get("Restarting") or info.get("RestartCount"):
            raise CommandFailed(f"container {NODE_CONTAINER} stopped (exit code "
                                f"{state.get('ExitCode')}): "
                                f"{_logs_tail(docker, NODE_CONTAINER)}")

    states = supervisor.wait_started(timeout, alive=container_alive)
    print_programs(states)
    failed = [s for s in states if s.state != "RUNNING"]
    if not states:
        raise CommandFailed(f"supervisord did not start in {NODE_CONTAINER} within "
                            f"{timeout:.0f} s: {_logs_tail(docker, NODE_CONTAINER)}")
    if failed:
        raise CommandFailed("not started: " + "; ".join(
            f"{s.name} ({s.state}): {_file_tail(paths.log_dir / f'{s.name}.log')}"
            for s in failed))


def _wait_libnetwork(docker: DockerCLI, timeout: float) -> None:
    """Until the driver's socket exists in the plugin directory, or its container has
    stopped (raises with its last output)."""
    deadline = time.monotonic() + timeout
    while True:
        info = docker.container(LIBNETWORK_CONTAINER) or {}
        state = _state(info)
        if not state.get("Running") or state.get("Restarting") or info.get("RestartCount"):
            # Not restarted in a loop behind the operator's back: it stays, stopped, for
            # `docker logs`.
            docker.run("update", "--restart=no", LIBNETWORK_CONTAINER, check=False)
            docker.run("stop", LIBNETWORK_CONTAINER, check=False)
            raise CommandFailed(f"{LIBNETWORK_PROGRAM} did not start in container "
                                f"{LIBNETWORK_CONTAINER} (exit code {state.get('ExitCode')}):"
                                f" {_logs_tail(docker, LIBNETWORK_CONTAINER)}")
        probe = docker.run("exec", LIBNETWORK_CONTAINER, "test", "-S", LIBNETWORK_SOCKET,
                           check=False)
        if probe.returncode == 0:
            click.echo(f"Calico libnetwork driver listens on {LIBNETWORK_SOCKET}")
            return
        if time.monotonic() > deadline:
            raise CommandFailed(f"{LIBNETWORK_PROGRAM} runs but has no socket at "
                                f"{LIBNETWORK_SOCKET} after {timeout:.0f} s: "
                                f"{_logs_tail(docker, LIBNETWORK_CONTAINER)}")
        time.sleep(0.2)


# --- stop, status, remove, diags -------------------------------------------------------------

def _container_run_dir(info: Mapping[str, Any], given: str) -> Path:
    """The run directory the node container was started with (its CALICO_RUN_DIR), so
    that `node stop|status` find it whatever --run-dir they are given."""
    for var in (info.get("Config") or {}).get("Env") or []:
        if var.startswith("CALICO_RUN_DIR="):
            return Path(var.split("=", 1)[1])
    return Path(os.path.abspath(given))


def stop_in_docker(host: str, run_dir: str) -> None:
    """BIRD first (through supervisord: sessions close, peers withdraw the routes), then
    the containers; the dataplane stays as felix left it."""
    from calicoctl.supervisor import DEFAULT_LOG_DIR, NodePaths, Supervisor

    docker = DockerCLI(timeout=STOP_TIMEOUT_S + 30)
    info = docker.container(NODE_CONTAINER)
    if info is not None and not is_ours(info, "node"):
        raise CommandFailed(f"container {NODE_CONTAINER} on the engine at {docker.address} "
                            "was not made by calicoctl; not stopping it")
    if info is None or not _state(info).get("Running"):
        click.echo(f"Calico node {host} is not running")
    else:
        supervisor = Supervisor(NodePaths(_container_run_dir(info, run_dir),
                                          Path(DEFAULT_LOG_DIR)), local=False)
        if supervisor.running():
            # Fails when there is no BIRD (--backend=none) or it is stopped already.
            with contextlib.suppress(Exception):
                supervisor.stop_program("bird")
        docker.run("stop", NODE_CONTAINER)
        click.echo(f"Node stopped ({host})")
    driver = docker.container(LIBNETWORK_CONTAINER)
    if driver is not None and is_ours(driver, "libnetwork") and _state(driver).get("Running"):
        docker.run("stop", LIBNETWORK_CONTAINER)
        click.echo(f"Stopped {LIBNETWORK_CONTAINER}")


def status_in_docker(run_dir: str, output: str) -> None:
    from calicoctl.nodecommon import show_status
    from calicoctl.status import parse_protocols
    from calicoctl.supervisor import DEFAULT_LOG_DIR, NodePaths, Supervisor

    docker = DockerCLI()
    info = docker.container(NODE_CONTAINER)
    if info is None or not is_ours(info, "node") or not _state(info).get("Running"):
        raise CommandFailed(f"Calico node is not running (container {NODE_CONTAINER} is "
                            f"{_state(info or {}).get('Status', 'missing')})")
    paths = NodePaths(_container_run_dir(info, run_dir), Path(DEFAULT_LOG_DIR))
    supervisor = Supervisor(paths, local=False)
    if not supervisor.running():
        raise CommandFailed(f"Calico node is not running (no supervisord at {paths.socket} "
                            f"in container {NODE_CONTAINER})")
    programs = supervisor.programs()
    sessions = []
    if any(p.name == "bird" and p.state == "RUNNING" for p in programs):
        proc = docker.run("exec", NODE_CONTAINER, "birdcl", "-s", str(paths.bird_socket),
                          "show", "protocols")
        sessions = parse_protocols(proc.stdout)
    show_status(programs, sessions, output)


def containers_to_remove(host: str) -> Callable[[], None]:
    """For `node remove`: refuses while this host's node containers run; returns what
    removes the stopped ones (run after the datastore entries are gone)."""
    from calicoctl.context import this_hostname
    from libcalico.errors import Conflict

    if host != this_hostname() or resolve_runtime(None) != "docker":
        return lambda: None
    docker = DockerCLI()
    found = []
    for name, component in ((NODE_CONTAINER, "node"), (LIBNETWORK_CONTAINER, "libnetwork")):
        info = docker.container(name)
        if info is None or not is_ours(info, component):
            continue
        if _state(info).get("Running"):
            raise Conflict(f"container {name} is running; stop the node first with "
                           "`calicoctl node stop`")
        found.append(name)

    def remove() -> None:
        for name in found:
            docker.run("rm", name)
            click.echo(f"Removed container {name}")

    return remove


def diags_steps() -> list[tuple[str, Callable[[], str]]]:
    """What `calicoctl diags` collects about the node containers (none without them)."""
    if resolve_runtime(None) != "docker":
        return []
    docker = DockerCLI()

    def run(*args: str) -> Callable[[], str]:
        def collect() -> str:
            proc = docker.run(*args, check=False)
            return proc.stdout + (f"\n# exit {proc.returncode}: {proc.stderr.strip()}\n"
                                  if proc.returncode else proc.stderr)
        return collect

    steps: list[tuple[str, Callable[[], str]]] = []
    for name in (NODE_CONTAINER, LIBNETWORK_CONTAINER):
        steps += [(f"docker_inspect_{name}", run("inspect", name)),
                  (f"docker_logs_{name}", run("logs", "--tail", "1000", name))]
    steps.append(("bird_protocols_in_container",
                  run("exec", NODE_CONTAINER, "sh", "-c",
                      'birdcl -s "$CALICO_RUN_DIR/bird.ctl" show protocols all')))
    return steps

