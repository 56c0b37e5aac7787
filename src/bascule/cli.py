"""The `bascule` command: run, check, version (and the packet-mode commands when present).

Rules of this module:
- A usage mistake is argparse's usage error (exit 2) naming the flag, never silently ignored:
  `run -c FILE --print-demo` is refused rather than serving FILE.
- One function prints the version; `version`, `--version` and `-V` all call it.
- A config error prints its lines on stderr and exits 2; a machine refusal exits 1.
"""

from __future__ import annotations

import argparse
import sys

from bascule import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bascule", description="A load balancer and reverse proxy for every connection model."
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    # Not `required`: `--version` alone is a whole command line. main() asks for one otherwise.
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="serve: with -c FILE, or the built-in demo without")
    run.add_argument("-c", "--config", help="config file (.yaml, .yml, .toml or .json)")
    run.add_argument(
        "--print-demo",
        action="store_true",
        help="print the built-in demo config and exit (refused with -c)",
    )
    check = sub.add_parser("check", help="validate a config file; exit 0 when it is valid")
    check.add_argument("-c", "--config", required=True, help="config file to check")
    sub.add_parser("version", help="print the version")
    try:
        from bascule.packet.cli import register
    except ImportError:
        pass
    else:
        register(sub)
    return parser


def print_version() -> None:
    print(f"bascule {__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version or args.command == "version":
        print_version()
        return 0
    if args.command is None:
        parser.error("the following arguments are required: command")
    if args.command == "run" and args.print_demo and args.config is not None:
        parser.error("--print-demo prints the built-in demo config; it cannot be given with -c")
    from bascule.config.errors import ConfigError
    from bascule.config.loader import load_config

    if args.command == "check":
        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
        if config.services:  # the machine checks `run` would make (root, interface, VIP, MACs)
            from bascule.packet.runtime import check

            refusal = check(config)
            if refusal is not None:
                print(f"{args.config}: {refusal}", file=sys.stderr)
                return 1
        from bascule.runtime.sticky import unkeyed_sticky

        for i in unkeyed_sticky(config):
            print(
                f"{args.config} clusters[{i}].sticky.secret: warning: not set, so a random key"
                " is made at each start and sticky cookies do not survive a restart",
                file=sys.stderr,
            )
        print(
            f"{args.config}: ok ({len(config.listeners)} listeners, "
            f"{len(config.clusters)} clusters)"
        )
        return 0
    if args.command == "run":
        from bascule.runtime.supervisor import run

        if args.config is None:
            from bascule.config.demo import DEMO_YAML, demo_config

            if args.print_demo:
                print(DEMO_YAML)
                return 0
            return run(demo_config())
        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
        return run(config)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    return 2
