"""What the /predict entrance saves: CPU per request with it (as shipped) and with the FastAPI route alone.

    .venv/bin/python bench/entrance.py [--requests 1000] [--rounds 5]

Both apps serve the same tiny model in one process; real 28x28 FashionMNIST test PNGs in multipart bodies are
driven straight through each ASGI app (no sockets, so only the app's own work is counted), interleaved round by
round. CPU time (all threads: the model runs on its own) per request, median over rounds.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import torch
import uvloop
from fastapi import FastAPI
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import workloads  # noqa: E402  (bench/ is a folder of scripts, not a package)

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from models import NeuralNetwork, build_metadata, save_artifact  # noqa: E402

BOUNDARY = b"entrancebench"


def bodies(count: int) -> list[bytes]:
    result = []
    for pixels in workloads.test_images(count):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        head = b'Content-Disposition: form-data; name="file"; filename="t.png"\r\nContent-Type: image/png\r\n\r\n'
        result.append(b"--" + BOUNDARY + b"\r\n" + head + buffer.getvalue() + b"\r\n--" + BOUNDARY + b"--\r\n")
    return result


async def call(app: FastAPI, body: bytes) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = []

    async def receive() -> dict[str, object]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)  # type: ignore[arg-type]
    assert status == [200], status


async def measure(apps: dict[str, FastAPI], requests: int, rounds: int) -> dict[str, list[float]]:
    payloads = bodies(64)
    cpu: dict[str, list[float]] = {name: [] for name in apps}
    async with AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        for _ in range(rounds):
            for name, app in apps.items():
                for body in payloads[:16]:  # warm
                    await call(app, body)
                started = time.process_time()
                for index in range(requests):
                    await call(app, payloads[index % len(payloads)])
                cpu[name].append((time.process_time() - started) / requests * 1e6)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "model.safetensors"
    torch.manual_seed(0)
    model = NeuralNetwork().eval()
    save_artifact(path, model, build_metadata(model.state_dict()))
    settings = Settings(model_path=path, device="cpu", torch_threads=1, log_level="warning")
    apps = {"entrance": create_app(settings), "route only": create_app(settings, predict_entrance=False)}
    cpu = uvloop.run(measure(apps, args.requests, args.rounds))
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"{'path':<12} {'CPU us/request (median)':>24}   rounds")
    for name, values in cpu.items():
        print(f"{name:<12} {medians[name]:>24.1f}   {', '.join(f'{v:.0f}' for v in values)}")
    print(f"the entrance saves {1 - medians['entrance'] / medians['route only']:.0%} of the CPU per request")


if __name__ == "__main__":
    main()
