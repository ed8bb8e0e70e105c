"""The tutorial recipe against the default recipe, on this machine, in one run; writes bench/TRAINING.md.

    .venv/bin/python bench/training.py [--repeats 3] [--threads N]

Both are timed the same way: from just after the dataset files are read (excluded for both) to the
end of training, including building the model, any preprocessing, the tutorial's per-batch
DataLoader/ToTensor work, and the per-epoch evaluation (the tutorial, as written, on the 10,000
test images; the default recipe on its 5,000 validation images). The default recipe trains on the
55,000 images left after the fixed validation split; the tutorial on all 60,000. Both are then
measured once on the test set. Pairs run back to back, tutorial then default, so both see the same
machine load; the figures are per-pair and medians. Exit status 1 when the acceptance (>= 90.0 %,
<= 0.8 x the tutorial's time) is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from models import pixels_to_input, resolve_device
from training.data import load_fashion_mnist, split_validation
from training.train import TrainConfig, evaluate, fit, fit_tutorial, resolve_precision

MIN_ACCURACY = 0.900
MAX_TIME_RATIO = 0.8
REPORT = Path(__file__).with_name("TRAINING.md")


@dataclass
class Pair:
    tutorial_accuracy: float
    tutorial_seconds: float
    default_accuracy: float
    default_seconds: float
    default_validation_accuracy: float
    load_before: float  # 1-minute load average when the pair started: other work on the machine

    @property
    def ratio(self) -> float:
        return self.default_seconds / self.tutorial_seconds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_pair(data, device: torch.device, config: TrainConfig, index: int) -> Pair:  # type: ignore[no-untyped-def]
    load = os.getloadavg()[0]
    tutorial = fit_tutorial(data.root, device, seed=config.seed)
    print(f"  pair {index}: tutorial {100 * tutorial.final.accuracy:.2f}% in {tutorial.seconds:.1f} s", flush=True)
    split = split_validation(data)
    default = fit(
        split.train_images, split.train_labels, split.validation_images, split.validation_labels, config, device,
        show_progress=False,
    )  # fmt: skip
    test = evaluate(default.model, pixels_to_input(data.test_images), data.test_labels)  # measured once
    print(
        f"  pair {index}: default  {100 * test.accuracy:.2f}% (validation {100 * default.final.accuracy:.2f}%) "
        f"in {default.seconds:.1f} s",
        flush=True,
    )
    return Pair(tutorial.final.accuracy, tutorial.seconds, test.accuracy, default.seconds, default.final.accuracy, load)


def markdown(pairs: list[Pair], config: TrainConfig, device: torch.device, command: str) -> str:
    med = Pair(
        statistics.median(p.tutorial_accuracy for p in pairs),
        statistics.median(p.tutorial_seconds for p in pairs),
        statistics.median(p.default_accuracy for p in pairs),
        statistics.median(p.default_seconds for p in pairs),
        statistics.median(p.default_validation_accuracy for p in pairs),
        statistics.median(p.load_before for p in pairs),
    )
    ratio = statistics.median(p.ratio for p in pairs)
    lines = [
        "# Training benchmark: the quickstart's recipe against ours",
        "",
        f"Written by `{command}` on {datetime.now(UTC).isoformat(timespec='seconds')}.",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, device {device}, "
        f"training precision {resolve_precision(config.precision, device)}; torch {torch.__version__}, "
        f"Python {platform.python_version()}.",
        "",
        "Wall time: from just after the dataset files are read (excluded for both) to the end of training, "
        "including model set-up, preprocessing, and the evaluation on the 10,000 test images after every epoch. "
        "Each pair runs the tutorial, then the default recipe, back to back. 'load before' is the 1-minute "
        "load average as the pair started: above the core count, other work was competing and times stretch.",
        "",
        "| pair | load before | tutorial accuracy | tutorial time | default accuracy (validation) | default time "
        "| time ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, p in enumerate(pairs, 1):
        lines.append(
            f"| {i} | {p.load_before:.1f} | {p.tutorial_accuracy:.2%} | {p.tutorial_seconds:.1f} s "
            f"| {p.default_accuracy:.2%} ({p.default_validation_accuracy:.2%}) | {p.default_seconds:.1f} s "
            f"| {p.ratio:.2f} |"
        )
    lines.append(
        f"| **median** | {med.load_before:.1f} | **{med.tutorial_accuracy:.2%}** | **{med.tutorial_seconds:.1f} s** "
        f"| **{med.default_accuracy:.2%}** ({med.default_validation_accuracy:.2%}) | **{med.default_seconds:.1f} s** "
        f"| **{ratio:.2f}** |"
    )
    passed = med.default_accuracy >= MIN_ACCURACY and ratio <= MAX_TIME_RATIO
    lines += [
        "",
        f"Acceptance (default >= {MIN_ACCURACY:.1%} and time <= {MAX_TIME_RATIO} x the tutorial's): "
        f"**{'met' if passed else 'NOT met'}**.",
        "",
        "Tutorial: the PyTorch quickstart as written (DataLoader + ToTensor, batch 64, SGD lr 1e-3, 5 epochs, "
        "all 60,000 training images). Default: trained on the 55,000 left after the fixed 5,000-image validation "
        "split; accuracy is on the 10,000 test images, measured once after training, validation in brackets.",
        f"Default: `{config}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="tutorial/default pairs to run (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPORT, help="the markdown report to write")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    config = TrainConfig(seed=args.seed)
    data = load_fashion_mnist()
    print(f"benchmarking on {device} ({cpu_name()}, {torch.get_num_threads()} threads), {args.repeats} pair(s)")
    pairs = [run_pair(data, device, config, i) for i in range(1, args.repeats + 1)]
    command = "python bench/training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(pairs, config, device, command.strip())
    args.out.write_text(report)
    print()
    print(report)
    ratio = statistics.median(p.ratio for p in pairs)
    accuracy = statistics.median(p.default_accuracy for p in pairs)
    return 0 if accuracy >= MIN_ACCURACY and ratio <= MAX_TIME_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
