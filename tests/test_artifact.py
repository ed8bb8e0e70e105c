import os
from pathlib import Path

import pytest
import torch

from models import ArtifactError, NeuralNetwork, build_metadata, load_artifact, save_artifact
from tests.conftest import make_model


def test_save_then_load_round_trips_weights_and_metadata(tmp_path: Path) -> None:
    model = make_model(1)
    path = save_artifact(tmp_path / "m.safetensors", model, build_metadata(model.state_dict(), test_accuracy=0.9))
    loaded = load_artifact(path)
    assert loaded.metadata.test_accuracy == 0.9
    assert loaded.metadata.architecture == "NeuralNetwork"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_load_refuses_flipped_weight_byte_naming_checksum(tmp_path: Path) -> None:
    model = make_model(2)
    path = save_artifact(tmp_path / "m.safetensors", model, build_metadata(model.state_dict()))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum") as info:
        load_artifact(path)
    assert str(path) in str(info.value)


def test_load_quickstart_pth_predicts_like_source_model(tmp_path: Path) -> None:
    model = make_model(3)
    torch.save(model.state_dict(), tmp_path / "model.pth")  # exactly what the quickstart does
    loaded = load_artifact(tmp_path / "model.pth")
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded.model(x), model(x))


def test_load_refuses_pickled_module_in_pth(tmp_path: Path) -> None:
    torch.save(make_model(4), tmp_path / "whole.pth")  # a full pickled module, not a state dict
    with pytest.raises(ArtifactError, match="weights-only"):
        load_artifact(tmp_path / "whole.pth")


def test_load_refuses_wrong_architecture_shapes(tmp_path: Path) -> None:
    state = {"linear_relu_stack.0.weight": torch.zeros(3, 3)}
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ArtifactError, match="do not fit NeuralNetwork"):
        load_artifact(tmp_path / "other.pth")


def test_load_missing_file_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="python -m training"):
        load_artifact(tmp_path / "absent.safetensors")


def test_save_interrupted_midway_leaves_previous_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    old = make_model(5)
    save_artifact(path, old, build_metadata(old.state_dict()))
    new = make_model(6)

    def crash(_fd: int) -> None:
        raise KeyboardInterrupt  # as if killed after writing, before the rename

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(path, new, build_metadata(new.state_dict()))
    monkeypatch.undo()
    assert torch.equal(load_artifact(path).model.linear_relu_stack[0].weight, old.linear_relu_stack[0].weight)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_parameter_names_match_quickstart() -> None:
    assert list(NeuralNetwork().state_dict()) == [
        f"linear_relu_stack.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")
    ]
