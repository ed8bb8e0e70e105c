"""The report's measures, taken once on the test set and on the non-garment sets: ECE and NLL with
bootstrap intervals, the reliability diagram's points, and per kind the AUROC and the share flagged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models import Scorer
from training.trust import ECE_BINS, Outputs, fit_temperature, nll

BOOTSTRAP_RESAMPLES = 1000
QUICK_RESAMPLES = 20


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the mean |accuracy - confidence| over equal-width confidence bins, weighted by their size."""
    confidence, predicted = probabilities.double().max(1)
    correct = (predicted == labels).double()
    index = (confidence * bins).long().clamp(max=bins - 1)  # confidence 1.0 belongs to the last bin
    counts = torch.bincount(index, minlength=bins).double()
    gap = torch.bincount(index, correct - confidence, minlength=bins).abs()
    return float(gap.sum() / counts.sum())


def reliability_bins(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty bin: the points of a reliability diagram."""
    confidence, predicted = probabilities.double().max(1)
    correct = (predicted == labels).double()
    index = (confidence * bins).long().clamp(max=bins - 1)
    rows = []
    for b in index.unique().tolist():
        chosen = index == b
        rows.append((float(confidence[chosen].mean()), float(correct[chosen].mean()), int(chosen.sum())))
    return rows


def bootstrap_interval(
    measure: Callable[[torch.Tensor], float], count: int, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``measure(indices)`` over ``resamples`` resamplings of ``count`` items."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([measure(torch.randint(0, count, (count,), generator=generator)) for _ in range(resamples)])
    low, high = torch.quantile(values.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return low, high


def auroc(garments: torch.Tensor, others: torch.Tensor) -> float:
    """The chance a random non-garment scores above a random garment (ties count half): Mann-Whitney U."""
    scores = torch.cat([garments, others]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores[order][1:][scores[order].diff() == 0].unique():  # average the ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_in, n_out = len(garments), len(others)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class CalibrationFigures:
    """ECE and NLL on the test set without and with the stored temperature, and with the best one for the test set."""

    temperature: float
    resamples: int
    test_best_temperature: float  # chosen on the test set itself: the bound no validation-fitted one can beat
    ece_before: Interval
    ece_after: Interval
    ece_test_best: float
    nll_before: Interval
    nll_after: Interval
    argmax_unchanged: bool
    bins_before: list[tuple[float, float, int]]
    bins_after: list[tuple[float, float, int]]


def _with_interval(measure: Callable[[torch.Tensor], float], count: int, resamples: int) -> Interval:
    low, high = bootstrap_interval(measure, count, resamples)
    return Interval(measure(torch.arange(count)), low, high)


def measure_calibration(
    test: Outputs, labels: torch.Tensor, temperature: float, quick: bool = False
) -> CalibrationFigures:
    resamples = QUICK_RESAMPLES if quick else BOOTSTRAP_RESAMPLES
    before, after = test.logits.double().softmax(1), (test.logits.double() / temperature).softmax(1)
    best = fit_temperature(test.logits, labels)
    count = len(labels)
    return CalibrationFigures(
        temperature=temperature,
        resamples=resamples,
        test_best_temperature=best,
        ece_before=_with_interval(lambda i: expected_calibration_error(before[i], labels[i]), count, resamples),
        ece_after=_with_interval(lambda i: expected_calibration_error(after[i], labels[i]), count, resamples),
        ece_test_best=expected_calibration_error((test.logits.double() / best).softmax(1), labels),
        nll_before=_with_interval(lambda i: nll(test.logits[i], labels[i]), count, resamples),
        nll_after=_with_interval(lambda i: nll(test.logits[i], labels[i], temperature), count, resamples),
        argmax_unchanged=bool(torch.equal(before.argmax(1), after.argmax(1))),
        bins_before=reliability_bins(before, labels),
        bins_after=reliability_bins(after, labels),
    )


@dataclass(frozen=True)
class KindFigures:
    kind: str
    split: str
    count: int
    auroc: float
    flagged: float  # share above the stored threshold


def measure_ood(
    scorer: Scorer, test_images: torch.Tensor, sets: dict[tuple[str, str], torch.Tensor]
) -> tuple[float, list[KindFigures]]:
    """(share of real test garments flagged, figures per (kind, split)) at the scorer's stored threshold."""
    garments = scorer.score(test_images)
    assert garments.ood_score is not None and garments.in_distribution is not None
    rows = []
    for (kind, split), images in sets.items():
        scores = scorer.score(images)
        assert scores.ood_score is not None and scores.in_distribution is not None
        flagged = float((~scores.in_distribution).double().mean())
        rows.append(KindFigures(kind, split, len(images), auroc(garments.ood_score, scores.ood_score), flagged))
    return float((~garments.in_distribution).double().mean()), rows
