"""``streamscribe``: subcommands simulate, worker, produce, tail, demo and gateway.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``;
errors of streamscribe exit non-zero with one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from worker.errors import StreamscribeError

SUBCOMMANDS = ("simulate", "worker", "produce", "tail", "demo", "gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamscribe", description="Real-time transcription over Redis Streams.")
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default WARNING; worker: its setting)"
    )
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
    logging.basicConfig(
        level=getattr(logging, str(args.log_level or "WARNING").upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except StreamscribeError as e:
        print(f"streamscribe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
