"""Refit a trained artifact's trust parts (temperature, "not a garment" detector, reference outputs) without
retraining its weights: what ``python -m training`` would have fitted for the same model with this build's code.

    python -m training.refit artifacts/model.safetensors [--out other.safetensors] [--no-report]

The weights, their digest and every training figure are kept; the validation split is rebuilt from the size and
seed the artifact records and must have the recorded digest, so the parts are fitted on the same images training
held out. Useful when the fitting changes (docs/trust.md) and retraining would change the model as well.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torchvision

from models import Artifact, ArtifactError, build_metadata, load_artifact, save_artifact, write_atomically
from training.data import DatasetError, FashionData, Split, load_fashion_mnist, split_validation
from training.report import trust_report
from training.train import Trained
from training.trust import FittedTrust, fit_trust_parts

log = logging.getLogger("training.refit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.refit", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="a trained artifact (default recipe: it records its split)")
    parser.add_argument("--out", type=Path, default=None, help="where to write it (default: replace the artifact)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the four FashionMNIST files")
    parser.add_argument("--no-report", action="store_true", help="skip <out>.trust.md and <out>.reliability.png")
    parser.add_argument("--quick", action="store_true", help="small clusters, as the trainer's --dry-run: a smoke test")
    return parser


def recorded_split(artifact: Artifact, data: FashionData) -> Split:
    """The validation split the artifact was trained beside, or ValueError when it cannot be rebuilt exactly."""
    recorded = artifact.metadata.validation_split
    if not recorded:
        raise ValueError("it records no validation split (a tutorial-recipe or older artifact): retrain it instead")
    split = split_validation(data, int(recorded["size"]), int(recorded["seed"]))
    if split.description.get("indices_sha256") != recorded.get("indices_sha256"):
        raise ValueError("its recorded validation split does not match the one rebuilt here")
    return split


def refit(artifact: Artifact, data: FashionData, out: Path, quick: bool = False) -> FittedTrust:
    """Fit the parts on the artifact's own split and write it to ``out`` with every other figure kept."""
    fitted = fit_trust_parts(artifact.model, recorded_split(artifact, data), quick=quick)
    old = artifact.metadata
    metadata = build_metadata(
        artifact.model.state_dict(),
        parts=fitted.parts,
        test_accuracy=old.test_accuracy,
        validation_accuracy=old.validation_accuracy,
        validation_split=old.validation_split,
        per_class_accuracy=old.per_class_accuracy,
        training_config=old.training_config,
        dataset_checksums=old.dataset_checksums,
        extra_versions={"torchvision": old.library_versions.get("torchvision", torchvision.__version__)},
    )
    save_artifact(out, artifact.model, metadata, fitted.parts)
    return fitted


def write_trust_report(out: Path, artifact: Artifact, fitted: FittedTrust, data: FashionData, quick: bool) -> None:
    trained = Trained(model=artifact.model, history=[], training_config={}, trust=fitted)
    reliability, markdown = trust_report(trained, data, quick)
    for suffix, content in ((".reliability.png", reliability), (".trust.md", markdown.encode())):
        write_atomically(out.with_name(out.stem + suffix), content)
        log.info("report: %s", out.with_name(out.stem + suffix))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    out = args.out or args.artifact
    try:
        artifact = load_artifact(args.artifact)
        data = load_fashion_mnist(args.data_dir)
        fitted = refit(artifact, data, out, args.quick)
    except (ArtifactError, DatasetError, ValueError, OSError) as exc:
        print(f"error: could not refit {args.artifact}: {exc}", file=sys.stderr)
        return 2
    log.info("trust parts refitted in %.1f s: %s; artifact %s", fitted.seconds, fitted.summary(), out)
    if not args.no_report:
        write_trust_report(out, artifact, fitted, data, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
