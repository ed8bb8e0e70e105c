"""Replicas behind a real load balancer: Debian's haproxy in the foreground, standing in for a Kubernetes Service.

tests/test_replicas.py and bench/swap.py start several server processes on one model store and put this in
front of them. Every answer through it carries ``X-Replica`` (the haproxy name of the server that answered), so
a caller can tell that each replica took its share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import LiveServer, free_port, serve_process
from tests.fashion_serve import run_fashion_serve

HAPROXY = Path("/usr/sbin/haproxy")
REPLICA_HEADER = "X-Replica"

# Round robin; a server is taken out after two failed /readyz checks (0.5 s apart) and back after one good one.
# http-reuse safe (haproxy's default, stated): a client's first request never lands on a reused server
# connection that the server may be closing. Only errors are logged (dontlog-normal), so the log is the failures.
CONFIG = """\
global
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    retries 2

frontend api
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    http-reuse safe
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 1
    http-response set-header {header} %s
{servers}
"""


def haproxy_config(port: int, backends: list[str]) -> str:
    """The configuration for ``backends`` (``http://host:port`` each), named r1, r2, ... in X-Replica."""
    servers = "\n".join(
        f"    server r{index} {url.removeprefix('http://')}" for index, url in enumerate(backends, start=1)
    )
    return CONFIG.format(port=port, header=REPLICA_HEADER, servers=servers)


@contextlib.contextmanager
def run_haproxy(backends: list[str], work_dir: Path, ready_timeout: float = 15) -> Iterator[LiveServer]:
    """haproxy in the foreground (-db) in front of ``backends``; ready once /readyz answers 200 through it.
    Stopped with SIGTERM after; its configuration and log stay in ``work_dir``."""
    port = free_port()
    config = work_dir / f"haproxy-{port}.cfg"
    config.write_text(haproxy_config(port, backends))
    args = ["-db", "-f", str(config)]
    with serve_process("haproxy", args, port, {}, work_dir, "/readyz", ready_timeout, 10, str(HAPROXY)) as balancer:
        yield balancer


@contextlib.contextmanager
def run_replicas(count: int, env: dict[str, str], log_dir: Path, workers: int = 1) -> Iterator[list[LiveServer]]:
    """``count`` fashion-serve processes (app/cli.py, the command the image runs), each on its own port with
    ``workers`` workers, started at once; each ready on /readyz. Stopped (SIGTERM) after."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(count) as pool:

        def start(_: int) -> LiveServer:
            return stack.enter_context(run_fashion_serve(env, log_dir, "--workers", str(workers), ready_timeout=120))

        servers = list(pool.map(start, range(count)))
        yield servers
