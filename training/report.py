"""What a person reads after training: a per-class table, a confusion matrix and learning curves."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt
import torch

from models import write_atomically
from training.train import EpochStats


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


def curves_png(history: list[EpochStats]) -> bytes:
    epochs = [s.epoch for s in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    # Train figures are running means over the epoch, on augmented batches with label smoothing
    # (which keeps the loss above ~0.5); test figures are the plain loss after the epoch.
    loss_ax.plot(epochs, [s.train_loss for s in history], label="train (running, label-smoothed)")
    loss_ax.plot(epochs, [s.test_loss for s in history], label="test")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc_ax.plot(epochs, [s.train_accuracy for s in history], label="train (running)")
    acc_ax.plot(epochs, [s.test_accuracy for s in history], label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return _to_png(fig)


def write_report(
    artifact_path: Path, confusion: torch.Tensor, history: list[EpochStats], class_names: list[str]
) -> list[Path]:
    """Write the PNGs beside the artifact, each atomically; return their paths."""
    written = []
    for suffix, data in (
        (".confusion.png", confusion_png(confusion, class_names)),
        (".curves.png", curves_png(history)),
    ):
        path = artifact_path.with_name(artifact_path.stem + suffix)
        write_atomically(path, data)
        written.append(path)
    return written


def _to_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
