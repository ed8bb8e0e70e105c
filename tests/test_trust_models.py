"""The artifact's trust parts on a really trained model: features format, calibration, the "not a garment"
score, reference outputs, and DeepLIFT maps checked against Captum on real test images."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

import models.preprocess
from models import (
    ArtifactError,
    NeuralNetwork,
    OODDetector,
    ReferenceMismatchError,
    Scorer,
    TrustParts,
    build_metadata,
    check_reference_outputs,
    explain,
    has_light_background,
    load_artifact,
    pixels_to_input,
    save_artifact,
)
from models.artifact import METADATA_KEY
from tests.conftest import DEBIAN_DATA, make_model
from training.data import Split, load_fashion_mnist
from training.trust import ClusterSettings, fit_ood_detector, outputs_of

pytestmark = pytest.mark.skipif(not DEBIAN_DATA.is_dir(), reason="dataset-fashion-mnist is not installed")
SMALL = ClusterSettings(hidden_centroids=64, pixel_centroids=64, images=4000, steps=4)


@pytest.fixture(scope="module")
def split(real_split: Split) -> Split:
    return real_split  # conftest's: one trained model for every suite that needs one


@pytest.fixture(scope="module")
def trained(trained_model: NeuralNetwork) -> NeuralNetwork:
    return trained_model


@pytest.fixture(scope="module")
def parts(trust_parts: TrustParts) -> TrustParts:
    return trust_parts


@pytest.fixture(scope="module")
def small_detector(trained: NeuralNetwork, split: Split) -> OODDetector:
    train, validation = outputs_of(trained, split.train_images), outputs_of(trained, split.validation_images)
    return fit_ood_detector(train, validation, clusters=SMALL)


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_fashion_mnist(DEBIAN_DATA)
    return data.test_images[:500], data.test_labels[:500]


def save(path: Path, model: NeuralNetwork, parts: TrustParts | None = None) -> Path:
    return save_artifact(path, model, build_metadata(model.state_dict(), parts=parts), parts)


def rewrite_metadata(path: Path, change: dict) -> None:
    """Edit the JSON header of an artifact as another writer (older, newer, or hostile) would have made it."""
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as reader:
        metadata = json.loads(reader.metadata()[METADATA_KEY])
    metadata.update(change)
    path.write_bytes(safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(metadata)}))


# --- one format, with features ------------------------------------------------------------------


def test_artifact_round_trips_every_trust_part(tmp_path: Path, trained: NeuralNetwork, parts: TrustParts) -> None:
    loaded = load_artifact(save(tmp_path / "m.safetensors", trained, parts))
    assert loaded.metadata.features == ["calibration", "ood", "reference_outputs"]
    assert loaded.metadata.format_version == 2
    assert loaded.calibrated and loaded.has_ood_detector
    assert loaded.parts.calibration == parts.calibration
    assert parts.ood is not None and loaded.parts.ood is not None
    assert loaded.parts.ood.threshold == parts.ood.threshold
    for ours, theirs in zip(loaded.parts.ood.components, parts.ood.components, strict=True):
        assert (ours.kind, ours.center, ours.spread) == (theirs.kind, theirs.center, theirs.spread)
        assert all(torch.equal(ours.tensors[name], theirs.tensors[name]) for name in theirs.tensors)
    assert loaded.metadata.weights_sha256 == build_metadata(trained.state_dict()).weights_sha256  # weights only
    assert list(loaded.model.state_dict()) == list(NeuralNetwork().state_dict())


def test_artifact_naming_an_unknown_feature_is_refused(tmp_path: Path, trained: NeuralNetwork) -> None:
    path = save(tmp_path / "m.safetensors", trained)
    rewrite_metadata(path, {"features": ["calibration", "drift_baseline"]})
    with pytest.raises(ArtifactError, match="needs features this build does not support: drift_baseline") as info:
        load_artifact(path)
    assert "upgrade fashion-serve" in str(info.value)


def test_artifact_naming_a_feature_without_its_data_is_refused(tmp_path: Path, trained: NeuralNetwork) -> None:
    path = save(tmp_path / "m.safetensors", trained)
    rewrite_metadata(path, {"features": ["ood"]})
    with pytest.raises(ArtifactError, match="a feature's data is not valid"):
        load_artifact(path)


def test_older_artifact_and_quickstart_pth_load_uncalibrated_without_detector(tmp_path: Path) -> None:
    model = make_model(7)
    path = save(tmp_path / "old.safetensors", model)
    for key in ("features", "extras_sha256", "calibration", "ood", "reference_outputs", "validation_accuracy"):
        rewrite_metadata(path, {key: None} if key == "extras_sha256" else {})
    rewrite_metadata(path, {"format_version": 1})
    torch.save(model.state_dict(), tmp_path / "model.pth")
    for loaded in (load_artifact(path), load_artifact(tmp_path / "model.pth")):
        assert not loaded.calibrated and not loaded.has_ood_detector and loaded.parts.reference is None
        scores = Scorer(loaded.model).score(torch.zeros(2, 28, 28, dtype=torch.uint8))
        assert scores.ood_score is None and scores.in_distribution is None


def test_format_from_the_future_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "m.safetensors", make_model(8))
    rewrite_metadata(path, {"format_version": 3})
    with pytest.raises(ArtifactError, match="format version 3 is not supported"):
        load_artifact(path)


def test_flipped_byte_in_detector_tensors_is_refused(tmp_path: Path, trained: NeuralNetwork, parts: TrustParts) -> None:
    path = save(tmp_path / "m.safetensors", trained, parts)
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as reader:
        header = reader.metadata()
    tensors["extra.ood.0.centroids"][0, 0] += 1e-3
    path.write_bytes(safetensors.torch.save(tensors, metadata=header))
    with pytest.raises(ArtifactError, match="extra tensors checksum mismatch"):
        load_artifact(path)


def test_save_refuses_metadata_built_without_the_parts(
    tmp_path: Path, trained: NeuralNetwork, parts: TrustParts
) -> None:
    with pytest.raises(ValueError, match="extras_sha256"):
        save_artifact(tmp_path / "m.safetensors", trained, build_metadata(trained.state_dict()), parts)
    assert not (tmp_path / "m.safetensors").exists()


# --- calibration and the scorer -----------------------------------------------------------------


def test_scorer_applies_temperature_and_keeps_every_argmax(
    trained: NeuralNetwork, parts: TrustParts, test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, _ = test_images
    assert parts.calibration is not None
    scores = Scorer(trained, parts.calibration, parts.ood).score(images)
    logits = trained(pixels_to_input(images)).detach()
    torch.testing.assert_close(scores.probabilities, torch.softmax(logits / parts.calibration.temperature, 1))
    assert torch.equal(scores.probabilities.argmax(1), logits.argmax(1))
    assert parts.calibration.details["validation_nll_after"] < parts.calibration.details["validation_nll_before"]


def test_threshold_passes_the_stated_share_of_validation_garments(
    trained: NeuralNetwork, split: Split, small_detector: OODDetector
) -> None:
    detector = small_detector
    scores = Scorer(trained, None, detector).score(split.validation_images)
    assert scores.in_distribution is not None and scores.ood_score is not None
    assert abs(float(scores.in_distribution.double().mean()) - 0.95) < 0.002
    assert torch.equal(scores.in_distribution, scores.ood_score <= detector.threshold)


def test_ood_score_flags_noise_and_flat_fields_and_passes_garments(
    trained: NeuralNetwork, small_detector: OODDetector, test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    scorer = Scorer(trained, None, small_detector)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8, generator=generator)
    flat = torch.arange(0, 250, 5, dtype=torch.uint8)[:, None, None].expand(50, 28, 28)
    for others in (noise, flat):
        assert not scorer.score(others).in_distribution.any()  # type: ignore[union-attr]
    passed = scorer.score(test_images[0]).in_distribution
    assert passed is not None and 0.90 < float(passed.double().mean()) < 0.99


# --- reference outputs ----------------------------------------------------------------------------


def test_reloaded_artifact_reproduces_its_reference_outputs(
    tmp_path: Path, trained: NeuralNetwork, parts: TrustParts
) -> None:
    loaded = load_artifact(save(tmp_path / "m.safetensors", trained, parts))
    reference = loaded.parts.reference
    assert reference is not None and len(reference.pixels) == 12 and reference.ood_scores is not None
    scorer = Scorer(loaded.model, loaded.parts.calibration, loaded.parts.ood)
    threads = torch.get_num_threads()
    try:
        for count in {1, threads}:  # another BLAS split of the sums moves only the last bits
            torch.set_num_threads(count)
            assert check_reference_outputs(scorer, reference) < 1e-5
    finally:
        torch.set_num_threads(threads)


def test_reference_check_catches_a_training_serving_mismatch(
    trained: NeuralNetwork, parts: TrustParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parts.reference is not None and parts.calibration is not None
    no_temperature = Scorer(trained, None, parts.ood)
    with pytest.raises(ReferenceMismatchError, match="probabilities differ"):
        check_reference_outputs(no_temperature, parts.reference)
    other_weights = make_model(9)
    with pytest.raises(ReferenceMismatchError):
        check_reference_outputs(Scorer(other_weights, parts.calibration, parts.ood), parts.reference)
    # Preprocessing that scales by 1/256 instead of 1/255: a one-byte slip in the pipeline.
    monkeypatch.setattr("models.trust.pixels_to_input", lambda p: p.reshape(-1, 1, 28, 28).float() / 256)
    with pytest.raises(ReferenceMismatchError):
        check_reference_outputs(Scorer(trained, parts.calibration, parts.ood), parts.reference)


# --- explanations ---------------------------------------------------------------------------------


def test_deeplift_maps_sum_to_the_logit_change_from_black(
    trained: NeuralNetwork, test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images = test_images[0][:64]
    explanation = explain(trained, images)
    logits = trained(pixels_to_input(images)).detach()
    black = trained(torch.zeros(1, 1, 28, 28)).detach()[0]
    expected = logits.gather(1, explanation.target[:, None])[:, 0] - black[explanation.target]
    assert torch.equal(explanation.target, logits.argmax(1))
    torch.testing.assert_close(explanation.logit_change, expected)
    relative = (explanation.attributions.sum((1, 2)) - expected).abs() / expected.abs()
    assert float(relative.max()) < 0.01


def test_deeplift_matches_captum_and_is_deterministic(
    trained: NeuralNetwork, test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from captum.attr import DeepLift

    images, labels = test_images[0][:32], test_images[1][:32]
    ours = explain(trained, images, target=labels)  # explain the true class, not only the predicted one
    x = pixels_to_input(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks on the ReLUs: expected here
        theirs = DeepLift(trained).attribute(x, baselines=torch.zeros_like(x), target=labels).detach()[:, 0]
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours.attributions, theirs, rtol=0, atol=1e-5 * scale)
    again = explain(trained, images, target=labels)
    assert torch.equal(again.attributions, ours.attributions)


# --- the auto-invert rule, one copy for the server to import -------------------------------------


def test_has_light_background_is_the_servers_rule() -> None:
    from app.imaging.fit import has_light_background as servers

    generator = torch.Generator().manual_seed(5)
    for width, height in ((28, 28), (20, 28), (28, 13), (1, 5), (3, 1)):
        for level in (0, 100, 127, 128, 200, 255):
            image = torch.full((height, width), level, dtype=torch.uint8).numpy().tobytes()
            assert has_light_background(image, width) == servers(image, width) == (level > 127)
        noisy = torch.randint(0, 256, (height, width), dtype=torch.uint8, generator=generator).numpy().tobytes()
        assert has_light_background(noisy, width) == servers(noisy, width)
    assert models.preprocess.has_light_background is has_light_background is servers  # one copy


def test_replace_keeps_calibration_valid(parts: TrustParts) -> None:
    assert parts.calibration is not None
    with pytest.raises(ValueError, match="finite number above 0"):
        replace(parts.calibration, temperature=0.0)
