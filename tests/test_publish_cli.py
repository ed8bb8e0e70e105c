"""The trainer's --publish and ``python -m training.publish``: real runs, a real store, the exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.store import ModelStore, file_digest
from tests.conftest import make_artifact
from training.__main__ import main
from training.publish import main as publish_main

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_DATA.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_trainer_publishes_what_it_saved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dry run is far below 90%: refused (exit 1, the reason said); with the bar lowered it serves."""
    out, store = tmp_path / "model.safetensors", tmp_path / "store"
    common = ["--dry-run", "--no-report", "--data-dir", str(DEBIAN_DATA), "--out", str(out), "--publish", str(store)]
    assert main(common) == 1
    error = capsys.readouterr().err
    assert "refused: its recorded accuracy" in error and "below the minimum 0.9000" in error
    assert ModelStore(store).read_state().serving is None
    assert main([*common, "--min-accuracy", "0"]) == 0
    assert "promoted: it serves now (no version serves yet)" in capsys.readouterr().out
    assert ModelStore(store).read_state().serving == file_digest(out)


def run_publish(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "training.publish", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_publish_keeps_a_weaker_version_as_a_candidate_and_says_why(tmp_path: Path) -> None:
    store = tmp_path / "store"
    best = make_artifact(tmp_path, 1, accuracy=0.95)
    weaker = make_artifact(tmp_path, 2, accuracy=0.94)
    assert ModelStore(store).versions() == []  # no directory yet: nothing published
    assert publish_main([str(store), str(best)]) == 0
    done = run_publish(str(store), str(weaker), "--tolerance", "0.5")
    assert done.returncode == 0, done.stderr
    assert f"version {file_digest(weaker)[:12]} published as a candidate (kept as a candidate: its accuracy 94.00%" in (
        done.stdout
    )
    assert ModelStore(store).read_state().serving == file_digest(best)


def test_publish_refuses_a_negative_tolerance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        publish_main([str(tmp_path), str(make_artifact(tmp_path, 1)), "--tolerance", "-1"])
    assert exit_.value.code == 2 and "must be 0 or more accuracy points, got -1" in capsys.readouterr().err
