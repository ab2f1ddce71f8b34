"""The data spec: which images to use, as typed by users (`--data SPEC`) or written in YAML (`data:`).

String form ``KIND:PATH[?key=value&key=value...]``, e.g. ``npz:data/mnist_28.npz?split=val&fraction=0.1``;
a bare path infers KIND from its suffix (.npz, .csv, .tar) or from being a directory (folder).
Kinds: npz (in memory), npy (a folder of memory-mapped .npy arrays), folder and csv (image files),
dicom (a folder of .dcm files, or a text file listing them: ``dicom:scans/?window=40,400``),
wds (WebDataset .tar shards, streamed: ``wds:/data/shard-{000000..000099}.tar``).
16-bit and multi-channel TIFF files are read in full by folder and csv data (hpt.data.tiff).
Mapping form ``{kind: npz, path: ..., split: val, ...}`` gives the same :class:`DataSpec`.
Values in the string form are percent-decoded (``%26`` for ``&``); list values are comma-separated.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from hpt.errors import HptError

KINDS: tuple[str, ...] = ("npz", "npy", "folder", "csv", "dicom", "wds")
UNCERTAIN_POLICIES: tuple[str, ...] = ("zeros", "ones")
# Keys accepted after `?` (string form) or beside kind/path (mapping form), in canonical order.
OPTION_KEYS: tuple[str, ...] = (
    "split", "fraction", "count", "seed", "classes", "size", "skip_corrupt", "grayscale",
    "path_column", "label_columns", "root", "uncertain", "exclude_heldout", "window",
)
CSV_ONLY_KEYS: tuple[str, ...] = ("path_column", "label_columns", "root", "uncertain")
WINDOW_KINDS: tuple[str, ...] = ("dicom", "csv")  # kinds whose files may be DICOM (window= applies)
FILE_ONLY_KEYS: tuple[str, ...] = ("skip_corrupt",)
ARRAY_KINDS: tuple[str, ...] = ("npz", "npy")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class DataSpec:
    """Which images to load and how; validated on construction, :meth:`describe` gives the canonical string."""

    kind: str
    path: Path
    split: str = "train"
    fraction: float | None = None
    count: int | None = None
    seed: int = 0
    classes: tuple[int, ...] | None = None
    size: int | None = None
    skip_corrupt: bool = False
    grayscale: bool | None = None
    path_column: str = "path"
    label_columns: tuple[str, ...] | None = None
    root: Path | None = None
    uncertain: str = "zeros"
    # Leave out the train images that evaluation sets aside as val/test when the data has no such split
    # (hpt.data.heldout): pretraining then never sees an image that evaluation scores.
    exclude_heldout: bool = False
    # DICOM display window (center, width) in rescaled units (e.g. Hounsfield): overrides the files' own window.
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        # Normalise convenient input types (str paths, lists), then validate every field.
        object.__setattr__(self, "path", Path(self.path))
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if isinstance(self.label_columns, str):
            object.__setattr__(self, "label_columns", _split_list(self.label_columns))
        elif self.label_columns is not None:
            object.__setattr__(self, "label_columns", tuple(self.label_columns))
        if self.window is not None:
            object.__setattr__(self, "window", tuple(float(v) for v in self.window))
        _validate(self)

    def describe(self) -> str:
        """Canonical string form (defaults omitted); ``parse_data_spec(s.describe()) == s``."""
        opts = []
        for f in dataclasses.fields(self):
            if f.name in ("kind", "path"):
                continue
            value = getattr(self, f.name)
            if value == f.default:
                continue
            opts.append(f"{f.name}={_quote(_format_value(value))}")
        text = f"{self.kind}:{self.path}"
        return text + ("?" + "&".join(opts) if opts else "")

    def __str__(self) -> str:
        return self.describe()

    def resolved(self, root: Path) -> DataSpec:
        """This spec with a relative path taken relative to `root` (the folder of the config that names it)."""
        return self if self.path.is_absolute() else dataclasses.replace(self, path=(Path(root) / self.path).resolve())

    def train_split(self) -> DataSpec:
        """The train split of the same data (its fraction or count kept)."""
        return dataclasses.replace(self, split="train")

    def whole_train_split(self) -> DataSpec:
        """All of the train split of the same data: no fraction, no count."""
        return dataclasses.replace(self, split="train", fraction=None, count=None)

    @classmethod
    def from_config(cls, value: Any, where: str = "data") -> DataSpec:
        """A config value (a spec string, a mapping with kind and path, or a DataSpec) as a DataSpec."""
        if value is None or isinstance(value, (bool, int, float, list)):
            raise HptError(f"{where} must be a data spec like 'npz:PATH?split=train' or a mapping with kind and path, "
                           f"got {value!r}")
        return parse_data_spec(value)

    def as_config(self) -> str:
        """The config value of this spec (its canonical string), as written to YAML and JSON."""
        return self.describe()


def parse_data_spec(spec: str | Path | Mapping[str, Any] | DataSpec) -> DataSpec:
    """Parse a spec string, a YAML mapping or a DataSpec (returned as is) into a validated DataSpec."""
    if isinstance(spec, DataSpec):
        return spec
    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        return _parse_string(spec)
    if isinstance(spec, Mapping):
        return _parse_mapping(spec)
    raise HptError(
        f"a data spec must be a string like 'npz:PATH?split=train' or a mapping with kind and path, "
        f"got {type(spec).__name__}"
    )


def moved_data(old: str | DataSpec, new: str | DataSpec) -> bool:
    """True when spec `new` names the same data as `old`, moved: only the folder of its path (and csv root)
    differs, the file or folder name is the same, and `old`'s location no longer exists.

    Lets a run that was copied or moved to another machine or checkout resume, while a spec that names another,
    still existing data set is still told apart. This compares names only: callers that recorded the data's
    content (hpt.data.content) also compare that, so that other data of the same name is not taken for it.
    """
    try:
        before, after = parse_data_spec(old), parse_data_spec(new)
    except HptError:
        return False
    if before == after or before.path.name != after.path.name:
        return False
    if dataclasses.replace(before, path=after.path, root=after.root) != after:
        return False
    gone = before.path.parent if before.kind == "wds" else before.path  # a wds path is a shard pattern
    return not gone.exists()


# ----------------------------------------------------------------------------------------------
# parsing


def _parse_string(text: str) -> DataSpec:
    source = text.strip()
    if not source:
        raise HptError("empty data spec; write KIND:PATH, e.g. npz:data/mnist_28.npz?split=train")
    location, _, query = source.partition("?")
    kind: str | None = None
    match = re.match(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$", location)  # one-letter prefixes are Windows drives
    if match:
        kind, location = match.group(1).lower(), match.group(2)
        if kind not in KINDS:
            raise HptError(f"unknown data kind '{kind}' in '{source}'{_did_you_mean(kind, KINDS)}; "
                           f"valid kinds: {', '.join(KINDS)}")
    if not location:
        raise HptError(f"data spec '{source}' has no path; write KIND:PATH, e.g. npz:data/mnist_28.npz")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        key = unquote(key).strip()
        if not eq:
            raise HptError(f"data spec option '{item}' in '{source}' has no value; write {key}=VALUE")
        _check_key(key, source, allow_kind_path=False)
        if key in options:
            raise HptError(f"data spec option '{key}' is given twice in '{source}'; keep one")
        options[key] = unquote(value)
    return _build(kind, location, options, source)


def _parse_mapping(mapping: Mapping[str, Any]) -> DataSpec:
    source = repr(dict(mapping))
    for key in mapping:
        _check_key(str(key), source, allow_kind_path=True)
    if "path" not in mapping or mapping["path"] in (None, ""):
        raise HptError(f"data spec {source} has no 'path'; add path: FILE_OR_FOLDER")
    kind = mapping.get("kind")
    if kind is not None:
        kind = str(kind).lower()
        if kind not in KINDS:
            raise HptError(f"unknown data kind '{kind}' in {source}{_did_you_mean(kind, KINDS)}; "
                           f"valid kinds: {', '.join(KINDS)}")
    options = {str(k): v for k, v in mapping.items() if k not in ("kind", "path")}
    return _build(kind, str(mapping["path"]), options, source)


def _build(kind: str | None, location: str, options: Mapping[str, Any], source: str) -> DataSpec:
    path = Path(location)
    if kind is None:
        kind = infer_kind(path, source)
    values: dict[str, Any] = {key: _coerce(key, value, source) for key, value in options.items()}
    try:
        return DataSpec(kind=kind, path=path, **values)
    except HptError as err:
        raise HptError(f"{err} (in data spec '{source}')") from None


def infer_kind(path: Path, source: str | None = None) -> str:
    """Kind of a bare path: .npz -> npz, .csv -> csv, .tar -> wds, an existing directory -> folder."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".csv":
        return "csv"
    if suffix == ".tar":
        return "wds"
    if path.expanduser().is_dir():
        return "folder"
    where = "it does not exist" if not path.expanduser().exists() else "it is not a .npz, a .csv or a directory"
    raise HptError(f"cannot tell what kind of data '{source or path}' is ({where}); "
                   f"write the kind before the path: npz:PATH, folder:PATH or csv:PATH (or npy:DIR, dicom:DIR, wds:PATTERN)")


