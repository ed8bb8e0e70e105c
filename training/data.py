"""Find FashionMNIST and load it into memory once, through torchvision's own IDX reader."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "FASHION_DATA_DIR"
RAW_FILES = tuple(name for name, _md5 in FashionMNIST.resources)  # the four original .gz names


class DatasetNotFoundError(Exception):
    """FashionMNIST is not where we looked; the message says how to get it."""


@dataclass(frozen=True)
class FashionData:
    train_images: torch.Tensor  # uint8, N x 28 x 28
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    root: Path  # torchvision-style root holding FashionMNIST/raw
    checksums: dict[str, str]  # sha256 of each original file used


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashion-serve"


def candidate_dirs(data_dir: Path | None) -> list[Path]:
    """Where to look, in order: the flag, then FASHION_DATA_DIR, then Debian's package location."""
    if data_dir is not None:
        return [data_dir]
    from_env = os.environ.get(DATA_DIR_ENV)
    return [Path(from_env)] if from_env else [DEBIAN_DATA_DIR]


def find_source(data_dir: Path | None) -> Path:
    for directory in candidate_dirs(data_dir):
        for layout in (directory, directory / "FashionMNIST" / "raw"):
            if all(_find_file(layout, name) for name in RAW_FILES):
                return layout
    looked = ", ".join(str(d) for d in candidate_dirs(data_dir))
    raise DatasetNotFoundError(
        f"FashionMNIST not found in {looked} (need {', '.join(RAW_FILES)}, gzipped or not). "
        "Get it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs into "
        f"{DEBIAN_DATA_DIR}), or pass --download to fetch it with torchvision (needs internet), "
        f"or point --data-dir / {DATA_DIR_ENV} at a folder that holds the four files."
    )


def load_fashion_mnist(
    data_dir: Path | None = None, *, download: bool = False, cache_dir: Path | None = None
) -> FashionData:
    """Load both splits as tensors. The .gz files are unpacked once into the cache for torchvision."""
    cache_root = cache_dir or default_cache_dir()
    if download:
        FashionMNIST(str(cache_root), train=True, download=True)
        source = Path(FashionMNIST(str(cache_root), train=False, download=True).raw_folder)
    else:
        source = find_source(data_dir)
    root = _unpack_into(source, cache_root)
    train = FashionMNIST(str(root), train=True, download=False)
    test = FashionMNIST(str(root), train=False, download=False)
    return FashionData(
        train_images=train.data,
        train_labels=train.targets,
        test_images=test.data,
        test_labels=test.targets,
        root=root,
        checksums={name: _sha256(_find_file(source, name)) for name in RAW_FILES},  # type: ignore[arg-type]
    )


def _find_file(directory: Path, gz_name: str) -> Path | None:
    for candidate in (directory / gz_name, directory / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _unpack_into(source: Path, cache_root: Path) -> Path:
    """Make ``cache_root/<digest>/FashionMNIST/raw`` hold the four files uncompressed, atomically."""
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    root = cache_root / digest
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        target = raw / name.removesuffix(".gz")
        found = _find_file(source, name)
        assert found is not None  # find_source checked
        if target.is_file() and target.stat().st_mtime >= found.stat().st_mtime:
            continue
        with tempfile.TemporaryDirectory(dir=raw) as scratch:
            if found.suffix == ".gz":
                unpacked = Path(extract_archive(str(found), scratch))
            else:
                unpacked = Path(shutil.copy(found, scratch))
            os.replace(unpacked, target)  # a half-unpacked file never carries the real name
    return root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
