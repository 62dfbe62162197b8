"""``streamscribe``: subcommands simulate, worker, produce, tail, demo, gateway, admin, models and acl.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``;
errors of streamscribe exit non-zero with one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from redis.exceptions import ConnectionError as RedisConnectionError

from worker import __version__
from worker.cli import logs
from worker.errors import ConfigError, StreamscribeError

#: Subcommand -> the extra that installs what it needs (None: the client install has it).
SUBCOMMANDS: dict[str, str | None] = {
    "simulate": "worker",
    "worker": "worker",
    "produce": None,
    "tail": None,
    "demo": "worker",
    "gateway": "gateway",
    "admin": None,
    "models": None,
    "acl": None,
}
#: Help of the subcommands that live in every install, shown also when their module is missing.
_HELP = {"simulate": "one file through a processor", "worker": "run a transcription worker", "demo": "a live demo"}


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
    for name, extra in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"worker.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"worker.cli.{name}":
                continue
            if extra is None or (e.name or "").split(".")[0] in ("worker", "producer"):
                raise  # a bug, not a missing extra
            _missing_extra(sub, name, extra, e.name or "?")
            continue
        module.add_parser(sub)
    return parser


def _missing_extra(sub: argparse._SubParsersAction, name: str, extra: str, missing: str) -> None:
    """A subcommand whose dependencies are not installed: it exits with one line naming its extra."""
    p = sub.add_parser(
        name, help=f"{_HELP.get(name, name)} (needs pip install 'streamscribe[{extra}]')", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(_args: argparse.Namespace) -> int:
        raise ConfigError(f"this install lacks {missing}, which {name} needs: pip install 'streamscribe[{extra}]'")

    p.set_defaults(run=run, missing_extra=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # a subcommand whose extra is missing takes any arguments: it only says what to install
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "missing_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logs.configure(args.log_level, args.log_format)
    try:
        return int(args.run(args) or 0)
    except StreamscribeError as e:
        print(f"streamscribe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RedisConnectionError as e:
        # unreachable, refused, a TLS handshake that failed, a plain client on a TLS port
        print(f"streamscribe {args.command}: error: cannot talk to Redis: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
