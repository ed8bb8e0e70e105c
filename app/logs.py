"""Structured logs: one JSON object per line, so a log pipeline can parse every field.

Every request writes an access line, so a line's cost is a request's cost: the record skips what no line prints
(the caller's file and line, thread, process and task names: the logging module's documented switches) and
orjson writes the JSON.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("app")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # None of these fields is in a line (RESERVED): not gathering them saves a stack walk and more per record.
    logging._srcfile = None  # documented (logging HOWTO, "Optimization") though its name is private
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+; a plain attribute before
    # The multipart parser warns, as plain text on stderr, about every malformed body a client sends;
    # app.errors already logs each rejection as one JSON line.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
