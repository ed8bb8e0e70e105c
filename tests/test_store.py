"""The model store (models/store.py), validation and publishing, on real files and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models import NeuralNetwork, ReferenceOutputs, Scorer, TrustParts, build_metadata, save_artifact
from models.publishing import publish
from models.store import MAX_ARTIFACT_BYTES, ModelStore, StaleState, StoreError, VersionNotFound, file_digest
from models.validation import Refused, validate_version
from tests.conftest import make_artifact

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_publish_names_the_file_by_its_whole_digest(store: ModelStore, tmp_path: Path) -> None:
    source = make_artifact(tmp_path, 1)
    result = publish(store, source)
    assert result.digest == file_digest(source)
    stored = store.path_of(result.digest)
    assert stored.read_bytes() == source.read_bytes()
    assert stored.stat().st_mode & 0o222 == 0  # read-only
    assert result.promoted and result.state.serving == result.digest == result.state.last_good
    assert store.versions() == [result.digest]
    assert publish(store, source).digest == result.digest  # idempotent: same content, same file


def test_a_weaker_version_stays_a_candidate_unless_promoted(store: ModelStore, tmp_path: Path) -> None:
    first = publish(store, make_artifact(tmp_path, 1, accuracy=0.95))
    weaker_file = make_artifact(tmp_path, 2, accuracy=0.94)
    weaker = publish(store, weaker_file, tolerance_points=0.3)
    assert not weaker.promoted and "1.00 points below" in weaker.reason
    assert store.read_state().serving == first.digest
    close = publish(store, make_artifact(tmp_path, 3, accuracy=0.948), tolerance_points=0.3)
    assert close.promoted and store.read_state().history == [first.digest]
    forced = publish(store, weaker_file, promote=True)
    assert forced.promoted and store.read_state().serving == weaker.digest


def test_a_version_below_the_minimum_accuracy_is_refused_and_recorded(store: ModelStore, tmp_path: Path) -> None:
    result = publish(store, make_artifact(tmp_path, 1, accuracy=0.5), min_accuracy=0.9, promote=True)
    assert not result.promoted
    assert result.state.serving is None
    assert result.state.refused == {result.digest: "its recorded accuracy 0.5000 is below the minimum 0.9000"}


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "it is not a readable artifact"),
        (lambda data: data.replace(b"fashion_serve", b"fashion_other"), "it is not a readable artifact"),
    ],
)
def test_a_corrupt_artifact_is_refused_with_a_reason_without_paths(
    store: ModelStore, tmp_path: Path, damage, reason
) -> None:  # type: ignore[no-untyped-def]
    source = make_artifact(tmp_path, 1)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(damage(source.read_bytes()))
    result = publish(store, broken, promote=True)
    assert not result.promoted and result.state.refused[result.digest] == reason
    assert str(tmp_path) not in json.dumps(result.state.refused)


def test_flipped_weights_fail_the_weights_digest(store: ModelStore, tmp_path: Path) -> None:
    data = bytearray(make_artifact(tmp_path, 1).read_bytes())
    data[-5] ^= 0x40  # a weight's byte: the file digest changes with it, the metadata's weights digest does not
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    result = publish(store, tampered, promote=True)
    assert result.state.refused[result.digest] == "its weights do not match the digest in its metadata"


def test_a_file_whose_name_is_not_its_digest_is_refused(store: ModelStore, tmp_path: Path) -> None:
    good = publish(store, make_artifact(tmp_path, 1)).digest
    other = make_artifact(tmp_path, 2)
    fake = "f" * 64
    (store.root / f"{fake}.safetensors").write_bytes(other.read_bytes())
    with pytest.raises(Refused, match="differs from its name"):
        validate_version(store, fake)
    validate_version(store, good)  # the good one still passes


def test_symlinks_and_oversized_files_are_not_versions(store: ModelStore, tmp_path: Path) -> None:
    source = make_artifact(tmp_path, 1)
    digest = file_digest(source)
    store.root.mkdir(parents=True)
    (store.root / f"{digest}.safetensors").symlink_to(source)
    assert store.versions() == []
    with pytest.raises(Refused, match="symlink"):
        validate_version(store, digest)
    big = tmp_path / "big.safetensors"
    with big.open("wb") as file:
        file.truncate(MAX_ARTIFACT_BYTES + 1)
    with pytest.raises(StoreError, match="larger than"):
        file_digest(big)


@pytest.mark.parametrize("version", ["../../etc/passwd", "ABCDEF123456", "abc", "g" * 12, "a" * 65, "a" * 12 + "/x"])
def test_resolve_takes_only_hex_prefixes_of_stored_versions(store: ModelStore, tmp_path: Path, version: str) -> None:
    publish(store, make_artifact(tmp_path, 1))
    with pytest.raises(VersionNotFound):
        store.resolve(version)


def test_resolve_finds_a_version_by_its_first_twelve_digits(store: ModelStore, tmp_path: Path) -> None:
    digest = publish(store, make_artifact(tmp_path, 1)).digest
    assert store.resolve(digest[:12]) == digest == store.resolve(digest)
    with pytest.raises(VersionNotFound, match="no version"):
        store.resolve("0" * 12 if not digest.startswith("0" * 12) else "1" * 12)


def test_a_stale_compare_and_swap_is_refused(store: ModelStore, tmp_path: Path) -> None:
    state = publish(store, make_artifact(tmp_path, 1)).state
    store.update_state(lambda current: current, expected_generation=state.generation)
    with pytest.raises(StaleState):
        store.update_state(lambda current: current, expected_generation=state.generation)
    assert store.read_state().generation == state.generation + 1


def test_a_publish_killed_midway_leaves_nothing_half_written(store: ModelStore, tmp_path: Path) -> None:
    """A real process killed while it writes the copy: no version file, no state change, only a temp file gone
    or ignored; the next publish of the same artifact works."""
    first = publish(store, make_artifact(tmp_path, 1))
    source = make_artifact(tmp_path, 2)
    script = (
        "import os, sys, time\n"
        "import models.artifact as artifact\n"
        "real_replace = os.replace\n"
        "def slow_replace(a, b):\n"
        "    print('copied', flush=True); time.sleep(60); real_replace(a, b)\n"
        "artifact.os.replace = slow_replace\n"
        "from models.publishing import publish\nfrom models.store import ModelStore\n"
        f"publish(ModelStore({str(store.root)!r}), __import__('pathlib').Path({str(source)!r}))\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stdout.readline() == b"copied\n"
        process.send_signal(signal.SIGKILL)
    leftovers = [entry.name for entry in os.scandir(store.root) if entry.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".")  # the killed copy: never a version's name
    assert store.versions() == [first.digest]
    assert store.read_state() == first.state
    again = publish(store, source)
    assert sorted(store.versions()) == sorted([first.digest, again.digest])
    assert validate_version(store, again.digest) is not None


def test_concurrent_publishers_never_lose_a_change(store: ModelStore, tmp_path: Path) -> None:
    """Two real processes changing the state at once: every change lands, in order, one generation each."""
    publish(store, make_artifact(tmp_path, 1))
    script = (
        "import dataclasses, sys\nfrom models.store import ModelStore\n"
        f"store = ModelStore({str(store.root)!r})\n"
        "for _ in range(25):\n"
        "    store.update_state(lambda s: dataclasses.replace(s, change=s.change + sys.argv[1]))\n"
    )
    started = store.read_state().generation
    processes = [subprocess.Popen([sys.executable, "-c", script, tag], cwd=ROOT) for tag in "ab"]
    deadline = time.monotonic() + 60
    for process in processes:
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    state = store.read_state()
    assert state.generation == started + 50
    assert (
        sorted(state.change.removeprefix(f"publish {state.serving[:12]}: no version serves yet"))
        == ["a"] * 25 + ["b"] * 25
    )  # type: ignore[index]


def test_the_state_file_is_only_ever_replaced_whole(store: ModelStore, tmp_path: Path) -> None:
    publish(store, make_artifact(tmp_path, 1))
    names = {entry.name for entry in os.scandir(store.root)}
    assert names == {"state.json", ".state.lock", f"{store.read_state().serving}.safetensors"}


def test_a_version_that_does_not_reproduce_its_reference_outputs_is_refused(store: ModelStore, tmp_path: Path) -> None:
    """Outputs recorded from one model, weights of another: the file is whole and well formed, and still refused;
    the same reference with the right weights passes."""
    torch.manual_seed(1)
    recorded, other = NeuralNetwork().eval(), NeuralNetwork().eval()
    pixels = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    parts = TrustParts(reference=ReferenceOutputs.record(Scorer(recorded), pixels))
    paths = []
    for name, model in (("right", recorded), ("wrong", other)):
        path = tmp_path / f"{name}.safetensors"
        save_artifact(path, model, build_metadata(model.state_dict(), parts=parts, validation_accuracy=0.95), parts)
        paths.append(path)
    right, wrong = (store.publish(path) for path in paths)
    assert validate_version(store, right).parts.reference is not None
    with pytest.raises(Refused, match="does not reproduce the outputs recorded at training time"):
        validate_version(store, wrong)
