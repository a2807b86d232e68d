"""`fastdp` — the command line of fastdp_ros.

Each subcommand lives in its own module with `add_parser(subparsers)` and a `run(args)`;
errors a user can cause (FastDPError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from fastdp_ros import __version__
from fastdp_ros.console import configure_logging
from fastdp_ros.errors import FastDPError

log = logging.getLogger("fastdp")

#: subcommand modules, in the order `fastdp --help` lists them
COMMANDS = ("fastdp_ros.cli.collect", "fastdp_ros.cli.importer", "fastdp_ros.cli.dataset", "fastdp_ros.cli.train", "fastdp_ros.cli.convert",
            "fastdp_ros.cli.distill", "fastdp_ros.cli.eval",
            "fastdp_ros.cli.run", "fastdp_ros.cli.index", "fastdp_ros.cli.export", "fastdp_ros.cli.bench")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `fastdp` parser; `argv` (default: sys.argv[1:]) lets `train | distill | index` add the
    flags of the policy it names (cli/policy_options.py)."""
    parser = argparse.ArgumentParser(
        prog="fastdp",
        description="Fast diffusion policies for closed-loop control of a Franka arm.",
    )
    parser.add_argument("--version", action="version", version=f"fastdp_ros {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.fastdp_argv = list(sys.argv[1:] if argv is None else argv)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    for command in sub.choices.values():
        show_defaults(command)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """`--help` shows every option's default, also of options without a help text (argparse's
    ArgumentDefaultsHelpFormatter only adds it to those with one)."""
    for action in parser._actions:
        if action.help is None and action.option_strings and action.default not in (None, False,
                                                                                      argparse.SUPPRESS):
            action.help = "(default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    if importlib.util.find_spec("torch") is None:
        # not in install_requires (PyPI's Linux torch is the CUDA build): see setup.py
        print("fastdp: PyTorch is not installed; install the CPU build with `pip install -r "
              "requirements-torch-cpu.txt` (or run scripts/setup_env.sh), or your CUDA build", file=sys.stderr)
        return 2
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.run(args) or 0)
    except FastDPError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
