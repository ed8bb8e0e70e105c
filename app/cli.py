"""`fashion-serve`: uvicorn's own command line with this service's defaults.

Every uvicorn option and ``UVICORN_*`` variable works as with ``uvicorn`` (``--workers``, ``WEB_CONCURRENCY``,
``UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN``, ...); the defaults differ: the app, all interfaces, no access log (the
app writes its own), and the HTTP protocol with connection limits (app/server.py). It also gives the workers
one metrics directory, emptied before they start, so /metrics adds up every worker (app/metrics.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when a worker imports it
DEFAULTS = {
    "app": "app.main:app",
    "host": "0.0.0.0",
    "http": "app.server:BoundedHttpToolsProtocol",
    "access_log": False,
}


def main(argv: list[str] | None = None) -> None:
    # Imported here: the metrics directory must be in the environment before anything imports prometheus-client.
    from uvicorn.main import main as uvicorn_command

    with metrics_directory():
        uvicorn_command.main(args=argv, prog_name="fashion-serve", default_map=DEFAULTS)


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """``$PROMETHEUS_MULTIPROC_DIR`` emptied of an earlier run's files, or a private one removed at exit."""
    configured = os.environ.get(MULTIPROC_ENV)
    if not configured:
        with tempfile.TemporaryDirectory(prefix="fashion-metrics-") as private:
            os.environ[MULTIPROC_ENV] = private
            yield Path(private)
        return
    directory = Path(configured)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        probe = directory / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise SystemExit(
            f"fashion-serve: {MULTIPROC_ENV}={configured} must be a writable directory (the workers' metrics): "
            f"{exc.strerror}. With a read-only root filesystem mount a tmpfs there (docker run --tmpfs /tmp; "
            "Kubernetes: an emptyDir with medium Memory)."
        ) from None
    yield directory


if __name__ == "__main__":
    main()
