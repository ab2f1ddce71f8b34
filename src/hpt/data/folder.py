"""Image folders: an ImageFolder tree PATH/<class>/**/*.png (labelled) or a flat folder of images (unlabelled).

Split: PATH/<split> is used when it exists (train, val, test, ... subfolders); a folder without split
subfolders is all split=train. Class indices follow the sorted class-folder names, taken over every split
subfolder (train/val/valid/validation/test) so that all splits agree even when one lacks a class.
The listing is cached in $HPT_CACHE/listings and reused while no directory it read has changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpt.data.files import IMAGE_EXTENSIONS, FileImageDataset, is_image_file
from hpt.data.listing import Walker, cached_walk
from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")
SPLIT_DIR_NAMES: tuple[str, ...] = ("train", "val", "valid", "validation", "test")


class FolderDataset(FileImageDataset):
    """Images found under a folder; labels from class subfolders, or unlabelled for a flat folder.

    The walk is cached (see :mod:`hpt.data.listing`): reopening an unchanged folder only stats its directories.
    """

    kind = "folder"
    #: which file names are images of this kind, and how a message names them
    accepts: Callable[[str], bool] = staticmethod(is_image_file)
    what = f"images ({', '.join(IMAGE_EXTENSIONS)})"

    def __init__(self, spec: DataSpec, cache_dir: Path | None = None) -> None:
        if spec.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a {self.kind} spec, got {spec.kind}")
        root = spec.path.expanduser()
        if not root.is_dir():
            where = "is a file" if root.exists() else "does not exist"
            raise HptError(f"image folder {root} {where}; check the path in the data spec")
        key = [str(root.resolve()), spec.split] + ([] if self.kind == "folder" else [self.kind])
        found = cached_walk(key, lambda walker: walk(root, spec.split, walker, self.accepts, self.what), cache_dir)
        prefix = os.path.join(str(root), "")
        files = [prefix + rel for rel in found["files"]]
        class_names: list[str] | None = found["class_names"]
        if found["partly_flat"]:
            log.warning("%s: some split folders have no class subfolders; the data is used unlabelled", root)
        label_array = None if found["labels"] is None else np.asarray(found["labels"], dtype=np.int64)
        self._setup(spec, files, label_array, len(class_names) if class_names is not None else None,
                    class_names, root, "the folder changed while it was read; try again", root)


def walk(root: Path, split: str, walker: Walker, accepts: Callable[[str], bool] = is_image_file,
         what: str = "images") -> dict[str, Any]:
    """List the split's images (files whose name `accepts`): {"files": paths relative to root, "labels",
    "class_names", "partly_flat"}."""
    walker.note(root)  # split subfolders appearing or vanishing change root's mtime
    chosen, siblings = _split_dirs(root, split)
    layouts = {d: _layout(d, walker, accepts) for d in dict.fromkeys(chosen + siblings)}
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
                found = _images_under(d / c, walker, accepts)
                files.extend(found)
                labels.extend([class_names.index(c)] * len(found))
        else:
            files.extend(str(d / name) for name in top)
    if not files:
        raise HptError(f"no {what} found in {', '.join(map(str, chosen))}; "
                       "check the path and split of the data spec")
    cut = len(os.path.join(str(root), ""))
    return {"files": [f[cut:] for f in files], "labels": None if flat else labels,
            "class_names": None if flat else class_names, "partly_flat": bool(flat) and len(flat) < len(chosen)}


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


def _layout(folder: Path, walker: Walker, accepts: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """(image file names at the top level, sorted; class subfolder names, sorted), hidden entries ignored."""
    top: list[str] = []
    dirs: list[str] = []
    for name, _, is_dir, is_file in walker.scandir(folder):
        if name.startswith("."):
            continue
        if is_dir:
            dirs.append(name)
        elif is_file and accepts(name):
            top.append(name)
    return sorted(top), sorted(dirs)


def _images_under(folder: Path, walker: Walker, accepts: Callable[[str], bool]) -> list[str]:
    """All image files below folder (recursive, hidden entries ignored), in sorted path order."""
    found: list[str] = []
    for name, path, is_dir, is_file in sorted(walker.scandir(folder)):
        if name.startswith("."):
            continue
        if is_dir:
            found.extend(_images_under(Path(path), walker, accepts))
        elif is_file and accepts(name):
            found.append(path)
    return found
