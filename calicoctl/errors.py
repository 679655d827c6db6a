"""Exit codes and one-line error reporting for calicoctl.

Owns: the documented exit codes and the mapping from the project's error hierarchy
onto them; printing one line (or, with --debug, the traceback) on stderr.

  0  success
  1  generic failure (a command failed, e.g. a checksystem check, a subprocess)
  2  bad usage or invalid input (click's own usage errors are 2 too)
  3  not found, already exists, or conflict (also IPAM's conflicts: address in use,
     pool in use, pools exhausted - `libcalico.errors` subclasses of `Conflict`)
  4  the datastore is unreachable

Leaves to others: raising the right exception (the library), parsing (click).
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4


class CommandFailed(Exception):
    """A command could not do its job for a reason that is not the user's input."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    from libcalico.errors import (
        AlreadyExists,
        Conflict,
        DatastoreUnavailable,
        NotFound,
        ValidationError,
    )

    if isinstance(exc, CommandFailed):
        return exc.code
    if isinstance(exc, ValidationError):
        return EXIT_INVALID
    if isinstance(exc, NotFound | AlreadyExists | Conflict):
        return EXIT_NOT_FOUND
    if isinstance(exc, DatastoreUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


def report(exc: BaseException, debug: bool) -> int:
    """Print the error and return its exit code."""
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc) or type(exc).__name__
    print(f"Error: {message.splitlines()[0] if message else message}", file=sys.stderr)
    return exit_code_for(exc)
