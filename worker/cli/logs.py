"""Log output of every subcommand: ``--log-format text`` (default) or ``json``, one object per line.

The JSON form is for log pipelines (Loki, Elasticsearch, Cloud Logging). Each line carries
``ts``, ``level``, ``logger`` and ``message``, and the fields a record was given with
``extra=``: ``session``, ``epoch`` and ``event`` on a session's lifecycle records. ``worker``
(the worker id) is added to every record once the worker knows its id.
"""

from __future__ import annotations

import json
import logging
import sys
import time

#: Record attributes copied into a JSON line when a log call set them with ``extra=``.
CONTEXT_FIELDS = ("session", "worker", "epoch", "event", "channel", "reason")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, context fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class WorkerField(logging.Filter):
    """Adds ``worker`` to every record that does not carry one."""

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "worker", None) is None:
            record.worker = self.worker_id
        return True


def configure(level: str | None, log_format: str) -> None:
    """Send records of ``level`` and above to stderr in ``log_format`` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level or "WARNING").upper(), logging.WARNING))


def tag_worker(worker_id: str) -> None:
    """From now on every record names this worker (``worker`` in JSON lines)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerField(worker_id))
