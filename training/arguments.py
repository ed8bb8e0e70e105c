"""Argument types for the training commands: numbers that say, in argparse's error, what they must be."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if value != value or value in (float("inf"), float("-inf")):  # NaN or infinite
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def bounded(kind: type[int] | type[float], accepts: Callable[[float], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse type: a finite number of ``kind`` that ``accepts``, else "must be <requirement>, got ..."."""

    def parse(text: str) -> int | float:
        value = _number(text, kind)
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse
