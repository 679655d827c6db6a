"""Entry points of the `calico` and `calico-ipam` executables: one CNI call each.

Owns the call's outer shell, which is total: stdin and the CNI_* variables in; on
stdout one JSON object (the result, the VERSION answer or an error in the shape of the
configuration's cniVersion) or nothing (DEL, CHECK, GC, STATUS succeed silently); exit
status 0 or 1. Every exception becomes a CNI error (`to_cni_error`): the protocol's own
codes for bad input (4 environment, 6 undecodable, 7 configuration, naming the field
and value) and an unreachable datastore (11, try again later), this plugin's 100+
codes for the rest; an unexpected exception is logged with its traceback and reported
as code 100. Logs go to a file (`log_file_path`, default
/var/log/calico/cni/cni.log, at `log_level`), or to stderr if that cannot be opened;
never to stdout.

Start-up is part of every call's latency, so only what the command needs is imported:
VERSION (which podman sends before every ADD and DEL) imports nothing but
`cni.versions` (not even `json`), ADD imports no grpc (etcd's JSON gateway) and no pyroute2
(`workload.veth` speaks rtnetlink through `rtnl`, standard library only).

Leaves to others: the commands (`cni.calico`, `cni.ipam`), parsing (`cni.config`,
`cni.spec`).
"""

from __future__ import annotations

import os
import sys

from cni.versions import LATEST, requested_version, version_answer_text

TYPE_CHECKING = False  # `typing` costs ~3 ms of VERSION's start-up; mypy knows the name
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO, Any

    from cni.spec import CniError

    Command = Callable[[Any], Any]


def _commands(plugin: str) -> dict[str, Command]:
    if plugin == "calico":
        from cni import calico as p

        return {"ADD": p.add, "DEL": p.delete, "CHECK": p.check, "GC": p.gc,
                "STATUS": p.status}
    from cni import ipam as i

    return {"ADD": i.ipam_add, "DEL": i.ipam_del, "CHECK": i.ipam_check, "GC": i.ipam_gc,
            "STATUS": i.ipam_status}


def to_cni_error(exc: BaseException) -> CniError:
    """The CNI error an exception is reported as."""
    from cni.spec import (
        ADDRESS_IN_USE,
        ADDRESSES_EXHAUSTED,
        ALREADY_EXISTS,
        INVALID_ENVIRONMENT,
        INVALID_NETWORK_CONFIG,
        PLUGIN_FAILURE,
        TRY_AGAIN_LATER,
        CniError,
    )

    if isinstance(exc, CniError):
        return exc
    from libcalico.errors import (
        AddressInUse,
        AlreadyExists,
        CalicoError,
        DatastoreUnavailable,
        PoolsExhausted,
        ValidationError,
    )

    if isinstance(exc, ValidationError):
        code = INVALID_ENVIRONMENT if exc.field.startswith("CNI_") else INVALID_NETWORK_CONFIG
        return CniError(code, str(exc))
    if isinstance(exc, DatastoreUnavailable):
        return CniError(TRY_AGAIN_LATER, str(exc), "the datastore (etcd) cannot be reached")
    if isinstance(exc, PoolsExhausted):
        return CniError(ADDRESSES_EXHAUSTED, str(exc))
    if isinstance(exc, AddressInUse):
        return CniError(ADDRESS_IN_USE, str(exc))
    if isinstance(exc, AlreadyExists):
        return CniError(ALREADY_EXISTS, str(exc))
    if isinstance(exc, CalicoError):
        return CniError(PLUGIN_FAILURE, str(exc) or type(exc).__name__)
    return CniError(PLUGIN_FAILURE, f"internal error: {type(exc).__name__}: {exc}",
                    "see the plugin's log file for the traceback")


def _expected(exc: BaseException) -> bool:
    """A failure the plugin reports on purpose (its traceback would be noise)."""
    from cni.spec import CniError

    if isinstance(exc, CniError):
        return True
    from libcalico.errors import CalicoError

    return isinstance(exc, CalicoError)


def setup_logging(level: str, path: str, prefix: str) -> None:
    """Log to `path` (its directory made if missing), else to stderr; never stdout."""
    import logging

    handler: logging.Handler
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    # The prefix holds CNI_COMMAND and CNI_CONTAINERID as given: a '%' in them must not
    # reach the format string (logging would print a "Logging error" traceback).
    prefix = prefix.replace("%", "%%")
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [%(process)d] {prefix} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def run(plugin: str, environ: Mapping[str, str], stdin: IO[bytes], stdout: IO[str]) -> int:
    """One CNI call of `plugin` ("calico" or "calico-ipam"); returns the exit status."""
    raw = stdin.read()
    command = environ.get("CNI_COMMAND", "?")
    if command == "VERSION":  # before every ADD and DEL: nothing to import, nothing to log
        stdout.write(version_answer_text(requested_version(raw)) + "\n")
        stdout.flush()
        return 0
    import logging

    from cni.config import load, logging_settings
    from cni.spec import CniError, parse_env, render_error, render_result

    version = LATEST
    ctx = None
    log = logging.getLogger("cni")
    try:
        try:
            data: dict[str, Any] | None = load(raw)
        except CniError:
            data = None
        if data is not None and isinstance(data.get("cniVersion"), str):
            version = data["cniVersion"]
        level, path = logging_settings(data or {})
        setup_logging(level, path, f"{plugin} {command} "
                      f"{environ.get('CNI_CONTAINERID', '-')[:12]}")
        env = parse_env(environ)
        from cni.config import parse_args, parse_netconf
        from cni.context import Context
        from cni.spec import parse_cni_args

        conf = parse_netconf(load(raw), env.command)
        args = parse_args(parse_cni_args(env.args))
        ctx = Context(env, conf, args, raw, environ)
        log.debug("config %s", raw.decode(errors="replace"))
        result = _commands(plugin)[env.command](ctx)
        if env.command == "ADD":
            _write(stdout, render_result(conf.cni_version, result))
        return 0
    except BaseException as exc:  # noqa: BLE001 - the protocol wants an error object
        err = to_cni_error(exc)
        log.error("%s failed: %s%s", command, err.msg,
                   f" ({err.details})" if err.details else "",
                   exc_info=not _expected(exc))
        _write(stdout, render_error(version, err))
        return 1
    finally:
        if ctx is not None:
            ctx.close()
        logging.shutdown()


def _write(stdout: IO[str], obj: dict[str, Any]) -> None:
    import json

    stdout.write(json.dumps(obj))
    stdout.write("\n")
    stdout.flush()


def calico() -> int:
    """The `calico` executable."""
    return run("calico", os.environ, sys.stdin.buffer, sys.stdout)


def calico_ipam() -> int:
    """The `calico-ipam` executable."""
    return run("calico-ipam", os.environ, sys.stdin.buffer, sys.stdout)
