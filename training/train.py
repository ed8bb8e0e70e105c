"""train_one_epoch / evaluate / fit on in-memory tensors, plus the quickstart's recipe for comparison."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from models import NUM_CLASSES, NeuralNetwork, pixels_to_input

OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 16
    batch_size: int = 256
    lr: float = 3e-3
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    hflip: bool = False
    precision: str = "auto"  # auto: bf16 autocast where the hardware has it, else fp32
    seed: int = 0
    max_batches: int | None = None  # --dry-run: a few batches per epoch, for smoke tests

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: torch.Tensor  # rows: true class, columns: predicted


@dataclass
class FitResult:
    model: NeuralNetwork
    history: list[EpochStats] = field(default_factory=list)
    final: Evaluation | None = None
    seconds: float = 0.0


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """bf16 autocast nearly halves a CPU step where the CPU has bf16 units; weights stay fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")


def train_one_epoch(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: TrainConfig,
    generator: torch.Generator,
    progress: tqdm | None = None,
) -> tuple[float, float]:
    """One shuffled pass; returns (mean loss, accuracy) over the examples seen."""
    model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    order = torch.randperm(len(inputs), generator=generator)
    batches = order.split(config.batch_size)[: config.max_batches]
    total_loss = correct = seen = 0.0
    use_bf16 = resolve_precision(config.precision, next(model.parameters()).device) == "bf16"
    started = time.perf_counter()
    for batch_index in batches:
        x = inputs[batch_index].to(next(model.parameters()).device, non_blocking=True)
        y = labels[batch_index].to(x.device, non_blocking=True)
        if config.hflip:
            # A mirrored garment is the same garment: flipping half the batch is free extra data.
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(
                loss=f"{total_loss / seen:.4f}",
                acc=f"{correct / seen:.3f}",
                img_s=f"{seen / (time.perf_counter() - started):,.0f}",
            )
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> Evaluation:
    model.eval()
    device = next(model.parameters()).device
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    total_loss = 0.0
    for x, y in zip(inputs.split(batch_size), labels.split(batch_size), strict=True):
        logits = model(x.to(device))
        total_loss += loss_fn(logits, y.to(device)).item()
        predicted = logits.argmax(1).cpu()
        confusion += torch.bincount(y * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2).view(NUM_CLASSES, -1)
    accuracy = confusion.diag().sum().item() / max(len(labels), 1)
    return Evaluation(loss=total_loss / max(len(labels), 1), accuracy=accuracy, confusion=confusion)


def per_class_accuracy(confusion: torch.Tensor, class_names: tuple[str, ...] | list[str]) -> dict[str, float]:
    totals = confusion.sum(1).clamp(min=1)
    return {name: round(float(confusion[i, i] / totals[i]), 4) for i, name in enumerate(class_names)}


def fit(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train a fresh NeuralNetwork with AdamW and a one-cycle schedule on preprocessed in-memory tensors."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = NeuralNetwork().to(device)
    # Preprocess once: the same function serving uses, so train and serve inputs cannot drift.
    train_x, test_x = pixels_to_input(train_images), pixels_to_input(test_images)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(train_x[:: config.batch_size][: config.max_batches or None])
    # One-cycle: a short warm-up then cosine annealing reaches a flatter minimum in few epochs.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.15
    )
    result = FitResult(model=model)
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not show_progress)
        with bar:
            loss, accuracy = train_one_epoch(model, train_x, train_labels, optimizer, scheduler, config, generator, bar)
        evaluation = evaluate(model, test_x, test_labels)
        stats = EpochStats(
            epoch, loss, accuracy, evaluation.loss, evaluation.accuracy, time.perf_counter() - epoch_started
        )
        result.history.append(stats)
        result.final = evaluation
        if on_epoch is not None:
            on_epoch(stats)
    result.seconds = time.perf_counter() - started
    return result


def fit_tutorial(
    data_root: Path,
    device: torch.device,
    epochs: int = 5,
    seed: int = 0,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """The quickstart, as written: ToTensor through a DataLoader (no shuffle), SGD lr 1e-3, batch 64."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import ToTensor

    torch.manual_seed(seed)
    training_data = FashionMNIST(root=str(data_root), train=True, download=False, transform=ToTensor())
    test_data = FashionMNIST(root=str(data_root), train=False, download=False, transform=ToTensor())
    train_dataloader = DataLoader(training_data, batch_size=64)
    test_dataloader = DataLoader(test_data, batch_size=64)
    model = NeuralNetwork().to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    result = FitResult(model=model)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        for x, y in train_dataloader:
            loss = loss_fn(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
        test_loss = 0.0
        with torch.no_grad():
            for x, y in test_dataloader:
                logits = model(x.to(device))
                test_loss += loss_fn(logits, y.to(device)).item() * len(y)
                predicted = logits.argmax(1).cpu()
                confusion += torch.bincount(y * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2).view(NUM_CLASSES, -1)
        accuracy = confusion.diag().sum().item() / len(test_data)
        result.final = Evaluation(loss=test_loss / len(test_data), accuracy=accuracy, confusion=confusion)
        result.history.append(
            EpochStats(
                epoch, float("nan"), float("nan"), result.final.loss, accuracy, time.perf_counter() - epoch_started
            )
        )
        if on_epoch is not None:
            on_epoch(result.history[-1])
    result.seconds = time.perf_counter() - started
    return result
