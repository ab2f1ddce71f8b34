"""Image folders: an ImageFolder tree PATH/<class>/**/*.png (labelled) or a flat folder of images (unlabelled).

Split: PATH/<split> is used when it exists (train, val, test, ... subfolders); a folder without split
subfolders is all split=train. Class indices follow the sorted class-folder names, taken over every split
subfolder (train/val/valid/validation/test) so that all splits agree even when one lacks a class.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hpt.data.files import IMAGE_EXTENSIONS, FileImageDataset, is_image_file
from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")
SPLIT_DIR_NAMES: tuple[str, ...] = ("train", "val", "valid", "validation", "test")


class FolderDataset(FileImageDataset):
    """Images found under a folder; labels from class subfolders, or unlabelled for a flat folder."""

    def __init__(self, spec: DataSpec) -> None:
        if spec.kind != "folder":
            raise ValueError(f"FolderDataset needs a folder spec, got {spec.kind}")
        root = spec.path.expanduser()
        if not root.is_dir():
            where = "is a file" if root.exists() else "does not exist"
            raise HptError(f"image folder {root} {where}; check the path in the data spec")
        chosen, siblings = _split_dirs(root, spec.split)
        layouts = {d: _layout(d) for d in dict.fromkeys(chosen + siblings)}
        class_names = sorted({c for d, (_, classes) in layouts.items() for c in classes})
        files: list[str] = []
        labels: list[int] = []
        flat = [d for d in chosen if not layouts[d][1]]
        for d in chosen:
            top, classes = layouts[d]
            if top and classes:
                raise HptError(f"{d} has images at its top level ({top[0]}, ...) and class subfolders "
                               f"({', '.join(classes[:5])}); move the loose images into a class folder, "
                               "or point the data spec at a folder of one kind")
            if classes:
                for c in classes:
                    found = _images_under(d / c)
                    files.extend(found)
                    labels.extend([class_names.index(c)] * len(found))
            else:
                files.extend(str(d / name) for name in top)
        if not files:
            names = ", ".join(IMAGE_EXTENSIONS)
            raise HptError(f"no images ({names}) found in {', '.join(map(str, chosen))}; "
                           "check the path and split of the data spec")
        if flat and len(flat) < len(chosen):
            log.warning("%s: some split folders have no class subfolders; the data is used unlabelled", root)
        label_array = None if flat else np.asarray(labels, dtype=np.int64)
        self._setup(spec, files, label_array, len(class_names) if label_array is not None else None,
                    class_names if label_array is not None else None, root,
                    "the folder changed while it was read; try again", root)


def _split_dirs(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    """The folders holding the split's images, and all standard split folders (for the class union)."""
    present = [root / d for d in SPLIT_DIR_NAMES if (root / d).is_dir()]
    if (root / split).is_dir():
        return [root / split], present
    if split == "all":
        return (present or [root]), present
    if present:
        names = ", ".join(p.name for p in present)
        raise HptError(f"{root} has no '{split}' subfolder (split subfolders: {names}); "
                       f"use split= one of {names} or all")
    if split == "train":
        return [root], []
    raise HptError(f"{root} has no '{split}' subfolder; a folder without split subfolders "
                   "only has split=train (or all): use one of those or point at the split's own folder")


def _layout(folder: Path) -> tuple[list[str], list[str]]:
    """(image file names at the top level, sorted; class subfolder names, sorted), hidden entries ignored."""
    top: list[str] = []
    dirs: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif entry.is_file() and is_image_file(entry.name):
                top.append(entry.name)
    return sorted(top), sorted(dirs)


def _images_under(folder: Path) -> list[str]:
    """All image files below folder (recursive, hidden entries ignored), in sorted path order."""
    found: list[str] = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(_images_under(Path(entry.path)))
        elif entry.is_file() and is_image_file(entry.name):
            found.append(entry.path)
    return found
