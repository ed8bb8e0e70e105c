"""python -m training.refit: new trust parts for a trained artifact, its weights and training figures kept."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from models import (
    NeuralNetwork,
    Scorer,
    TrustParts,
    build_metadata,
    check_reference_outputs,
    load_artifact,
    save_artifact,
)
from tests.conftest import DEBIAN_DATA
from training.data import Split
from training.refit import main as refit_main

pytestmark = pytest.mark.skipif(not DEBIAN_DATA.is_dir(), reason="dataset-fashion-mnist is not installed")


def trained_with_split(path: Path, model: NeuralNetwork, split: Mapping[str, object], parts: TrustParts) -> Path:
    metadata = build_metadata(
        model.state_dict(),
        parts=parts,
        test_accuracy=0.81,
        validation_accuracy=0.8,
        validation_split=split,
        training_config={"recipe": "default", "epochs": 2},
    )
    return save_artifact(path, model, metadata, parts)


def test_refit_keeps_the_weights_and_figures_and_fits_new_parts(
    tmp_path: Path, trained_model: NeuralNetwork, real_split: Split
) -> None:
    source = trained_with_split(tmp_path / "model.safetensors", trained_model, real_split.description, TrustParts())
    out = tmp_path / "refitted.safetensors"
    assert refit_main([str(source), "--out", str(out), "--quick", "--no-report"]) == 0
    before, after = load_artifact(source), load_artifact(out)
    assert not before.has_ood_detector and after.calibrated and after.has_ood_detector
    assert after.metadata.weights_sha256 == before.metadata.weights_sha256
    for name in ("test_accuracy", "validation_accuracy", "validation_split", "training_config"):
        assert getattr(after.metadata, name) == getattr(before.metadata, name)
    assert after.parts.ood is not None and after.parts.reference is not None
    scales = after.metadata.ood["scale_quantiles"]
    assert scales["pixel_deviation"] > scales["hidden_centroids"]  # this build's fitting, recorded for people
    check_reference_outputs(Scorer(after.model, after.parts.calibration, after.parts.ood), after.parts.reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "refitted.safetensors"]


def test_refit_refuses_an_artifact_without_a_recorded_split(
    tmp_path: Path, trained_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = trained_artifact.read_bytes()
    assert refit_main([str(trained_artifact), "--quick", "--no-report"]) == 2
    assert "records no validation split" in capsys.readouterr().err
    assert trained_artifact.read_bytes() == before


def test_refit_refuses_a_split_it_cannot_rebuild(
    tmp_path: Path, trained_model: NeuralNetwork, real_split: Split, capsys: pytest.CaptureFixture[str]
) -> None:
    other = dict(real_split.description, indices_sha256="0" * 64)
    source = trained_with_split(tmp_path / "model.safetensors", trained_model, other, TrustParts())
    assert refit_main([str(source), "--quick", "--no-report"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert not load_artifact(source).has_ood_detector


def test_refit_of_a_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert refit_main([str(tmp_path / "absent.safetensors")]) == 2
    assert "could not refit" in capsys.readouterr().err
    assert not (tmp_path / "absent.safetensors").exists()
