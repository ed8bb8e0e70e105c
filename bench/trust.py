"""The trust figures of a trained artifact, measured once: writes bench/TRUST.md and docs/trust-*.png.

    .venv/bin/python bench/trust.py --model artifacts/model.safetensors [--threads 1]

- Calibration on the test set: ECE (15 equal-width top-label bins) and NLL without and with the stored
  temperature, with 95% bootstrap intervals, against the best single temperature for the test set.
- "Not a garment": every candidate score the detector was chosen from (max-softmax, energy, a
  Mahalanobis distance on the last hidden layer, input statistics, each component alone, and the
  stored combination), each thresholded so 95% of the validation garments pass, on the five kinds
  of evaluation images and on the held-aside ones, measured as /predict sees them (auto-invert).
- Cost: Scorer.score against the plain forward pass (what Predictor.predict runs), and DeepLIFT
  maps, per batch on one thread; and how far float32 rounding moves the reference outputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from models import CLASS_NAMES, Scorer, check_reference_outputs, explain, load_artifact, pixels_to_input
from training.data import load_fashion_mnist, split_validation
from training.measure import auroc, measure_calibration, measure_ood
from training.ood_sets import KINDS, SPLITS, make_ood_set
from training.report import reliability_png, trust_markdown
from training.trust import PASS_RATE, Outputs, outputs_of

REPORT = Path(__file__).with_name("TRUST.md")
DOCS = Path(__file__).resolve().parent.parent / "docs"
SET_SIZE = 1000
Candidate = Callable[[Outputs], torch.Tensor]


def mahalanobis_hidden(train: Outputs, labels: torch.Tensor) -> Candidate:
    """Lee et al. (2018): class means of the last hidden layer, one shared covariance; the nearest class."""
    means = torch.stack([train.hidden[labels == k].mean(0) for k in range(10)])
    centred = (train.hidden - means[labels]).double()
    covariance = centred.T @ centred / len(centred)
    covariance += 1e-3 * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=torch.float64)
    whiten = torch.linalg.cholesky(torch.linalg.inv(covariance)).float()
    return lambda o: torch.cdist(o.hidden @ whiten, means @ whiten).square().amin(1)


def candidates(scorer: Scorer, train: Outputs, train_labels: torch.Tensor) -> dict[str, Candidate]:
    assert scorer.ood is not None
    found: dict[str, Candidate] = {
        "max-softmax": lambda o: -torch.softmax(o.logits, 1).amax(1),
        "energy": lambda o: -torch.logsumexp(o.logits, 1),
        "Mahalanobis, last hidden layer": mahalanobis_hidden(train, train_labels),
    }
    for component in scorer.ood.components:
        found[f"{component.kind} alone"] = lambda o, c=component: c(o.pixels, o.hidden)
    found["stored detector (max of the four)"] = lambda o: scorer.ood(o.pixels, o.hidden)  # type: ignore[misc]
    return found


def candidate_table(found: dict[str, Candidate], validation: Outputs, test: Outputs, sets: dict) -> list[str]:
    header = " | ".join(f"{kind} ({split[:4]})" for split in SPLITS for kind in KINDS)
    lines = [
        f"| score | test garments flagged | {header} |",
        "|---|---:|" + "---:|" * len(KINDS) * len(SPLITS),
    ]
    for name, score in found.items():
        threshold = score(validation).quantile(PASS_RATE)
        garments = score(test)
        cells = []
        for split in SPLITS:
            for kind in KINDS:
                others = score(sets[kind, split])
                cells.append(f"{auroc(garments, others):.3f} / {float((others > threshold).double().mean()):.0%}")
        lines.append(f"| {name} | {float((garments > threshold).double().mean()):.1%} | {' | '.join(cells)} |")
    return lines


def ood_png(scorer: Scorer, test_images: torch.Tensor, images: dict[tuple[str, str], torch.Tensor]) -> bytes:
    """Histograms of ood_score: real test garments against each kind (evaluation sets), with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert scorer.ood is not None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    bins = torch.linspace(-2, 12, 71).tolist()
    garments = scorer.score(test_images).ood_score
    assert garments is not None
    ax.hist(garments.clamp(-2, 12).tolist(), bins=bins, density=True, alpha=0.6, label="test garments")
    for kind in KINDS:
        scores = scorer.score(images[kind, "evaluation"]).ood_score
        assert scores is not None
        ax.hist(scores.clamp(-2, 12).tolist(), bins=bins, density=True, histtype="step", linewidth=1.5, label=kind)
    ax.axvline(scorer.ood.threshold, color="black", linestyle="--", label="threshold (95% of validation garments)")
    ax.set(xlabel="ood_score (clipped to [-2, 12])", ylabel="density", title="Not a garment: ood_score by kind")
    ax.legend()
    return _png(fig)


