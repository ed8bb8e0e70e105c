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

from models import IMAGE_SIDE, NUM_CLASSES

DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "FASHION_DATA_DIR"
RAW_FILES = tuple(name for name, _md5 in FashionMNIST.resources)  # the four original .gz names


class DatasetError(Exception):
    """FashionMNIST cannot be used; the message says why and what to do."""


class DatasetNotFoundError(DatasetError):
    """FashionMNIST is not where we looked; the message says how to get it."""


class DatasetInvalidError(DatasetError):
    """A dataset file is there but is not a FashionMNIST IDX file (truncated, wrong file, bad gzip)."""


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


def candidate_dirs(data_dir: Path | None, cache_root: Path | None = None) -> list[Path]:
    """Where to look, in order: the flag, else FASHION_DATA_DIR, else Debian's package location and then
    an earlier ``--download``'s copy in the cache."""
    if data_dir is not None:
        return [data_dir]
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return [Path(from_env)]
    return [DEBIAN_DATA_DIR, cache_root or default_cache_dir()]


def find_source(data_dir: Path | None, cache_root: Path | None = None) -> Path:
    """The folder holding all four files (flat, or torchvision's ``FashionMNIST/raw`` layout)."""
    looked = candidate_dirs(data_dir, cache_root)
    for directory in looked:
        for layout in (directory, directory / "FashionMNIST" / "raw"):
            if all(_find_file(layout, name) for name in RAW_FILES):
                return layout
    raise DatasetNotFoundError(
        f"FashionMNIST not found in {', '.join(str(d) for d in looked)} "
        f"(need {', '.join(RAW_FILES)}, gzipped or not). "
        "Get it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs into "
        f"{DEBIAN_DATA_DIR}), or pass --download to fetch it with torchvision (needs internet), "
        f"or point --data-dir / {DATA_DIR_ENV} at a folder that holds the four files."
    )


def load_fashion_mnist(
    data_dir: Path | None = None, *, download: bool = False, cache_dir: Path | None = None
) -> FashionData:
    """Load both splits as tensors. The .gz files are unpacked once into the cache for torchvision.

    ``download`` fetches the files with torchvision only when no local copy is found.
    """
    cache_root = cache_dir or default_cache_dir()
    try:
        source = find_source(data_dir, cache_root)
    except DatasetNotFoundError:
        if not download:
            raise
        # Into the folder the user named, else the cache (where the next run finds it without --download).
        download_root = data_dir or Path(os.environ.get(DATA_DIR_ENV) or cache_root)
        FashionMNIST(str(download_root), train=True, download=True)
        source = Path(FashionMNIST(str(download_root), train=False, download=True).raw_folder)
    root = _unpack_into(source, cache_root)
    train_images, train_labels = _read_split(root, source, train=True)
    test_images, test_labels = _read_split(root, source, train=False)
    return FashionData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        root=root,
        checksums={name: _sha256(_find_file(source, name)) for name in RAW_FILES},  # type: ignore[arg-type]
    )


def _read_split(root: Path, source: Path, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's IDX reader, with its asserts turned into an error that names the files."""
    names = RAW_FILES[:2] if train else RAW_FILES[2:]
    try:
        split = FashionMNIST(str(root), train=train, download=False)
        images, labels = split.data, split.targets
    except (AssertionError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise DatasetInvalidError(f"{' / '.join(names)} in {source} are not valid IDX files ({exc!r})") from None
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or len(images) != len(labels) or not len(labels):
        raise DatasetInvalidError(
            f"{' / '.join(names)} in {source} hold {tuple(images.shape)} images and {len(labels)} labels; "
            "expected N x 28 x 28 images and N labels"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES:
        raise DatasetInvalidError(f"{names[1]} in {source} has labels outside 0-9")
    return images, labels


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
                try:
                    unpacked = Path(extract_archive(str(found), scratch))
                except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
                    raise DatasetInvalidError(f"{found} is not a readable gzip file ({exc})") from None
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


VALIDATION_SIZE = 5_000
VALIDATION_SEED = 0  # fixed apart from the training seed: every version is compared on the same images


@dataclass(frozen=True)
class Split:
    """The training images cut in two: what the model learns from, and the validation set that makes
    every training-time choice (recipe, temperature, thresholds), so the test set is only ever measured."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    validation_images: torch.Tensor
    validation_labels: torch.Tensor
    description: dict[str, int | str]  # size, seed and sha256 of the validation indices, for the artifact


def split_validation(data: FashionData, size: int = VALIDATION_SIZE, seed: int = VALIDATION_SEED) -> Split:
    """A validation set of ``size`` images drawn by ``seed`` from the training images; the rest train."""
    total = len(data.train_labels)
    if not 0 < size < total:
        raise ValueError(f"the validation size must be between 1 and {total - 1}, got {size}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    held, kept = order[:size].sort().values, order[size:].sort().values
    return Split(
        train_images=data.train_images[kept],
        train_labels=data.train_labels[kept],
        validation_images=data.train_images[held],
        validation_labels=data.train_labels[held],
        description={
            "size": size,
            "seed": seed,
            "of": total,
            "indices_sha256": hashlib.sha256(held.to(torch.int64).numpy().tobytes()).hexdigest(),
        },
    )
