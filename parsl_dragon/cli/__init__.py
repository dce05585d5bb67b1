"""``parsl-dragon``: find, check and tear down parsl-dragon servers through their connection files.

Usage::

    parsl-dragon status   [PATH ...] [--json] [--timeout S] [--key-path DIR]
    parsl-dragon teardown [PATH ...] [--force] [--timeout S] [--key-path DIR]

Runs on a login or compute node, outside any Dragon runtime; it never imports the server.
The package, one module per job::

    __init__   the argument parser and main()
    discover   finding and reading connection files (PATH, $PARSL_DRAGON_SERVER_PATH, ./runinfo)
    sessions   handshakes with servers (client key, Goodbye / Shutdown)
    block      what a connection file proves about its block's processes on this host
    status     `parsl-dragon status`: live, stale, unreachable, rejected, refused, damaged
    teardown   `parsl-dragon teardown`: ask, wait, signal what provably is the block's, clean up
    report     exit codes and what the user reads

Exit codes: 0 ok; 1 a server is not live (status) or something is still running or
left behind (teardown); 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from parsl_dragon import host
from parsl_dragon.cli.discover import default_paths
from parsl_dragon.cli.report import EXIT_FAILED, EXIT_USAGE, error
from parsl_dragon.cli.sessions import HANDSHAKE_TIMEOUT
from parsl_dragon.cli.status import cmd_status
from parsl_dragon.cli.teardown import TEARDOWN_TIMEOUT, cmd_teardown
from parsl_dragon.errors import ConfigurationError, DragonExecutorError

__all__ = ["build_parser", "main"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _add_common(sub: argparse.ArgumentParser, timeout: float, timeout_help: str) -> None:
    sub.add_argument("paths", nargs="*", metavar="PATH",
                     help="connection file or directory searched recursively for connection.json "
                          "(default: $PARSL_DRAGON_SERVER_PATH and ./runinfo)")
    sub.add_argument("--timeout", type=_seconds, default=timeout, metavar="S", help=timeout_help)
    sub.add_argument("--key-path", metavar="DIR",
                     help="client key directory (default: $PARSL_DRAGON_KEY_PATH, else ~/.parsl_dragon/keys)")


def build_parser() -> argparse.ArgumentParser:
    """The ``parsl-dragon`` parser; each sub-command's ``run`` is its ``cmd_*`` function."""
    parser = argparse.ArgumentParser(prog="parsl-dragon",
                                     description="Find, check and tear down parsl-dragon servers through "
                                                 "their connection files.",
                                     epilog="exit codes: 0 ok, 1 not live / not clean, 2 usage or configuration")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = subs.add_parser("status", help="show the servers found and whether each is live",
                             description="Show each server found: live, stale, unreachable, rejected, refused or "
                                         "damaged. Exit 0 only if at least one was found and all are live.")
    _add_common(status, HANDSHAKE_TIMEOUT, f"handshake timeout per server (default {HANDSHAKE_TIMEOUT:.0f})")
    status.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    status.set_defaults(run=cmd_status)
    teardown = subs.add_parser("teardown", help="stop the servers found and clean up after them",
                               description="Ask each server to shut down, wait, then signal what is left of its "
                                           "block (only processes carrying its block token), remove its shm "
                                           "pools and its stale connection file. Exit 0 if nothing is left.")
    _add_common(teardown, TEARDOWN_TIMEOUT, f"how long to wait for a server to stop after asking it "
                f"(default {TEARDOWN_TIMEOUT:.0f}; the handshake waits at most {HANDSHAKE_TIMEOUT:.0f})")
    teardown.add_argument("--force", action="store_true",
                          help="do not ask or wait: signal the block's processes right away")
    teardown.set_defaults(run=cmd_teardown)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``parsl-dragon`` with ``argv`` (default: the command line); the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="parsl-dragon: %(levelname)s %(name)s: %(message)s",
                        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)])
    if not args.verbose:  # the hygiene helpers log for boot.log; teardown prints what they did
        logging.getLogger(host.__name__).setLevel(logging.ERROR)
    try:
        missing = [path for path in args.paths if not os.path.exists(path)]
        if missing:
            raise ConfigurationError(f"no such file or directory: {', '.join(missing)}")
        return args.run(args, args.paths or default_paths(dict(os.environ)))
    except ConfigurationError as exc:
        error(exc.message)
        return EXIT_USAGE
    except DragonExecutorError as exc:
        error(exc.message)
        return EXIT_FAILED
    except OSError as exc:  # e.g. a connection file we may not remove
        error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        error("interrupted")
        return 130
