"""Train the quickstart MLP on FashionMNIST and save a verifiable artifact.

Run ``python -m training --help`` (or ``fashion-train --help``) for the options and defaults.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torchvision

from models import CLASS_NAMES, DEVICE_CHOICES, build_metadata, resolve_device, save_artifact
from training.data import DATA_DIR_ENV, DEBIAN_DATA_DIR, DatasetError, FashionData, load_fashion_mnist
from training.publish import add_publish_options, publish_artifact
from training.report import per_class_table, write_report
from training.train import (
    MAX_SHIFT,
    OPTIMIZERS,
    PRECISIONS,
    TUTORIAL_CONFIG,
    EpochStats,
    FitResult,
    TrainConfig,
    fit,
    fit_tutorial,
    per_class_accuracy,
)

DEFAULT_OUT = Path("artifacts/model.safetensors")
DEFAULTS = TrainConfig()
DRY_RUN_BATCHES = 5
log = logging.getLogger("training")


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


positive_int = bounded(int, lambda value: value >= 1, "at least 1")
positive_float = bounded(float, lambda value: value > 0, "greater than 0")
non_negative_float = bounded(float, lambda value: value >= 0, "0 or more")
fraction = bounded(float, lambda value: 0 <= value < 1, "at least 0 and below 1")  # a probability-like setting
shift_pixels = bounded(int, lambda value: 0 <= value <= MAX_SHIFT, f"0 or more and at most {MAX_SHIFT} pixels")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """States every default in --help, except the uninformative None of open options and False of bare flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        bare_flag = action.default is False and not isinstance(action, argparse.BooleanOptionalAction)
        if action.default is None or bare_flag:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the PyTorch quickstart MLP on FashionMNIST and save a verifiable artifact.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        choices=("default", "tutorial"),
        default="default",
        help="'tutorial' reproduces the quickstart exactly (DataLoader + ToTensor, SGD lr 1e-3, "
        "batch 64, 5 epochs) and ignores the optimisation and augmentation flags",
    )
    parser.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="passes over the 60,000 images")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="images per step")
    parser.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="peak learning rate (one-cycle)")
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer, help="sgd: Nesterov, momentum 0.9"
    )
    parser.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=DEFAULTS.weight_decay,
        help="decoupled for adamw, L2 for sgd, unused by adam",
    )
    parser.add_argument(
        "--label-smoothing", type=fraction, default=DEFAULTS.label_smoothing, help="share of the target spread evenly"
    )
    parser.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.hflip,
        help="mirror a random half of each batch (augmentation)",
    )
    parser.add_argument(
        "--shift", type=shift_pixels, default=DEFAULTS.shift, help="max random translation in pixels (0: off)"
    )
    parser.add_argument(
        "--erase", type=fraction, default=DEFAULTS.erase, help="probability of blanking a random rectangle"
    )
    parser.add_argument(
        "--ema",
        type=fraction,
        default=DEFAULTS.ema,
        help="decay of the moving average of the weights that is evaluated and saved (0: off)",
    )
    parser.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.standardize,
        help="train on inputs centred per pixel and scaled, then fold that map into the first layer",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="training arithmetic; auto uses bf16 autocast where the hardware supports it",
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="same seed, same weights (on CPU)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: cuda, then mps, then cpu")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder with the four FashionMNIST files (default: ${DATA_DIR_ENV}, then {DEBIAN_DATA_DIR})",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="if no local copy is found, download the dataset with torchvision (needs internet)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the artifact")
    parser.add_argument("--no-report", action="store_true", help="skip the confusion-matrix and curves PNGs")
    parser.add_argument("--dry-run", action="store_true", help="a few batches of one epoch: a quick smoke test")
    add_publish_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors, got {args.out}")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a directory; give a file path")
    if any(parent.exists() and not parent.is_dir() for parent in args.out.parents):
        parser.error(f"--out {args.out}: a parent of it is a file, not a folder")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = load_fashion_mnist(args.data_dir, download=args.download)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # unreadable file or failed download
        print(f"error: could not read FashionMNIST: {exc}", file=sys.stderr)
        return 2

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        hflip=args.hflip,
        shift=args.shift,
        erase=args.erase,
        ema=args.ema,
        standardize=args.standardize,
        precision=args.precision,
        seed=args.seed,
    )
    if args.dry_run:
        config = replace(config, epochs=1, max_batches=DRY_RUN_BATCHES)
    log.info(
        "training on %s with %s train / %s test images (recipe: %s)",
        device,
        len(data.train_labels),
        len(data.test_labels),
        args.recipe,
    )
    result = run_recipe(args.recipe, data, config, device)
    assert result.final is not None
    training_config = {"recipe": args.recipe, "device": str(device), "seconds": round(result.seconds, 2)}
    training_config |= config.as_dict() if args.recipe == "default" else dict(TUTORIAL_CONFIG, dry_run=args.dry_run)

    metadata = build_metadata(
        result.model.state_dict(),
        test_accuracy=round(result.final.accuracy, 4),
        per_class_accuracy=per_class_accuracy(result.final.confusion, CLASS_NAMES),
        training_config=training_config,
        dataset_checksums=data.checksums,
        extra_versions={"torchvision": torchvision.__version__},
    )
    try:
        save_artifact(args.out, result.model.cpu(), metadata)
    except OSError as exc:
        print(f"error: could not write the artifact {args.out}: {exc}", file=sys.stderr)
        return 1
    print(per_class_table(result.final.confusion, CLASS_NAMES))
    log.info(
        "test accuracy %.2f%% in %.1f s; artifact %s (weights sha256 %s)",
        100 * result.final.accuracy,
        result.seconds,
        args.out,
        metadata.weights_sha256[:16],
    )
    if not args.no_report:
        for path in write_report(args.out, result.final.confusion, result.history, list(CLASS_NAMES)):
            log.info("report: %s", path)
    return publish_artifact(args, args.out)


def run_recipe(recipe: str, data: FashionData, config: TrainConfig, device: torch.device) -> FitResult:
    epochs = config.epochs if recipe == "default" else TUTORIAL_CONFIG["epochs"]

    def show(stats: EpochStats) -> None:
        train = "" if math.isnan(stats.train_loss) else f"train loss {stats.train_loss:.4f}  "
        log.info(
            "epoch %d/%d  %stest loss %.4f  test accuracy %.2f%%  (%.1f s)",
            stats.epoch,
            epochs,
            train,
            stats.test_loss,
            100 * stats.test_accuracy,
            stats.seconds,
        )

    if recipe == "tutorial":
        return fit_tutorial(data.root, device, seed=config.seed, on_epoch=show, max_batches=config.max_batches)
    return fit(
        data.train_images,
        data.train_labels,
        data.test_images,
        data.test_labels,
        config,
        device,
        on_epoch=show,
        show_progress=sys.stderr.isatty(),
    )


if __name__ == "__main__":
    sys.exit(main())
