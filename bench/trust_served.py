"""The trust acceptance figures, measured as a client sees them: every image through POST /predict of a real server.

    .venv/bin/python bench/trust_served.py [--model artifacts/model.safetensors]

A real uvicorn (one worker) serves the artifact; the whole official test set
goes up as PNG uploads in batches of 64, and so do the five kinds of non-garment images (evaluation and
held-aside variants, training/ood_sets.py) and the web page's ten samples. From the answers alone:

- calibration: ECE (15 equal-width top-label bins) and NLL of the served probabilities, against the best single
  temperature chosen on the test set itself (applied to the served log-probabilities) and against the
  uncalibrated model (temperature 1: the served log-probabilities times the stored temperature); argmax unchanged;
- "not a garment": AUROC of the served ``ood_score`` per kind against the test garments, the share of each kind
  flagged (``in_distribution`` false), the share of test garments flagged, and the samples flagged;
- explanations: the server process's CPU time for a 64-image request with ``explain=true`` against without
  (mean of 30 interleaved pairs).

Results go to the "Trust, through /predict" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import results_file  # noqa: E402  (bench/ is a folder of scripts, not a package)

from models import CLASS_NAMES, load_artifact  # noqa: E402
from tests.conftest import free_port, serve_process  # noqa: E402  (the tests' one way to start a server)
from training.data import load_fashion_mnist  # noqa: E402
from training.measure import auroc, expected_calibration_error  # noqa: E402
from training.ood_sets import KINDS, SPLITS, make_ood_set  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SAMPLES = ROOT / "app" / "static" / "samples"
BATCH = 64
SET_SIZE = 1000


def png(pixels: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def post(client: httpx.Client, files: list[bytes], query: str = "") -> list[dict[str, object]]:
    parts = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)]
    response = client.post("/predict" + query, files=parts)
    response.raise_for_status()
    predictions: list[dict[str, object]] = response.json()["predictions"]
    return predictions


def served(client: httpx.Client, images: list[bytes]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities (N, 10), ood_score (N,), in_distribution (N,)) as the server answered them."""
    rows: list[list[float]] = []
    scores: list[float] = []
    flags: list[bool] = []
    for start in range(0, len(images), BATCH):
        for p in post(client, images[start : start + BATCH]):
            rows.append([p["probabilities"][name] for name in CLASS_NAMES])  # type: ignore[index]
            scores.append(float(p["ood_score"]))  # type: ignore[arg-type]
            flags.append(bool(p["in_distribution"]))
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(scores), torch.tensor(flags)


def calibration_lines(probabilities: torch.Tensor, labels: torch.Tensor, temperature: float) -> list[str]:
    log_p = probabilities.clamp_min(1e-30).log()  # the served logits / T, up to a constant per row

    def at(scale: float) -> torch.Tensor:  # the probabilities had the logits been divided by T / scale
        return torch.softmax(log_p * scale, dim=1)

    def nll(p: torch.Tensor) -> float:
        return float(-p.gather(1, labels[:, None]).clamp_min(1e-30).log().mean())

    scales = torch.linspace(0.3, 3.0, 541).tolist()
    best = min(scales, key=lambda s: expected_calibration_error(at(s), labels))
    raw = at(temperature)  # temperature 1: the model as it was before calibration
    rows = [("uncalibrated (T = 1)", raw), (f"served (T = {temperature:.3f})", probabilities),
            (f"best single T for the test set (T = {temperature / best:.3f})", at(best))]  # fmt: skip
    lines = ["| probabilities | ECE | NLL | accuracy |", "|---|---|---|---|"]
    for name, p in rows:
        accuracy = float((p.argmax(1) == labels).double().mean())
        lines.append(f"| {name} | {expected_calibration_error(p, labels):.2%} | {nll(p):.4f} | {accuracy:.2%} |")
    same = bool((raw.argmax(1) == probabilities.argmax(1)).all())
    lines += [
        "",
        f"Every argmax unchanged by calibration: **{'yes' if same else 'NO'}** ({len(labels):,} test images).",
    ]
    return lines


