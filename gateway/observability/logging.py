"""Process-wide logging set up once at start: JSON lines or text on stderr, per `log_format`.

Log shippers parse the JSON form without regexes; the text form is for a developer's terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from gateway.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO UTC), level, logger, message, worker, exc."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                                 "logger": record.name, "message": record.getMessage()}
        if self._worker is not None:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry).decode()


def setup_logging(settings: Settings, *, worker: int | None = None) -> None:
    """Configure the root logger (replacing any handler) from `log_level` and `log_format`.

    Args:
        settings: the process's settings.
        worker: index of a worker process, included in every line.
    """
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        prefix = f"w{worker} " if worker is not None else ""
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(levelname)s", prefix + "%(levelname)s")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