def _check_key(key: str, source: str, *, allow_kind_path: bool) -> None:
    valid = (("kind", "path") if allow_kind_path else ()) + OPTION_KEYS
    if key not in valid:
        raise HptError(f"unknown data spec key '{key}' in {source}{_did_you_mean(key, valid)}; "
                       f"valid keys: {', '.join(valid)}")


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn a string (or YAML-typed) option value into the field's type; bad values raise HptError."""
    def bad(expected: str) -> HptError:
        return HptError(f"data spec option {key}={value!r} in '{source}' is not {expected}")

    if value is None:
        return None
    if key == "fraction":
        if isinstance(value, bool):
            raise bad("a number in (0, 1]")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number in (0, 1]") from None
    if key in ("count", "seed", "size"):
        return _to_int(value, bad)
    if key == "classes":
        items = _split_list(value) if isinstance(value, str) else value
        if isinstance(items, (int, float)) and not isinstance(items, bool):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise bad("a comma-separated list of class indices")
        return tuple(_to_int(item, bad) for item in items)
    if key in ("skip_corrupt", "grayscale", "exclude_heldout"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise bad("true or false")
    if key == "label_columns":
        items = _split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad("a comma-separated list of column names")
        return tuple(str(item) for item in items)
    if key == "window":
        items = _split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != 2:
            raise bad("a window CENTER,WIDTH, e.g. window=40,400")
        try:
            return tuple(float(item) for item in items)
        except (TypeError, ValueError):
            raise bad("a window CENTER,WIDTH, e.g. window=40,400") from None
    if key == "root":
        return Path(str(value))
    return str(value)


def _to_int(value: Any, bad: Any) -> int:
    if isinstance(value, bool):
        raise bad("an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise bad("an integer") from None


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# ----------------------------------------------------------------------------------------------
# validation and formatting


def _validate(spec: DataSpec) -> None:
    if spec.kind not in KINDS:
        raise HptError(f"unknown data kind '{spec.kind}'{_did_you_mean(spec.kind, KINDS)}; "
                       f"valid kinds: {', '.join(KINDS)}")
    if not spec.split or not re.fullmatch(r"[A-Za-z0-9_.\-]+", spec.split):
        raise HptError(f"split={spec.split!r} is not a valid split name; use e.g. train, val, test or all")
    if spec.fraction is not None and spec.count is not None:
        raise HptError("fraction and count are exclusive; give one of them")
    if spec.fraction is not None and not (0.0 < spec.fraction <= 1.0 and math.isfinite(spec.fraction)):
        raise HptError(f"fraction must be in (0, 1], got {spec.fraction}; use count=N for a number of images")
    if spec.count is not None and spec.count < 1:
        raise HptError(f"count must be a positive number of images, got {spec.count}")
    if spec.seed < 0:
        raise HptError(f"seed must be >= 0, got {spec.seed}")
    if spec.size is not None and spec.size < 1:
        raise HptError(f"size must be a positive number of pixels, got {spec.size}")
    if spec.classes is not None:
        if not spec.classes:
            raise HptError("classes is empty; list the class indices to keep, e.g. classes=0,1,2")
        if any(c < 0 for c in spec.classes):
            raise HptError(f"classes must be class indices >= 0, got {list(spec.classes)}")
        if len(set(spec.classes)) != len(spec.classes):
            raise HptError(f"classes lists a class twice: {list(spec.classes)}; list each once")
    if not spec.path_column:
        raise HptError("path_column is empty; give the csv column holding the image paths")
    if spec.label_columns is not None:
        if not spec.label_columns:
            raise HptError("label_columns is empty; list column names or leave it out for unlabelled data")
        if len(set(spec.label_columns)) != len(spec.label_columns):
            raise HptError(f"label_columns lists a column twice: {list(spec.label_columns)}")
    if spec.uncertain not in UNCERTAIN_POLICIES:
        raise HptError(f"uncertain={spec.uncertain!r} is not valid{_did_you_mean(spec.uncertain, UNCERTAIN_POLICIES)}; "
                       f"use uncertain=zeros (-1 labels count as negative) or uncertain=ones")
    defaults = DataSpec.__dataclass_fields__
    if spec.kind != "csv":
        for key in CSV_ONLY_KEYS:
            if getattr(spec, key) != defaults[key].default:
                raise HptError(f"{key} only applies to csv data, not {spec.kind}; remove it")
    if spec.window is not None:
        if spec.kind not in WINDOW_KINDS:
            raise HptError(f"window applies to DICOM files (dicom or csv data), not {spec.kind}; remove it")
        if len(spec.window) != 2 or not all(math.isfinite(v) for v in spec.window) or spec.window[1] <= 0:
            raise HptError(f"window must be CENTER,WIDTH with a positive width, got {list(spec.window)}")
    if spec.kind in ARRAY_KINDS:
        for key in FILE_ONLY_KEYS:
            if getattr(spec, key) != defaults[key].default:
                raise HptError(f"{key} only applies to image files (folder or csv data), not {spec.kind}; "
                               "remove it")
    if spec.exclude_heldout and (spec.kind == "wds" or spec.split != "train"):
        raise HptError(f"exclude_heldout applies to split=train of indexable data (evaluation carves val/test from "
                       f"train), not split={spec.split} of {spec.kind} data; remove it")
    if spec.kind == "wds":
        if spec.skip_corrupt:
            raise HptError("skip_corrupt does not apply to wds shards (a damaged sample is an error naming its "
                           "key and shard); remove it and rewrite or leave out the damaged shard")
        if spec.split not in ("train", "all"):
            raise HptError(f"split={spec.split} does not apply to wds shards (a shard pattern has no splits); "
                           "remove split= and point the pattern at the split's shards instead")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _quote(text: str) -> str:
    return quote(text, safe=",/:\\")


def _did_you_mean(word: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
