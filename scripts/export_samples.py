"""Export the web page's built-in samples: the first FashionMNIST *test* image of each class, as PNGs.

The PNGs and their manifest are committed under app/static/samples/, so the page works offline and
without the dataset; rerun this only to change the choice:

    .venv/bin/python scripts/export_samples.py [--data-dir DIR] [--out app/static/samples]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from PIL import Image

from models import CLASS_NAMES
from training.data import load_fashion_mnist

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "app" / "static" / "samples"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def export(data_dir: Path | None, out: Path) -> list[dict[str, object]]:
    data = load_fashion_mnist(data_dir)
    labels = data.test_labels.tolist()
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for label, name in enumerate(CLASS_NAMES):
        index = labels.index(label)  # the first of its class: a fixed, reproducible choice
        file = f"{label}-{slug(name)}.png"
        Image.fromarray(data.test_images[index].numpy()).save(out / file, optimize=True)
        manifest.append({"file": file, "label": label, "class_name": name, "test_index": index})
    (out / "samples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="FashionMNIST folder (default: the loader's search)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    manifest = export(args.data_dir, args.out)
    print(f"wrote {len(manifest)} samples and samples.json to {args.out}")


if __name__ == "__main__":
    main()
