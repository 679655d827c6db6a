"""`calicoctl node [run]`, `node stop` and `node status`: running Calico on this host.

Owns the start-up sequence of `node run`, in this order, each step before anything that
depends on it:
1. validate the arguments (name, addresses, AS) and auto-detect the IPv4 address;
2. refuse when this node's supervisord already runs (one node per run directory);
3. turn on IPv4 and IPv6 forwarding in this network namespace, then check the system
   as `checksystem` does, without its optional tunnel probes (a failure stops here,
   before any datastore write);
4. create the cluster defaults that are missing and register the node
   (`calicoctl.nodestart`);
5. write BIRD's first configuration by running confd's own entry point once
   (`calico-confd --onetime`, with the flags and environment supervisord gives confd),
   so BIRD starts with it; calicoctl never imports confd;
6. start supervisord with node-image/supervisord.conf (felix, confd, BIRD; felix only
   with `--backend=none`) and, with `--detach` (the default), wait until the programs
   run and name those that did not start; `--no-detach` replaces this process with
   supervisord in the foreground.
That is `--runtime=none`. `--runtime=docker` (the default) hands over to
`calicoctl.nodedocker` after step 1; the container then runs this same sequence inside
(`calicoctl.nodeentry`); what both runtimes share is in `calicoctl.nodecommon`.
`node stop` shuts supervisord down (refused while the node has endpoints, unless
`--force`); the dataplane and the datastore entries stay. `node status` shows the
programs' states and BIRD's BGP sessions.

Leaves to others: supervisord's client (`calicoctl.supervisor`), the datastore writes
(`calicoctl.nodestart`), BGP session parsing (`calicoctl.status`), `node show|remove`,
the Docker runtime (`calicoctl.nodedocker`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from calicoctl.context import ctl, this_hostname
from calicoctl.errors import CommandFailed
from calicoctl.nodecommon import (
    etcd_environment,
    node_ipv4,
    print_programs,
    register,
    show_status,
)
from calicoctl.supervisor import DEFAULT_LOG_DIR, DEFAULT_RUN_DIR, NodePaths, Supervisor

FORWARDING_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")
run_dir_option = click.option(
    "--run-dir", envvar="CALICO_RUN_DIR", default=DEFAULT_RUN_DIR, show_default=True,
    type=click.Path(file_okay=False), help="The node's sockets, pid files and BIRD config "
    "(also $CALICO_RUN_DIR).")


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--ip", default=None, metavar="IP[/LEN]",
                     help="This node's IPv4 address (default: auto-detected), optionally "
                     "with its subnet's prefix length (default: that of the interface "
                     "address that holds it); the subnet decides which hosts cross-subnet "
                     "pools reach without encapsulation."),
        click.option("--ip6", default=None, metavar="IP6",
                     help="This node's IPv6 address for BGP (default: none)."),
        click.option("--as", "as_num", default=None, metavar="AS",
                     help="This node's AS number (default: the global default AS)."),
        click.option("--name", default=None, metavar="HOSTNAME",
                     help="The node's name (default: $HOSTNAME, else the hostname)."),
        click.option("--log-dir", default=DEFAULT_LOG_DIR, show_default=True,
                     type=click.Path(file_okay=False), help="Where the programs log."),
        run_dir_option,
        click.option("--runtime", type=click.Choice(["docker", "none"]), default="docker",
                     show_default=True, help="docker: run felix, confd and BIRD in container "
                     "calico-node on the engine DOCKER_HOST names; none: run them on this "
                     "host (in the current network namespace)."),
        click.option("--node-image", envvar="CALICO_NODE_IMAGE", default=None,
                     metavar="NAME", help="The node image (docker) [env CALICO_NODE_IMAGE;"
                     " default pycalico-net/node:<version>, built by `calicoctl node image "
                     "build`]."),
        click.option("--libnetwork", is_flag=True, help="Also run the Docker network and "
                     "IPAM driver, as container calico-libnetwork (docker)."),
        click.option("--backend", type=click.Choice(["bird", "none"]), default="bird",
                     show_default=True, help="bird: run confd and BIRD for BGP; none: "
                     "felix only."),
        click.option("--detach", type=click.BOOL, default=True, is_flag=False,
                     flag_value=True, show_default=True, metavar="[true|false]",
                     help="Return once the programs run (false: stay in the foreground)."),
        click.option("--timeout", type=click.FloatRange(1), default=60, show_default=True,
                     help="Seconds to wait for the programs to start."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_node(ip: str | None, ip6: str | None, as_num: str | None, name: str | None,
             log_dir: str, run_dir: str, runtime: str, backend: str, detach: bool,
             timeout: float, node_image: str | None = None, libnetwork: bool = False) -> None:
    from libcalico.model import Node, parse_as_num

    host = this_hostname(name)
    asn = parse_as_num("as_num", as_num) if as_num is not None else None
    Node(host, ipv4=ip, ipv6=ip6, as_num=asn)  # validates before anything happens
    if runtime == "docker":
        from calicoctl.nodedocker import DockerNodeSpec, run_in_docker

        run_in_docker(DockerNodeSpec(host, ip, ip6, asn, backend, run_dir, log_dir,
                                     node_image, libnetwork), detach, timeout)
        return
    if libnetwork or node_image:
        raise CommandFailed(f"{'--libnetwork' if libnetwork else '--node-image'} needs "
                            "--runtime=docker", code=2)
    ip, network = node_ipv4(ip)
    paths = NodePaths(Path(run_dir), Path(log_dir))
    supervisor = Supervisor(paths)
    pid = supervisor.pid()
    if pid is not None:
        from libcalico.errors import Conflict

        raise Conflict(f"a Calico node already runs from {run_dir} (supervisord pid {pid}); "
                       "stop it first with `calicoctl node stop`")
    _enable_forwarding()
    _check_system(backend)
    register(host, ip, ip6, asn, network)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    env = paths.environment(host, backend, os.environ)
    env.update(etcd_environment())
    if backend == "bird":
        _initial_bird_config(paths, host, env, timeout)
    ctl().close()
    _start_supervisord(paths, env, detach)
    states = supervisor.wait_started(timeout)
    print_programs(states)
    failed = [s for s in states if s.state != "RUNNING"]
    if not states or failed:
        which = ", ".join(f"{s.name} ({s.state})" for s in failed) or "supervisord"
        raise CommandFailed(f"not started: {which}; see the logs in {log_dir}")
    click.echo(f"Calico node {host} is running")


def _enable_forwarding() -> None:
    for name in FORWARDING_SYSCTLS:
        path = Path("/proc/sys") / name
        if path.exists():
            try:
                path.write_text("1\n")
            except OSError as exc:
                raise CommandFailed(f"cannot set {name.replace('/', '.')}=1: "
                                    f"{exc.strerror}") from None


def _check_system(backend: str) -> None:
    from calicoctl.checksystem import OPTIONAL_CHECKS, run_checks

    checks = run_checks(lambda: ctl().store.version(), tunnels=False)  # optional: not asked
    failed = [c for c in checks if not c[1] and c[0] not in OPTIONAL_CHECKS
              and not (backend == "none" and c[0] == "binary bird")]
    if failed:
        raise CommandFailed("system check failed: " + "; ".join(f"{what}: {detail}"
                                                                for what, _, detail in failed))


def _initial_bird_config(paths: NodePaths, host: str, env: Mapping[str, str],
                         timeout: float) -> None:
    """BIRD's first configuration, written by confd's own one-shot mode: the program
    supervisord runs next, with the same flags and environment, plus `--onetime`."""
    import subprocess

    confd = Path(env["CALICO_BIN_DIR"]) / "calico-confd"
    if not confd.is_file():
        raise CommandFailed(f"cannot write BIRD's configuration: {confd} is missing")
    cmd = [str(confd), "--onetime", "--hostname", host, "--config-file",
           str(paths.bird_config), "--socket", str(paths.bird_socket)]
    try:
        proc = subprocess.run(cmd, env=dict(env), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"could not write BIRD's configuration for {host}: "
                            f"calico-confd --onetime did not finish in {timeout:g} s") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        why = lines[-1].removeprefix("calico-confd: ") if lines else f"exit {proc.returncode}"
        raise CommandFailed(f"could not write BIRD's configuration for {host}: {why}")


def _start_supervisord(paths: NodePaths, env: dict[str, str], detach: bool) -> None:
    import shutil
    import subprocess
    import tempfile

    from calicoctl.supervisor import node_image_dir

    binary = shutil.which("supervisord")
    if binary is None:
        raise CommandFailed("supervisord is not installed")
    conf = str(node_image_dir() / "supervisord.conf")
    if not detach:
        os.execve(binary, [binary, "-n", "-c", conf], env)
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.run([binary, "-c", conf], env=env, stdin=subprocess.DEVNULL,
                              stdout=err, stderr=err, check=False)
        if proc.returncode != 0:
            err.seek(0)
            raise CommandFailed(f"supervisord did not start: {err.read().strip()}")


def stop_node(hostname: str | None, run_dir: str, force: bool,
              runtime: str | None = None) -> None:
    from calicoctl.nodedocker import resolve_runtime
    from libcalico.errors import Conflict, DatastoreError

    host = this_hostname(hostname)
    runtime = resolve_runtime(runtime)
    supervisor = Supervisor(NodePaths(Path(run_dir), Path(DEFAULT_LOG_DIR)))
    try:
        endpoints = ctl().client.list_workload_endpoints(host)
    except DatastoreError:
        if not force:
            raise
        endpoints = []
    if endpoints and not force:
        raise Conflict(f"node {host} still has {len(endpoints)} endpoint(s); remove them "
                       "first, or use --force")
    if runtime == "docker":
        from calicoctl.nodedocker import stop_in_docker

        stop_in_docker(host, run_dir)
        return
    if supervisor.pid() is None:
        click.echo(f"Calico node {host} is not running")
        return
    if not supervisor.shutdown():
        raise CommandFailed(f"supervisord (run dir {run_dir}) did not stop in time")
    click.echo(f"Node stopped ({host})")


def node_status(run_dir: str, output: str, runtime: str | None = None) -> None:
    from calicoctl.nodedocker import resolve_runtime
    from calicoctl.status import parse_protocols, query_bird

    if resolve_runtime(runtime) == "docker":
        from calicoctl.nodedocker import status_in_docker

        status_in_docker(run_dir, output)
        return
    paths = NodePaths(Path(run_dir), Path(DEFAULT_LOG_DIR))
    supervisor = Supervisor(paths)
    if not supervisor.running():
        raise CommandFailed(f"Calico node is not running (no supervisord at {paths.socket})")
    programs = supervisor.programs()
    bird = any(p.name == "bird" and p.state == "RUNNING" for p in programs)
    sessions = parse_protocols(query_bird(str(paths.bird_socket))) if bird else []
    show_status(programs, sessions, output)


