"""``--publish STORE``: put the new artifact into a model store, promoted only if it is no worse than the serving one.

The trainer calls ``publish_artifact`` after it saved the artifact; ``python -m training.publish STORE ARTIFACT``
publishes an artifact that already exists (``--help`` for the options). The rules (validation, the tolerance,
the compare-and-swap) are models/publishing.py's, shared with the server's admin API.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from models.publishing import DEFAULT_TOLERANCE_POINTS, publish
from models.store import ModelStore, StoreError
from models.validation import DEFAULT_MIN_ACCURACY
from training.arguments import bounded

MIN_ACCURACY_ENV = "FASHION_MIN_ACCURACY"  # the server's setting of the same name: one bar for both


def add_publish_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--publish",
        type=Path,
        default=None,
        metavar="STORE",
        help="also publish the artifact into this model store (docs/lifecycle.md)",
    )
    add_decision_options(parser)


def add_decision_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--promote",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="promote the version whatever its accuracy (--promote) or never (--no-promote); "
        "by default only if it is within --tolerance of the serving version's accuracy",
    )
    parser.add_argument(
        "--tolerance",
        type=points,
        default=DEFAULT_TOLERANCE_POINTS,
        help="accuracy points the new version may lose against the serving one and still be promoted",
    )
    parser.add_argument(
        "--min-accuracy",
        type=accuracy,
        default=os.environ.get(MIN_ACCURACY_ENV, str(DEFAULT_MIN_ACCURACY)),  # a string: argparse checks it too
        help=f"a version whose recorded accuracy is below this is refused (${MIN_ACCURACY_ENV} when set)",
    )


points = bounded(float, lambda value: value >= 0, "0 or more accuracy points")
accuracy = bounded(float, lambda value: 0 <= value <= 1, "an accuracy from 0 to 1")


def publish_artifact(args: argparse.Namespace, artifact: Path) -> int:
    """0 once published (promoted, or kept as a candidate, with the reason); 1 if refused or on a store error."""
    if args.publish is None:
        return 0
    try:
        result = publish(
            ModelStore(args.publish),
            artifact,
            min_accuracy=args.min_accuracy,
            tolerance_points=args.tolerance,
            promote=args.promote,
        )
    except (StoreError, OSError) as exc:
        print(f"error: could not publish into {args.publish}: {exc}", file=sys.stderr)
        return 1
    if result.reason.startswith("refused"):
        print(f"error: version {result.digest[:12]} {result.reason}", file=sys.stderr)
        return 1
    outcome = "promoted: it serves now" if result.promoted else "published as a candidate"
    print(f"version {result.digest[:12]} {outcome} ({result.reason}); state generation {result.state.generation}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.publish", description="Publish an existing artifact into a model store."
    )
    parser.add_argument("publish", type=Path, metavar="STORE", help="the model store (a directory)")
    parser.add_argument("artifact", type=Path, help="the .safetensors artifact to publish")
    add_decision_options(parser)
    args = parser.parse_args(argv)
    if not args.artifact.is_file():
        parser.error(f"{args.artifact} is not a file")
    return publish_artifact(args, args.artifact)


if __name__ == "__main__":
    sys.exit(main())
