"""The dataset loader on small files written in the real IDX format, gzipped and raw, in both layouts."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import pytest
import torch

from training import data as data_module
from training.data import (
    DATA_DIR_ENV,
    RAW_FILES,
    DatasetInvalidError,
    DatasetNotFoundError,
    load_fashion_mnist,
)


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """The IDX format: two zero bytes, type 0x08 (uint8), the rank, big-endian uint32 sizes, then the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    return header + tensor.contiguous().numpy().tobytes()


def make_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=generator)
    return images, labels


def write_dataset(folder: Path, *, gz: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Write the four FashionMNIST files (6 train, 4 test images) into ``folder``; return what they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": make_split(6, seed=1), "test": make_split(4, seed=2)}
    contents = [splits["train"][0], splits["train"][1], splits["test"][0], splits["test"][1]]
    for name, tensor in zip(RAW_FILES, contents, strict=True):  # train images, train labels, test ...
        payload = idx_bytes(tensor)
        if gz:
            (folder / name).write_bytes(gzip.compress(payload))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(payload)
    return splits


def assert_loaded(loaded: data_module.FashionData, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert torch.equal(loaded.train_images, splits["train"][0])
    assert torch.equal(loaded.train_labels, splits["train"][1].long())
    assert torch.equal(loaded.test_images, splits["test"][0])
    assert torch.equal(loaded.test_labels, splits["test"][1].long())
    assert loaded.train_images.dtype == torch.uint8
    assert loaded.train_labels.dtype == torch.int64


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "torchvision-layout"])
def test_load_reads_generated_idx_files(tmp_path: Path, gz: bool, nested: bool) -> None:
    root = tmp_path / "data"
    splits = write_dataset(root / "FashionMNIST" / "raw" if nested else root, gz=gz)
    loaded = load_fashion_mnist(root, cache_dir=tmp_path / "cache")
    assert_loaded(loaded, splits)
    assert set(loaded.checksums) == set(RAW_FILES)
    assert all(len(digest) == 64 for digest in loaded.checksums.values())


def test_load_uses_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = write_dataset(tmp_path / "env", gz=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert_loaded(load_fashion_mnist(cache_dir=tmp_path / "cache"), splits)


def test_load_falls_back_to_debian_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = write_dataset(tmp_path / "debian", gz=True)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data_module, "DEBIAN_DATA_DIR", tmp_path / "debian")
    assert_loaded(load_fashion_mnist(cache_dir=tmp_path / "cache"), splits)


def test_load_finds_earlier_download_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    splits = write_dataset(cache / "FashionMNIST" / "raw", gz=True)  # where torchvision's download puts them
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data_module, "DEBIAN_DATA_DIR", tmp_path / "absent")
    assert_loaded(load_fashion_mnist(cache_dir=cache), splits)


def test_load_reflects_replaced_source_files(tmp_path: Path) -> None:
    """The unpacked cache copy is refreshed when the source file is newer."""
    root = tmp_path / "data"
    write_dataset(root, gz=True)
    load_fashion_mnist(root, cache_dir=tmp_path / "cache")
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    (root / RAW_FILES[0]).write_bytes(gzip.compress(idx_bytes(images)))
    assert torch.equal(load_fashion_mnist(root, cache_dir=tmp_path / "cache").train_images, images)


def assert_says_how_to_get_it(message: str, looked_in: Path) -> None:
    assert str(looked_in) in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "--download" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_missing_dataset_error_says_both_ways_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert_says_how_to_get_it(str(info.value), tmp_path / "empty")


def test_missing_dataset_without_flag_names_default_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data_module, "DEBIAN_DATA_DIR", tmp_path / "debian")
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(cache_dir=tmp_path / "cache")
    assert_says_how_to_get_it(str(info.value), tmp_path / "debian")
    assert str(tmp_path / "cache") in str(info.value)


def test_incomplete_dataset_is_not_found(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", gz=True)
    (tmp_path / "data" / RAW_FILES[3]).unlink()
    with pytest.raises(DatasetNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "data", cache_dir=tmp_path / "cache")


def test_truncated_gzip_is_refused_naming_file(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", gz=True)
    path = tmp_path / "data" / RAW_FILES[0]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetInvalidError, match="not a readable gzip file") as info:
        load_fashion_mnist(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)


def test_non_idx_file_is_refused_naming_files(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", gz=False)
    (tmp_path / "data" / RAW_FILES[2].removesuffix(".gz")).write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetInvalidError, match=re.escape("t10k-images-idx3-ubyte.gz / t10k-labels-idx1-ubyte.gz")):
        load_fashion_mnist(tmp_path / "data", cache_dir=tmp_path / "cache")


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", gz=False)
    labels = torch.zeros(5, dtype=torch.uint8)  # 6 train images
    (tmp_path / "data" / RAW_FILES[1].removesuffix(".gz")).write_bytes(idx_bytes(labels))
    with pytest.raises(DatasetInvalidError, match="and 5 labels"):
        load_fashion_mnist(tmp_path / "data", cache_dir=tmp_path / "cache")
