"""Structured logs: one JSON object per line, so a log pipeline can parse every field.

Every request writes an access line, so a line's cost is a request's cost: the record skips what no line prints
(the caller's file and line, thread, process and task names: the logging module's documented switches) and
orjson writes the JSON.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TextIO

import orjson

ACCESS_LOGGER = "app.access"
ACCESS_FLUSH_S = 1.0  # how late an access line may be written
ACCESS_BUFFER_BYTES = 64 * 1024
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


class AccessBufferingHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only
    """One write per block of access lines, as nginx's ``access_log ... buffer= flush=``; other lines at once.

    Every request writes an access line, and a write (a system call, and a flush) per line was a measurable part
    of a small request's CPU. Access lines wait until ``max_bytes`` of them are pending or the oldest is
    ``flush_s`` old (a daemon thread looks each ``flush_s``), and go out before any other line, so the order
    holds. The logging module flushes every handler at a normal exit; a killed process loses at most ``flush_s``
    of access lines.
    """

    def __init__(self, stream: TextIO, flush_s: float = ACCESS_FLUSH_S, max_bytes: int = ACCESS_BUFFER_BYTES) -> None:
        super().__init__(stream)
        self.flush_s = flush_s
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called under the handler's lock
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if record.name != ACCESS_LOGGER:
            self._write([*self._take(), line])
            return
        self._pending.append(line)
        self._pending_bytes += len(line) + 1
        if self._pending_bytes >= self.max_bytes:
            self._write(self._take())
        elif self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_every_interval, name="access-log", daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            self._write(self._take())

    def _take(self) -> list[str]:
        lines, self._pending, self._pending_bytes = self._pending, [], 0
        return lines

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _flush_every_interval(self) -> None:
        while True:
            time.sleep(self.flush_s)
            with contextlib.suppress(Exception):  # a closed stream at exit, a full disk: the next interval tries again
                self.flush()


def configure_logging(level: str) -> None:
    handler = AccessBufferingHandler(sys.stderr)
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
