"""``streamscribe``: subcommands simulate, worker, produce, tail, demo and gateway.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``;
errors of streamscribe exit non-zero with one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from worker import __version__
from worker.cli import logs
from worker.errors import StreamscribeError

SUBCOMMANDS = ("simulate", "worker", "produce", "tail", "demo", "gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamscribe", description="Real-time transcription over Redis Streams.")
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default WARNING; worker: its setting)"
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="json: one object per line, for log pipelines"
    )
    parser.add_argument("--version", action="version", version=f"streamscribe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"worker.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"worker.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        return int(args.run(args) or 0)
    except StreamscribeError as e:
        print(f"streamscribe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
