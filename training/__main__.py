"""Train the quickstart MLP on FashionMNIST and save a verifiable artifact.

Run ``python -m training --help`` (or ``fashion-train --help``) for the options and defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torchvision

from models import CLASS_NAMES, DEVICE_CHOICES, build_metadata, resolve_device, save_artifact
from training.data import DATA_DIR_ENV, DEBIAN_DATA_DIR, DatasetNotFoundError, load_fashion_mnist
from training.report import per_class_table, write_report
from training.train import (
    OPTIMIZERS,
    PRECISIONS,
    EpochStats,
    FitResult,
    TrainConfig,
    fit,
    fit_tutorial,
    per_class_accuracy,
)

DEFAULT_OUT = Path("artifacts/model.safetensors")
DEFAULTS = TrainConfig()
log = logging.getLogger("training")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the PyTorch quickstart MLP on FashionMNIST and save a verifiable artifact.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        choices=("default", "tutorial"),
        default="default",
        help="'tutorial' reproduces the quickstart exactly (DataLoader + ToTensor, SGD lr 1e-3, "
        "batch 64, 5 epochs) and ignores the optimisation flags",
    )
    parser.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    parser.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="peak learning rate (one-cycle)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer)
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    parser.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing)
    parser.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.hflip,
        help="mirror half of each batch (augmentation)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="training arithmetic; auto uses bf16 autocast where the hardware supports it",
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: cuda, then mps, then cpu")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder with the four FashionMNIST files (default: ${DATA_DIR_ENV}, then {DEBIAN_DATA_DIR})",
    )
    parser.add_argument(
        "--download", action="store_true", help="download the dataset with torchvision (needs internet)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the artifact")
    parser.add_argument("--no-report", action="store_true", help="skip the confusion-matrix and curves PNGs")
    parser.add_argument("--dry-run", action="store_true", help="a few batches of one epoch: a quick smoke test")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors, got {args.out}")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a directory; give a file path")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = load_fashion_mnist(args.data_dir, download=args.download)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # unreadable, truncated or failed download
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
        precision=args.precision,
        seed=args.seed,
    )
    if args.dry_run:
        config = replace(config, epochs=1, max_batches=5)
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
    training_config |= (
        config.as_dict()
        if args.recipe == "default"
        else {"epochs": 5, "batch_size": 64, "lr": 1e-3, "optimizer": "sgd"}
    )

    metadata = build_metadata(
        result.model.state_dict(),
        test_accuracy=round(result.final.accuracy, 4),
        per_class_accuracy=per_class_accuracy(result.final.confusion, CLASS_NAMES),
        training_config=training_config,
        dataset_checksums=data.checksums,
        extra_versions={"torchvision": torchvision.__version__},
    )
    save_artifact(args.out, result.model.cpu(), metadata)
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
    return 0


def run_recipe(recipe: str, data, config: TrainConfig, device: torch.device) -> FitResult:  # type: ignore[no-untyped-def]
    def show(stats: EpochStats) -> None:
        log.info(
            "epoch %d/%d  train loss %.4f  test loss %.4f  test accuracy %.2f%%  (%.1f s)",
            stats.epoch,
            config.epochs if recipe == "default" else 5,
            stats.train_loss,
            stats.test_loss,
            100 * stats.test_accuracy,
            stats.seconds,
        )

    if recipe == "tutorial":
        return fit_tutorial(data.root, device, seed=config.seed, on_epoch=show)
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
