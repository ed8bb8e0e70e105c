"""Train the quickstart MLP on FashionMNIST and save a verifiable artifact.

Run ``python -m training --help`` (or ``fashion-train --help``) for the options and defaults.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torchvision

from models import (
    CLASS_NAMES,
    DEVICE_CHOICES,
    TrustParts,
    build_metadata,
    pixels_to_input,
    resolve_device,
    save_artifact,
)
from training.arguments import bounded
from training.data import (
    DATA_DIR_ENV,
    DEBIAN_DATA_DIR,
    VALIDATION_SEED,
    VALIDATION_SIZE,
    DatasetError,
    FashionData,
    Split,
    load_fashion_mnist,
    split_validation,
)
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
    Trained,
    evaluate,
    fit,
    fit_tutorial,
    per_class_accuracy,
)
from training.trust import fit_trust_parts

DEFAULT_OUT = Path("artifacts/model.safetensors")
DEFAULTS = TrainConfig()
DRY_RUN_BATCHES = 5
log = logging.getLogger("training")


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
        "batch 64, 5 epochs, all 60,000 images) and ignores the optimisation and augmentation flags; "
        "its artifact is uncalibrated and has no out-of-distribution detector",
    )
    add_optimisation_options(parser)
    add_augmentation_options(parser)
    add_run_options(parser)
    add_publish_options(parser)
    return parser


def add_optimisation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="passes over the training images")
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


def add_augmentation_options(parser: argparse.ArgumentParser) -> None:
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


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="same seed, same weights (on CPU)")
    parser.add_argument(
        "--validation-size",
        type=positive_int,
        default=VALIDATION_SIZE,
        help=f"training images held out (drawn by the fixed seed {VALIDATION_SEED}): measured after every epoch, "
        "and the temperature and the out-of-distribution threshold are fitted on them; the test set is measured once",
    )
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
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="skip the report: confusion matrix, curves, reliability diagram and the trust figures",
    )
    parser.add_argument("--dry-run", action="store_true", help="a few batches of one epoch: a quick smoke test")


def parse_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """The parsed flags and the device, or exit 2 with the reason."""
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
    return args, device


def load_data(args: argparse.Namespace) -> FashionData | None:
    """FashionMNIST in memory, or None after printing why not."""
    try:
        return load_fashion_mnist(args.data_dir, download=args.download)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (OSError, RuntimeError) as exc:  # unreadable file or failed download
        print(f"error: could not read FashionMNIST: {exc}", file=sys.stderr)
    return None


def config_from(args: argparse.Namespace) -> TrainConfig:
    names = [name for name in TrainConfig.__dataclass_fields__ if name != "max_batches"]
    config = TrainConfig(**{name: getattr(args, name) for name in names})
    return replace(config, epochs=1, max_batches=DRY_RUN_BATCHES) if args.dry_run else config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, device = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args)
    if data is None:
        return 2
    try:
        split = split_validation(data, args.validation_size)
    except ValueError as exc:
        print(f"error: --validation-size: {exc}", file=sys.stderr)
        return 2
    config = config_from(args)
    log.info(
        "training on %s with %s train / %s validation images (recipe: %s); the %s test images are measured once",
        device,
        len(data.train_labels) if args.recipe == "tutorial" else len(split.train_labels),
        0 if args.recipe == "tutorial" else len(split.validation_labels),
        args.recipe,
        len(data.test_labels),
    )
    result = run_recipe(args.recipe, data, split, config, device)
    trained = finish_training(args, result, split, data, config, device)
    return save_and_report(args, trained, data)


def run_recipe(recipe: str, data: FashionData, split: Split, config: TrainConfig, device: torch.device) -> FitResult:
    epochs = config.epochs if recipe == "default" else TUTORIAL_CONFIG["epochs"]

    def show(stats: EpochStats) -> None:
        train = "" if math.isnan(stats.train_loss) else f"train loss {stats.train_loss:.4f}  "
        held_out = "test" if recipe == "tutorial" else "validation"
        log.info(
            "epoch %d/%d  %s%s loss %.4f  %s accuracy %.2f%%  (%.1f s)",
            *(stats.epoch, epochs, train, held_out, stats.held_out_loss, held_out, 100 * stats.held_out_accuracy),
            stats.seconds,
        )

    if recipe == "tutorial":
        return fit_tutorial(data.root, device, seed=config.seed, on_epoch=show, max_batches=config.max_batches)
    return fit(
        split.train_images,
        split.train_labels,
        split.validation_images,
        split.validation_labels,
        config,
        device,
        on_epoch=show,
        show_progress=sys.stderr.isatty(),
    )


def finish_training(
    args: argparse.Namespace,
    result: FitResult,
    split: Split,
    data: FashionData,
    config: TrainConfig,
    device: torch.device,
) -> Trained:
    """The trust parts (default recipe only: the tutorial trained on the validation images), and the test set,
    measured once."""
    model = result.model.cpu().eval()
    training_config = {"recipe": args.recipe, "device": str(device), "seconds": round(result.seconds, 2)}
    training_config |= config.as_dict() if args.recipe == "default" else dict(TUTORIAL_CONFIG, dry_run=args.dry_run)
    trained = Trained(model=model, history=result.history, training_config=training_config)
    if args.recipe == "default":
        assert result.final is not None
        trained.validation_accuracy = round(result.final.accuracy, 4)
        trained.validation_split = dict(split.description)
        trained.trust = fit_trust_parts(model, split, quick=args.dry_run)
        log.info("trust parts fitted in %.1f s: %s", trained.trust.seconds, trained.trust.summary())
    trained.test = evaluate(model, pixels_to_input(data.test_images), data.test_labels)
    return trained


def save_and_report(args: argparse.Namespace, trained: Trained, data: FashionData) -> int:
    assert trained.test is not None
    parts = trained.trust.parts if trained.trust is not None else TrustParts()
    metadata = build_metadata(
        trained.model.state_dict(),
        parts=parts,
        test_accuracy=round(trained.test.accuracy, 4),
        validation_accuracy=trained.validation_accuracy,
        validation_split=trained.validation_split,
        per_class_accuracy=per_class_accuracy(trained.test.confusion, CLASS_NAMES),
        training_config=trained.training_config,
        dataset_checksums=data.checksums,
        extra_versions={"torchvision": torchvision.__version__},
    )
    try:
        save_artifact(args.out, trained.model, metadata, parts)
    except OSError as exc:
        print(f"error: could not write the artifact {args.out}: {exc}", file=sys.stderr)
        return 1
    print(per_class_table(trained.test.confusion, CLASS_NAMES))
    log.info(
        "test accuracy %.2f%% (validation %s) in %.1f s; artifact %s (weights sha256 %s)",
        100 * trained.test.accuracy,
        "-" if trained.validation_accuracy is None else f"{100 * trained.validation_accuracy:.2f}%",
        trained.training_config["seconds"],
        args.out,
        metadata.weights_sha256[:16],
    )
    if not args.no_report:
        for path in write_report(args.out, trained, data, list(CLASS_NAMES), quick=args.dry_run):
            log.info("report: %s", path)
    return publish_artifact(args, args.out)


if __name__ == "__main__":
    sys.exit(main())