def explanations_png(scorer: Scorer, pixels: torch.Tensor) -> bytes:
    """Each image above its DeepLIFT map for the predicted class (red: towards the class, blue: against)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    explanation = explain(scorer.model, pixels)
    fig, axes = plt.subplots(2, len(pixels), figsize=(1.3 * len(pixels), 3), dpi=100)
    for column, (image, attribution) in enumerate(zip(pixels, explanation.attributions, strict=True)):
        limit = float(attribution.abs().max()) or 1.0
        axes[0, column].imshow(image.numpy(), cmap="gray", vmin=0, vmax=255)
        axes[1, column].imshow(attribution.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
        axes[0, column].set_title(CLASS_NAMES[int(explanation.target[column])], fontsize=7)
        for row in (0, 1):
            axes[row, column].axis("off")
    return _png(fig)


def _png(fig: object) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(buffer, format="png")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buffer.getvalue()


def sample_lines(scorer: Scorer) -> list[str]:
    """The web page's ten sample images, as the server sees them (grayscale, auto-invert), scored."""
    import numpy as np
    from PIL import Image

    from models import has_light_background

    lines = []
    for path in sorted((Path(__file__).resolve().parent.parent / "app/static/samples").glob("*.png")):
        gray = np.asarray(Image.open(path).convert("L").resize((28, 28)), dtype=np.uint8)
        if has_light_background(gray.tobytes(), 28):
            gray = 255 - gray
        scores = scorer.score(torch.from_numpy(gray.copy())[None])
        assert scores.ood_score is not None and scores.in_distribution is not None
        verdict = "passes" if bool(scores.in_distribution[0]) else "FLAGGED"
        lines.append(f"- `{path.name}`: ood_score {float(scores.ood_score[0]):.3f}, {verdict}")
    return lines


def per_batch_ms(run: Callable[[], object], repeats: int = 30) -> float:
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def cost_lines(scorer: Scorer, images: torch.Tensor) -> list[str]:
    def plain(batch: torch.Tensor) -> Callable[[], object]:
        return lambda: torch.softmax(scorer.model(pixels_to_input(batch)), 1)

    lines = ["| batch | plain forward + softmax | Scorer.score | extra | DeepLIFT maps |", "|---:|---:|---:|---:|---:|"]
    with torch.inference_mode():
        for size in (1, 8, 64, 256):
            batch = images[:size]
            base, scored = per_batch_ms(plain(batch)), per_batch_ms(lambda b=batch: scorer.score(b))
            maps = per_batch_ms(lambda b=batch: explain(scorer.model, b))
            lines.append(f"| {size} | {base:.3f} ms | {scored:.3f} ms | +{scored - base:.3f} ms | {maps:.3f} ms |")
    return lines


def reference_lines(artifact_path: Path) -> list[str]:
    """How far the reference outputs move under float32 rounding: other thread counts, and float64 arithmetic."""
    artifact = load_artifact(artifact_path)
    parts = artifact.parts
    assert parts.reference is not None
    threads = torch.get_num_threads()
    lines = []
    for count in sorted({1, 2, threads}):
        torch.set_num_threads(count)
        worst = check_reference_outputs(Scorer(artifact.model, parts.calibration, parts.ood), parts.reference)
        lines.append(f"- float32, {count} thread(s): largest probability difference {worst:.2e}")
    torch.set_num_threads(threads)
    wide = Scorer(artifact.model.double(), parts.calibration, parts.ood)
    with torch.inference_mode():
        flat = pixels_to_input(parts.reference.pixels).double().flatten(1)
        logits, _ = wide.logits_and_hidden(flat)
        probabilities = torch.softmax(logits / wide.temperature, 1)
    difference = float((probabilities - parts.reference.probabilities.double()).abs().max())
    lines.append(f"- float64 arithmetic: largest probability difference {difference:.2e}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("artifacts/model.safetensors"), help="a trained artifact")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the cost figures")
    parser.add_argument("--out", type=Path, default=REPORT, help="the markdown report to write")
    args = parser.parse_args(argv)
    artifact = load_artifact(args.model)
    parts = artifact.parts
    if parts.calibration is None or parts.ood is None:
        parser.error(f"{args.model} has no calibration or detector; train one with `python -m training`")
    data = load_fashion_mnist()
    split = split_validation(data, int(artifact.metadata.validation_split.get("size", 5000)))
    model = artifact.model
    train, validation, test = (
        outputs_of(model, x) for x in (split.train_images, split.validation_images, data.test_images)
    )
    images = {(kind, s): make_ood_set(kind, s, SET_SIZE) for s in SPLITS for kind in KINDS}
    sets = {key: outputs_of(model, batch) for key, batch in images.items()}
    scorer = Scorer(model, parts.calibration, parts.ood)
    calibration = measure_calibration(test, data.test_labels, parts.calibration.temperature)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "trust-reliability.png").write_bytes(reliability_png(calibration))
    (DOCS / "trust-ood.png").write_bytes(ood_png(scorer, data.test_images, images))
    firsts = [int((data.test_labels == label).nonzero()[0, 0]) for label in range(10)]
    (DOCS / "trust-explanations.png").write_bytes(explanations_png(scorer, data.test_images[firsts]))
    flagged, kinds = measure_ood(scorer, data.test_images, images)
    torch.set_num_threads(args.threads)
    command = "python bench/trust.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [
        "# Trust figures: calibration, the not-a-garment score, their cost",
        "",
        f"Written by `{command.strip()}` on {datetime.now(UTC).isoformat(timespec='seconds')} for "
        f"`{args.model}` (weights sha256 {artifact.metadata.weights_sha256[:12]}, validation accuracy "
        f"{artifact.metadata.validation_accuracy}, test accuracy {artifact.metadata.test_accuracy}).",
        "",
        trust_markdown(calibration, flagged, kinds),
        "## The candidates, each with its threshold at 95% of validation garments",
        "",
        f"Cells: AUROC against the test garments / share flagged; {SET_SIZE} images per kind and set.",
        "",
        *candidate_table(candidates(scorer, train, split.train_labels), validation, test, sets),
        "",
        "## The web page's sample images",
        "",
        *sample_lines(scorer),
        "",
        f"## Cost per batch, {args.threads} thread(s) (median of 30)",
        "",
        *cost_lines(scorer, data.test_images),
        "",
        "## Reference outputs under float rounding",
        "",
        *reference_lines(args.model),
        "",
    ]
    args.out.write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
