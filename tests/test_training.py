"""The trainer: CLI argument checks, training-only tricks that leave the quickstart model, determinism, smoke run."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models import CLASS_NAMES, NeuralNetwork, has_light_background, load_artifact, pixels_to_input
from tests.conftest import DEBIAN_DATA
from training.__main__ import main
from training.data import FashionData, load_fashion_mnist, split_validation
from training.measure import auroc, expected_calibration_error
from training.ood_sets import KINDS, make_ood_set
from training.report import per_class_table
from training.train import Standardizer, TrainConfig, augment, fit
from training.trust import fit_temperature

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_TRICKS = TrainConfig(
    epochs=2, batch_size=64, hflip=True, shift=2, erase=0.5, ema=0.9, standardize=True, precision="fp32"
)


def synthetic_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )


def short_fit(config: TrainConfig) -> NeuralNetwork:
    train, test = synthetic_set(256, seed=1), synthetic_set(64, seed=2)
    return fit(*train, *test, config, torch.device("cpu"), show_progress=False).model


# --- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["--epochs", "ten"], "--epochs: expected a whole number, got 'ten'"),
        (["--batch-size", "-5"], "--batch-size: must be at least 1, got -5"),
        (["--lr", "0"], "--lr: must be greater than 0, got 0"),
        (["--lr", "nan"], "--lr: expected a finite number, got 'nan'"),
        (["--weight-decay", "-1"], "--weight-decay: must be 0 or more"),
        (["--label-smoothing", "1.5"], "--label-smoothing: must be at least 0 and below 1"),
        (["--ema", "1"], "--ema: must be at least 0 and below 1"),
        (["--shift", "20"], "--shift: must be 0 or more and at most 8 pixels, got 20"),
        (["--optimizer", "lbfgs"], "--optimizer: invalid choice: 'lbfgs'"),
        (["--recipe", "fast"], "--recipe: invalid choice: 'fast'"),
        (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
        (["--out", "model.pth"], "--out must end in .safetensors"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_cli_bad_argument_exits_2_with_message(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_out_is_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(SystemExit) as info:
        main(["--out", str(folder)])
    assert info.value.code == 2
    assert "is a directory" in capsys.readouterr().err


def test_cli_out_under_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path / "file" / "model.safetensors")])
    assert info.value.code == 2
    assert "a parent of it is a file" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_unavailable_device_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--device", "cuda"])
    assert info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_missing_dataset_exits_2_saying_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.safetensors"
    assert main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sudo apt-get install dataset-fashion-mnist" in err
    assert "--download" in err
    assert str(tmp_path / "nowhere") in err
    assert not out.exists()


@pytest.mark.slow
def test_module_entry_point_rejects_bad_argument_with_exit_2() -> None:
    """The real process, as a user runs it: non-zero exit, usage and the reason on stderr, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "training", "--batch-size", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "usage: python -m training" in done.stderr
    assert "--batch-size: must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_states_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"(default: {TrainConfig().epochs})" in out
    assert "--recipe {default,tutorial}" in out


# --- training-only tricks leave the quickstart's model --------------------------------------------


def test_standardizer_fold_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = NeuralNetwork()
    x = pixels_to_input(synthetic_set(32, seed=3)[0])
    standardizer = Standardizer.fit(pixels_to_input(synthetic_set(512, seed=4)[0]))
    before = model(standardizer(x))
    standardizer.fold_into(model)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_standardizer_centres_each_pixel_with_one_scale() -> None:
    x = pixels_to_input(synthetic_set(512, seed=4)[0])
    x[:, :, 0, 0] = 0  # a border pixel that is always background
    standardizer = Standardizer.fit(x)
    z = standardizer(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(1, 28, 28), rtol=0, atol=1e-5)
    assert torch.all(z[:, :, 0, 0] == 0)
    torch.testing.assert_close(z.std(), torch.tensor(1.0), rtol=0, atol=0.01)  # one scale: no pixel blown up


def test_augment_shift_moves_without_losing_interior_pixels() -> None:
    x = torch.zeros(16, 1, 28, 28)
    x[:, 0, 12:16, 12:16] = 1.0
    shifted = augment(x, TrainConfig(shift=2), torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.all(shifted.sum((1, 2, 3)) == 16)  # a 4x4 block two pixels from nowhere near an edge
    tops = [int(img[0].nonzero()[:, 0].min()) for img in shifted]
    assert set(tops) <= {10, 11, 12, 13, 14}
    assert len(set(tops)) > 1


def test_augment_flip_and_erase_are_per_image() -> None:
    x = torch.arange(28.0).expand(64, 1, 28, 28) / 27
    flipped = augment(x, TrainConfig(hflip=True), torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x, strict=True)])
    assert 0 < int(mirrored.sum()) < 64
    erased = augment(torch.ones(64, 1, 28, 28), TrainConfig(erase=0.5), torch.Generator().manual_seed(0))
    blanked = (erased == 0).sum((1, 2, 3))
    assert 0 < int((blanked > 0).sum()) < 64
    assert int(blanked.max()) <= 14 * 14


def test_fit_with_every_trick_returns_plain_quickstart_model() -> None:
    model = short_fit(ALL_TRICKS)
    assert type(model) is NeuralNetwork
    assert list(model.state_dict()) == list(NeuralNetwork().state_dict())


