"""Rebuild the files `hpt demo` ships in src/hpt/assets/ from ../shared/data and a finished base run.

    python scripts/build_demo_assets.py --data ../shared/data --base runs/base_cifar10_long/base_96k/backbone.safetensors

- fashion_demo.npz: a stratified FashionMNIST subset (500 train and 100 val images per class, seeded) and
  the whole 5,000-image test split, so that the demo's scores carry intervals of about +-1 point.
- base_cifar10_w16.safetensors: a finished and measured base backbone (copied, checked to be a ResNet-18 at
  width 16 with the small-image stem). The shipped one is the last stage of
  `hpt run configs/examples/base_cifar10_long.yaml --out runs/base_cifar10_long` (base_96k, above), which
  continues `hpt run configs/examples/base_cifar10.yaml --out runs/base_cifar10`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "src" / "hpt" / "assets"


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of per_class images of every class, sorted."""
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def build_fashion(source: Path, out: Path) -> None:
    data = np.load(source)
    rng = np.random.default_rng(0)
    train = stratified(data["train_labels"], 500, rng)
    val = stratified(data["val_labels"], 100, rng)
    np.savez_compressed(
        out,
        train_images=data["train_images"][train], train_labels=data["train_labels"][train],
        val_images=data["val_images"][val], val_labels=data["val_labels"][val],
        test_images=data["test_images"], test_labels=data["test_labels"],
    )


def copy_base(base: Path, out: Path) -> None:
    from hpt.models import build_resnet, load_backbone

    load_backbone(build_resnet("resnet18", small_stem=True, width=16), base)  # strict: refuses another shape
    shutil.copyfile(base, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--base", type=Path, required=True)
    args = parser.parse_args()
    build_fashion(args.data / "fashionmnist_28.npz", ASSETS / "fashion_demo.npz")
    copy_base(args.base, ASSETS / "base_cifar10_w16.safetensors")
    for path in sorted(ASSETS.iterdir()):
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