def ood_lines(client: httpx.Client, garment_scores: torch.Tensor, garment_flags: torch.Tensor) -> list[str]:
    lines = ["| kind | set | AUROC against the test garments | flagged |", "|---|---|---|---|"]
    for split in SPLITS:
        for kind in KINDS:
            images = make_ood_set(kind, split, SET_SIZE)
            _, scores, flags = served(client, [png(p) for p in images])
            lines.append(
                f"| {kind} | {split} | {auroc(garment_scores, scores):.4f} | {float((~flags).double().mean()):.1%} |"
            )
    samples = sorted(SAMPLES.glob("*.png"))
    flags = [bool(p["in_distribution"]) for p in post(client, [path.read_bytes() for path in samples])]
    lines += [
        "",
        f"Test garments flagged: **{float((~garment_flags).double().mean()):.2%}** of {len(garment_flags):,}. "
        f"The page's {len(samples)} samples flagged: **{flags.count(False)}**.",
    ]
    return lines


def explain_lines(client: httpx.Client, server: psutil.Process, images: list[bytes]) -> list[str]:
    """The server process's CPU time (all its threads) for a 64-image request with and without maps.

    CPU time, not wall time: on a shared machine the wall clock measures the neighbours too. The kernel counts it
    in 10 ms ticks, so the figure is the mean over 30 interleaved pairs.
    """
    parts = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images[:BATCH])]
    plain: list[float] = []
    explained: list[float] = []
    for _ in range(30):
        for query, spent in (("", plain), ("?explain=true", explained)):
            before = sum(server.cpu_times()[:2])
            client.post("/predict" + query, files=parts).raise_for_status()
            spent.append((sum(server.cpu_times()[:2]) - before) * 1000)
    extra = statistics.mean(explained) - statistics.mean(plain)
    return [
        f"A {BATCH}-image request, the server's CPU time, mean of 30 interleaved pairs, one worker: "
        f"{statistics.mean(plain):.1f} ms without explanations, {statistics.mean(explained):.1f} ms with "
        f"`explain=true`: **{extra:+.1f} ms** (the maps, their heatmap PNGs and their JSON)."
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model.safetensors")
    args = parser.parse_args()
    artifact = load_artifact(args.model)
    if artifact.parts.calibration is None or artifact.parts.ood is None:
        raise SystemExit(f"{args.model} has no calibration or detector: train it with `python -m training`")
    data = load_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"))
    env = {"FASHION_MODEL_PATH": str(args.model), "FASHION_DEVICE": "cpu", "FASHION_TORCH_THREADS": "1",
           "FASHION_LOG_LEVEL": "warning", "FASHION_MAX_IMAGES_PER_REQUEST": str(BATCH)}  # fmt: skip
    port = free_port()
    command = ["-m", "uvicorn", "app.main:app", "--port", str(port), "--no-access-log"]
    with (
        serve_process("uvicorn", command, port, env, Path(tempfile.mkdtemp()), "/readyz") as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        test_pngs = [png(p) for p in data.test_images]
        probabilities, scores, flags = served(client, test_pngs)
        sections = calibration_lines(probabilities, data.test_labels, artifact.parts.calibration.temperature)
        sections += ["", *ood_lines(client, scores, flags), ""]
        sections += explain_lines(client, psutil.Process(server.process.pid), test_pngs)
    head = [f"Model {artifact.metadata.weights_sha256[:12]} ({args.model.name}); "
            f"`.venv/bin/python bench/trust_served.py --model {os.path.relpath(args.model, ROOT)}`.", ""]  # fmt: skip
    results_file.update(RESULTS, {"## Trust, through /predict": head + sections})
    print("\n".join(head + sections))


if __name__ == "__main__":
    main()
