"""What a person reads after training: a per-class table, a confusion matrix, learning curves, and the trust
report (reliability diagram, ECE and NLL with bootstrap intervals, the "not a garment" figures per kind)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt
import torch

from models import Scorer, write_atomically
from training.data import FashionData
from training.measure import CalibrationFigures, KindFigures, measure_calibration, measure_ood
from training.ood_sets import KINDS, SPLITS, make_ood_set
from training.train import EpochStats, Trained
from training.trust import outputs_of

OOD_SET_SIZE = 1000  # images per kind and split: the share flagged is then known to about +-1 point
QUICK_OOD_SET_SIZE = 50  # a dry run's report: the same pages, from an untrained model, in seconds


def per_class_table(confusion: torch.Tensor, class_names: tuple[str, ...] | list[str]) -> str:
    """A plain-text table: class, correct/total, accuracy, and the class it is most confused with."""
    lines = [f"{'class':<12} {'correct':>13} {'accuracy':>9}  most confused with"]
    for i, name in enumerate(class_names):
        row = confusion[i].clone()
        total = int(row.sum())
        correct = int(row[i])
        row[i] = -1
        worst = int(row.argmax())
        lines.append(
            f"{name:<12} {correct:>6}/{total:<6} {correct / max(total, 1):>9.2%}  "
            f"{class_names[worst]} ({int(confusion[i, worst])})"
        )
    overall = int(confusion.diag().sum()) / max(int(confusion.sum()), 1)
    lines.append(f"{'overall':<12} {int(confusion.diag().sum()):>6}/{int(confusion.sum()):<6} {overall:>9.2%}")
    return "\n".join(lines)


def confusion_png(confusion: torch.Tensor, class_names: tuple[str, ...] | list[str]) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test set)")
    threshold = confusion.max().item() / 2
    for (i, j), count in zip(
        ((i, j) for i in range(len(class_names)) for j in range(len(class_names))),
        confusion.flatten().tolist(),
        strict=True,
    ):
        ax.text(j, i, count, ha="center", va="center", fontsize=7, color="white" if count > threshold else "black")
    return _to_png(fig)


def curves_png(history: list[EpochStats], held_out: str = "validation") -> bytes:
    epochs = [s.epoch for s in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    # Train figures are running means over the epoch, on augmented batches with label smoothing
    # (which keeps the loss above ~0.5); held-out figures are the plain loss after the epoch.
    loss_ax.plot(epochs, [s.train_loss for s in history], label="train (running, label-smoothed)")
    loss_ax.plot(epochs, [s.held_out_loss for s in history], label=held_out)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc_ax.plot(epochs, [s.train_accuracy for s in history], label="train (running)")
    acc_ax.plot(epochs, [s.held_out_accuracy for s in history], label=held_out)
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return _to_png(fig)


def reliability_png(figures: CalibrationFigures) -> bytes:
    """Accuracy against confidence per bin, before and after the temperature; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for bins, label in (
        (figures.bins_before, f"uncalibrated (ECE {figures.ece_before.value:.2%})"),
        (figures.bins_after, f"temperature {figures.temperature:.3f} (ECE {figures.ece_after.value:.2%})"),
    ):
        ax.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", label=label)
    ax.set(xlabel="confidence (top class)", ylabel="accuracy", title="Reliability on the test set, 15 bins")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _to_png(fig)


def trust_markdown(calibration: CalibrationFigures, garments_flagged: float, kinds: list[KindFigures]) -> str:
    """The trust figures as a markdown fragment: calibration table, then the detector's table per kind."""

    def interval(i: object, percent: bool) -> str:
        value, low, high = (getattr(i, name) for name in ("value", "low", "high"))
        return f"{value:.2%} ({low:.2%} to {high:.2%})" if percent else f"{value:.4f} ({low:.4f} to {high:.4f})"

    c = calibration
    lines = [
        f"Calibration on the test set (temperature {c.temperature:.4f}, fitted on validation by NLL; "
        f"95% bootstrap intervals, {c.resamples} resamples):",
        "",
        "| | uncalibrated | calibrated |",
        "|---|---:|---:|",
        f"| ECE (15 equal-width top-label bins) | {interval(c.ece_before, True)} | {interval(c.ece_after, True)} |",
        f"| NLL | {interval(c.nll_before, False)} | {interval(c.nll_after, False)} |",
        "",
        f"The best single temperature for the test set itself ({c.test_best_temperature:.4f}) gives ECE "
        f"{c.ece_test_best:.2%}; every argmax unchanged by calibration: {'yes' if c.argmax_unchanged else 'NO'}.",
        "",
        f"Not a garment: {garments_flagged:.2%} of the real test garments are flagged at the stored threshold.",
        "",
        "| kind | set | images | AUROC | flagged |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {k.kind} | {k.split} | {k.count} | {k.auroc:.4f} | {k.flagged:.1%} |" for k in kinds]
    return "\n".join(lines) + "\n"


def trust_report(trained: Trained, data: FashionData, quick: bool = False) -> tuple[bytes, str]:
    """(reliability PNG, markdown) for a model with trust parts, measured on the test set and the non-garment sets."""
    assert trained.trust is not None
    parts = trained.trust.parts
    assert parts.calibration is not None and parts.ood is not None
    calibration = measure_calibration(
        outputs_of(trained.model, data.test_images), data.test_labels, parts.calibration.temperature, quick=quick
    )
    size = QUICK_OOD_SET_SIZE if quick else OOD_SET_SIZE
    sets = {(kind, split): make_ood_set(kind, split, size) for split in SPLITS for kind in KINDS}
    flagged, kinds = measure_ood(Scorer(trained.model, parts.calibration, parts.ood), data.test_images, sets)
    return reliability_png(calibration), trust_markdown(calibration, flagged, kinds)


def write_report(
    artifact_path: Path, trained: Trained, data: FashionData, class_names: list[str], quick: bool = False
) -> list[Path]:
    """Write the PNGs (and, for a model with trust parts, the trust markdown) beside the artifact, atomically."""
    assert trained.test is not None
    held_out = "validation" if trained.validation_accuracy is not None else "test"
    outputs = [
        (".confusion.png", confusion_png(trained.test.confusion, class_names)),
        (".curves.png", curves_png(trained.history, held_out)),
    ]
    if trained.trust is not None:
        reliability, markdown = trust_report(trained, data, quick)
        outputs += [(".reliability.png", reliability), (".trust.md", markdown.encode())]
    written = []
    for suffix, content in outputs:
        path = artifact_path.with_name(artifact_path.stem + suffix)
        write_atomically(path, content)
        written.append(path)
    return written


def _to_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
