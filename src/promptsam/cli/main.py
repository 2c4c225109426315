"""Entry point of the `promptsam` command: dispatches to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

from promptsam import __version__
from promptsam.errors import PromptSAMError

# subcommand name -> module in promptsam.cli; each module defines `add_parser(subparsers)` and `run(args) -> int`.
SUBCOMMANDS = {
    "info": "promptsam.cli.info",
    "demo": "promptsam.cli.demo",
    "evaluate": "promptsam.cli.evaluate",
    "data": "promptsam.cli.data",
    "segment": "promptsam.cli.segment",
    "train": "promptsam.cli.train",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="promptsam", description=__doc__)
    parser.add_argument("--version", action="version", version=f"promptsam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # subcommand not implemented yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line to stderr and return exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except PromptSAMError as err:
        print(f"promptsam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptsam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
