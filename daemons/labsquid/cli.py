"""labsquid's command line, squid's options.

    labsquid [-f FILE] [-N] [--foreground] [-s] [-Y] [-C] [-d LEVEL]
             [-k reconfigure|rotate|shutdown|interrupt|kill|check|parse] [-z] [-v] [-h]

The same program is every role: the master (default), the kid (``--kid
NAME``, added by the master when it execs itself), and with ``-N`` a single
process that is master and kid at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable

from labsquid import __version__
from labsquid.config import Config, ConfigError

SIGNALS = {
    "reconfigure": signal.SIGHUP,
    "rotate": signal.SIGUSR1,
    "shutdown": signal.SIGTERM,
    "interrupt": signal.SIGINT,
    "kill": signal.SIGKILL,
    "check": 0,
}
# labsquid's own -k word: print the live tree (roles, fds, peers) of the instance.
STATUS = "status"

USAGE = """\
Usage: labsquid [-hvzCNsY] [-d level] [-f config-file] [-k signal] [--foreground]
       -h | --help       Print help message.
       -v | --version    Print version details.
       -f file     Use given config-file instead of /etc/labsquid/labsquid.conf
                   (without -f and without that file: the embedded default config).
       -k reconfigure|rotate|shutdown|interrupt|kill|check|parse|status
                   Parse configuration file, then send signal to running copy
                   (except -k parse) and exit. -k status prints the running
                   process tree with each process's IPC descriptors.
       -z          Create missing directories the config names, then exit.
       -N          Master process runs in foreground and is a worker. No kids.
       --foreground
                   Parent process does not fork.
       -d level    Write debugging to stderr also.
       -s -Y -C    Accepted for compatibility with squid.
"""


def print_native_report() -> None:
    """How many hot modules run compiled; for each that does not, why."""
    from labsquid import _native

    rows = _native.report()
    compiled = sum(how == "compiled" for _, how in rows)
    print(f"compiled hot modules: {compiled} of {len(rows)}"
          + ("" if rows else " (a pure-Python build)"))
    for name, how in rows:
        if how != "compiled":
            print(f"  {name}: {how}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labsquid", add_help=False, usage=argparse.SUPPRESS)
    p.add_argument("-h", "--help", action="store_true", dest="help")
    p.add_argument("-v", "--version", action="store_true", dest="version")
    p.add_argument("-f", dest="config")
    p.add_argument("-k", dest="command", choices=[*SIGNALS, "parse", STATUS])
    p.add_argument("-z", action="store_true", dest="create_dirs")
    p.add_argument("-N", action="store_true", dest="no_daemon")
    p.add_argument("--foreground", action="store_true")
    p.add_argument("-d", type=int, dest="debug")
    for flag in ("-s", "-Y", "-C"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--kid", dest="kid")
    return p


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()

    def fail(message: str) -> None:
        raise UsageError(message)

    parser.error = fail  # type: ignore[method-assign]
    return parser.parse_args(argv)


def kid_args(argv: list[str]) -> list[str]:
    """What the master passes on to its kid: everything but a ``--kid`` already there."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--kid":
            skip = True
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"labsquid: {exc}\n{USAGE}", file=sys.stderr, end="")
        return 2
    if args.help:
        print(USAGE, end="")
        return 0
    if args.version:
        return _report(print_version)

    from labsquid import log as logsetup
    from labsquid.settings import config_path

    level = logsetup.level_from_debug(args.debug)
    path = config_path(args.config)
    if args.kid:
        from labsquid.kid import kid_main

        _set_title(f"({args.kid}) " + " ".join(argv))
        return kid_main(path, args.kid, level)

    config = _load_or_report(path, all_problems=args.command == "parse",
                             warn=args.command in (None, "parse", "check"))
    if config is None:
        return 2
    if args.command == "parse":
        return 0
    if args.command == STATUS:
        from labsquid.control import show_status

        return _report(lambda: show_status(config))
    if args.command:
        from labsquid.control import send_signal

        return send_signal(config, args.command, SIGNALS[args.command])
    if args.create_dirs:
        from labsquid.control import create_dirs

        return create_dirs(config)

    from labsquid.run import run_service

    _set_title("labsquid " + " ".join(argv))
    return run_service(config, path, argv, args, level)


def print_version() -> int:
    print(f"labsquid version {__version__}\n"
          f"Python {sys.version.split()[0]}; squid-compatible configuration and CLI")
    print_native_report()
    return 0


def _report(command: Callable[[], int]) -> int:
    """Run a command that prints a report; a reader that stops early
    (``labsquid -v | head -1``) ends it quietly, as it would a C program."""
    try:
        code = command()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python would print a traceback, and fail once more flushing
        # stdout at exit: point stdout at /dev/null for that last flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _load_or_report(path: str | None, all_problems: bool, warn: bool) -> Config | None:
    from labsquid.settings import load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        problems = exc.problems if all_problems else exc.problems[:1]
        for problem in problems:
            print(f"FATAL: {problem}", file=sys.stderr)
        if not all_problems and len(exc.problems) > 1:
            print(f"labsquid: {len(exc.problems) - 1} more problem(s); "
                  "'labsquid -k parse' lists them all", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"FATAL: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None
    for warning in config.warnings if warn else ():  # not on every -k rotate
        print(f"WARNING: {warning}", file=sys.stderr)
    return config


def _set_title(title: str) -> None:
    from labsquid.process import set_title

    set_title(title.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
