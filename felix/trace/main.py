"""`calico-felix-trace`: the program behind `calicoctl policy trace`.

Owns: its command line (argparse: cheap to import, as a command's start-up is felt),
reading the datastore (the ETCD_* variables, as calicoctl passes them), printing the
result (text, JSON or YAML) and the exit codes calicoctl documents: 0 whatever the
verdict; 2 bad input (a bad port, protocol or name form), 3 an endpoint that does not
exist, 4 etcd unreachable, 1 anything else - each with one line on stderr (the
traceback with --debug).

calicoctl runs this program rather than importing felix (the way `calicoctl node run`
runs `calico-confd --onetime`): the trace must use felix's own calculation, and the
dependency stays one on a program and its command line. The `calicoctl` program execs
it in its own place (`calicoctl.launch`), so a query's start-up is this program's: the
datastore read (`Snapshot.read`, grpc alone, no etcd3) starts on a thread before
felix's modules load, and etcd answers while they do.

Leaves to others: the trace itself (`felix.trace.trace`), its renderings
(`felix.trace.report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4

USAGE_EPILOG = """\
SRC and DST: an IP address (a workload's, a host endpoint's, a node's, or one outside
the cluster), WORKLOAD[/ENDPOINT_ID], HOST/ORCHESTRATOR/WORKLOAD/ENDPOINT_ID,
host:HOSTNAME, hep:HOSTNAME/ENDPOINT_ID; for --from also NAME@ADDRESS (that workload
sending from ADDRESS: anti-spoofing decides). Prints, for each direction (out of the
source, into the destination), the deciding tier, policy or profile and rule and the
chains, then `verdict: allow|deny`. Exit 0 whatever the verdict; 2 bad input, 3 no
such endpoint, 4 etcd unreachable."""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Trace a flow through the security policy felix "
                "programs, without touching the dataplane.", epilog=USAGE_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, metavar="SRC")
    p.add_argument("--to", dest="destination", required=True, metavar="DST")
    p.add_argument("--protocol", default="tcp", metavar="P",
                   help="tcp, udp, icmp, icmpv6, sctp, udplite or 1-255 (default tcp)")
    p.add_argument("--port", metavar="N", help="destination port (tcp, udp, ...)")
    p.add_argument("--source-port", metavar="N", help="source port (default: an ephemeral "
                   "port no rule names)")
    p.add_argument("--icmp-type", metavar="N", help="ICMP type (default echo request)")
    p.add_argument("--icmp-code", metavar="N")
    p.add_argument("--ip-version", choices=("4", "6"), default=None,
                   help="when neither end is given as an address (default 4)")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    p.add_argument("--log-level", default="warning",
                   choices=("debug", "info", "warning", "error", "critical"))
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _number(option: str, text: str | None) -> int | None:
    from libcalico.errors import ValidationError

    if text is None:
        return None
    if not text.strip().isdigit() or not text.isascii():
        raise ValidationError(option, text, "expected a number")
    return int(text)


def exit_code_for(exc: BaseException) -> int:
    from libcalico.errors import Conflict, DatastoreUnavailable, NotFound, ValidationError

    if isinstance(exc, UsageError | ValidationError):
        return EXIT_INVALID
    if isinstance(exc, NotFound | Conflict):
        return EXIT_NOT_FOUND
    if isinstance(exc, DatastoreUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


def run(argv: Sequence[str], prog: str = "calico-felix-trace") -> int:
    debug = "--debug" in argv
    try:
        args = build_parser(prog).parse_args(list(argv))
        logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
        if args.log_level == "warning":  # one line per error, as calicoctl: no chatter
            for name in ("felix.calc.parse", "libcalico.datastore"):
                logging.getLogger(name).setLevel(logging.ERROR)
        numbers = {name: _number(opt, getattr(args, name)) for name, opt in (
            ("port", "--port"), ("source_port", "--source-port"),
            ("icmp_type", "--icmp-type"), ("icmp_code", "--icmp-code"))}
        from concurrent.futures import ThreadPoolExecutor

        from felix.trace.snapshot import Snapshot  # light: felix's parser loads when used
        from libcalico.datastore import Datastore, EtcdSettings

        with Datastore(EtcdSettings.from_env()) as store, ThreadPoolExecutor(1) as pool:
            # etcd answers (and gRPC receives, without the GIL) while felix's modules load
            read = pool.submit(Snapshot.read, store)
            from felix.trace.report import render_text, to_dict
            from felix.trace.trace import trace

            snapshot = read.result()
            result = trace(snapshot, args.source, args.destination, args.protocol,
                           ip_version=int(args.ip_version) if args.ip_version else None,
                           **numbers)
        if args.output == "json":
            print(json.dumps(to_dict(result), indent=2))
        elif args.output == "yaml":
            import yaml

            print(yaml.safe_dump(to_dict(result), sort_keys=False).rstrip("\n"))
        else:
            print(render_text(result))
        return EXIT_OK
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        message = (str(exc) or type(exc).__name__).splitlines()[0]
        if exit_code_for(exc) == EXIT_FAILURE and not debug:
            message = f"unexpected {type(exc).__name__}: {message} (run with --debug for the " \
                      "traceback)"
        print(f"Error: {message}", file=sys.stderr)
        return exit_code_for(exc)


def main() -> None:
    argv = sys.argv[1:]
    prog = "calico-felix-trace"
    if argv[:1] == ["--prog"] and len(argv) > 1:  # how calicoctl names itself in usage
        prog, argv = argv[1], argv[2:]
    sys.exit(run(argv, prog))


if __name__ == "__main__":
    main()
