"""`fashion-serve`: run the API with uvicorn, settings from FASHION_* variables and these flags."""

from __future__ import annotations

import argparse

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fashion-serve", description="Serve the FashionMNIST classifier over HTTP.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers, access_log=False)