def test_fit_reports_accuracy_of_returned_model() -> None:
    train, test = synthetic_set(256, seed=1), synthetic_set(64, seed=2)
    result = fit(*train, *test, ALL_TRICKS, torch.device("cpu"), show_progress=False)
    assert result.final is not None
    predicted = result.model(pixels_to_input(test[0])).argmax(1)
    assert result.final.accuracy == (predicted == test[1]).float().mean().item()
    assert len(result.history) == ALL_TRICKS.epochs


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TrainConfig(epochs=2, batch_size=64), ALL_TRICKS], ids=["default", "all-tricks"])
def test_same_seed_gives_identical_weights(config: TrainConfig) -> None:
    first, second = short_fit(config), short_fit(config)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_different_seed_gives_different_weights() -> None:
    first, second = short_fit(ALL_TRICKS), short_fit(replace(ALL_TRICKS, seed=1))
    assert not torch.equal(first.linear_relu_stack[0].weight, second.linear_relu_stack[0].weight)


# --- report -------------------------------------------------------------------------------------


def test_per_class_table_counts_and_worst_confusion() -> None:
    confusion = torch.eye(10, dtype=torch.int64) * 9
    confusion[6, 0] = 1  # one shirt taken for a T-shirt
    table = per_class_table(confusion, CLASS_NAMES)
    shirt = next(line for line in table.splitlines() if line.startswith("Shirt"))
    assert "9/10" in shirt
    assert "90.00%" in shirt
    assert "T-shirt/top (1)" in shirt
    assert table.splitlines()[-1].split()[:2] == ["overall", "90/91"]


# --- a real, short training run ----------------------------------------------------------------


needs_dataset = pytest.mark.skipif(not DEBIAN_DATA.is_dir(), reason="dataset-fashion-mnist is not installed")


@pytest.mark.slow
@needs_dataset
@pytest.mark.parametrize("recipe", ["default", "tutorial"])
def test_dry_run_writes_verified_artifact_and_report(
    recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model.safetensors"
    assert main(["--dry-run", "--recipe", recipe, "--out", str(out), "--data-dir", str(DEBIAN_DATA)]) == 0
    artifact = load_artifact(out)  # verifies checksum and architecture
    metadata = artifact.metadata
    assert metadata.training_config["recipe"] == recipe
    # Only the default recipe holds images out: the tutorial, as written, trains on all 60,000.
    trusted = recipe == "default"
    assert artifact.calibrated is trusted and artifact.has_ood_detector is trusted
    assert (metadata.validation_accuracy is not None) is trusted
    assert metadata.features == (["calibration", "ood", "reference_outputs"] if trusted else [])
    assert set(metadata.per_class_accuracy) == set(CLASS_NAMES)
    # The recorded figure is the saved model's own accuracy on the real test set.
    data = load_fashion_mnist(DEBIAN_DATA)
    predicted = artifact.model(pixels_to_input(data.test_images)).argmax(1)
    assert metadata.test_accuracy == round((predicted == data.test_labels).float().mean().item(), 4)
    assert set(metadata.dataset_checksums) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }
    json.dumps(metadata.to_dict())  # the metadata is plain JSON
    for suffix in (".confusion.png", ".curves.png", *((".reliability.png",) if trusted else ())):
        assert (tmp_path / f"model{suffix}").read_bytes().startswith(PNG_MAGIC)
    if trusted:
        trust = (tmp_path / "model.trust.md").read_text()
        assert "| ECE (15 equal-width top-label bins) |" in trust
        assert all(f"| {kind} | held_aside |" in trust for kind in KINDS)
    umask = os.umask(0)
    os.umask(umask)
    for written in tmp_path.iterdir():  # readable like any file the user writes, not mkstemp's 0o600
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask, written
    assert "overall" in capsys.readouterr().out


# --- the validation split and the trust measures ---------------------------------------------------


def test_validation_split_is_fixed_disjoint_and_complete() -> None:
    images = torch.arange(1000, dtype=torch.int64).view(-1, 1, 1).expand(-1, 28, 28).to(torch.uint8)
    labels = torch.arange(1000) % 10
    data = FashionData(images, labels, images[:1], labels[:1], Path("."), {})
    first, again = split_validation(data, 100), split_validation(data, 100)
    assert torch.equal(first.validation_labels, again.validation_labels)
    assert first.description == again.description and first.description["size"] == 100
    assert len(first.train_labels) == 900 and len(first.validation_labels) == 100
    assert split_validation(data, 100, seed=1).description["indices_sha256"] != first.description["indices_sha256"]
    with pytest.raises(ValueError, match="between 1 and 999"):
        split_validation(data, 1000)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=generator) * 3
    labels = torch.multinomial(torch.softmax(logits / 1.7, 1), 1, generator=generator)[:, 0]
    assert fit_temperature(logits, labels) == pytest.approx(1.7, rel=0.03)


def test_expected_calibration_error_of_known_bins() -> None:
    # Two images at confidence 0.95 (one right) and two at 0.55 (both right): |0.5-0.95| and |1-0.55|, halved.
    probabilities = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx((0.45 + 0.45) / 2)


def test_auroc_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    generator = torch.Generator().manual_seed(1)
    garments = torch.randint(0, 20, (300,), generator=generator).float()
    others = torch.randint(5, 30, (200,), generator=generator).float()
    expected = roc_auc_score([0] * 300 + [1] * 200, torch.cat([garments, others]).numpy())
    assert auroc(garments, others) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_ood_sets_are_fixed_differ_between_splits_and_arrive_as_served(kind: str) -> None:
    evaluation = make_ood_set(kind, "evaluation", 40)
    assert evaluation.dtype == torch.uint8 and evaluation.shape == (40, 28, 28)
    assert torch.equal(evaluation, make_ood_set(kind, "evaluation", 40))
    assert not torch.equal(evaluation, make_ood_set(kind, "held_aside", 40))
    # The server inverts light backgrounds, so nothing it sees has one.
    assert not any(has_light_background(image.numpy().tobytes(), 28) for image in evaluation)
