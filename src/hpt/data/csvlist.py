"""Image lists in a csv file (CheXpert style): a path column, optional label columns, optional split column.

Paths are relative to ``root`` (default: the csv's folder; a relative root is taken from the working
directory like every other path). Numeric label cells: empty -> 0 and -1 ("uncertain") -> 0 by default
(CheXpert's U-Zeros), or 1 with ``uncertain=ones`` (U-Ones). One label column gives single-label data with
classes = the sorted distinct values (text values are class names); several give multi-label 0/1 vectors.
"""

from __future__ import annotations

import csv
import difflib
import logging
from pathlib import Path

import numpy as np

from hpt.data.files import FileImageDataset
from hpt.data.spec import DataSpec
from hpt.errors import HptError

log = logging.getLogger("hpt")
SPLIT_COLUMN = "split"


class CsvDataset(FileImageDataset):
    """Images listed in a csv file, decoded from disk in __getitem__."""

    def __init__(self, spec: DataSpec) -> None:
        if spec.kind != "csv":
            raise ValueError(f"CsvDataset needs a csv spec, got {spec.kind}")
        path = spec.path.expanduser()
        if not path.is_file():
            where = "is a directory" if path.is_dir() else "does not exist"
            raise HptError(f"csv file {path} {where}; check the path in the data spec")
        root = spec.root.expanduser() if spec.root is not None else path.parent
        header, rows, lines = _read(path)
        _require(spec.path_column, header, path, "path_column")
        for column in spec.label_columns or ():
            _require(column, header, path, "label_columns")
        labels, class_names = _labels(spec, header, rows, lines, path)
        keep = _split_rows(spec.split, header, rows, path)
        col = header.index(spec.path_column)
        files = []
        for i in keep:
            cell = rows[i][col].strip()
            if not cell:
                raise HptError(f"{path}: line {lines[i]} has an empty '{spec.path_column}' cell; every row needs "
                               "an image path")
            files.append(str(root / cell))
        if not files:
            raise HptError(f"{path} lists no images; add rows or check the split")
        labels = labels[keep] if labels is not None else None
        num_classes = None if labels is None else (labels.shape[1] if labels.ndim == 2 else len(class_names or ()))
        hint = f"paths are read relative to root={root}; set root= to the folder the '{spec.path_column}' " \
               "column is relative to"
        self._setup(spec, files, labels, num_classes, class_names, root, hint, path)


def _read(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows (blank lines dropped) and each row's line number; a ragged row is an error."""
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise HptError(f"{path}: line {reader.line_num} has {len(row)} fields but the header has "
                                   f"{len(header)}; fix the row (quote cells that contain commas)")
                rows.append(row)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HptError(f"cannot read {path} as a csv file ({err}); it must be UTF-8 text with a header row") from None
    if not header:
        raise HptError(f"{path} is empty; a csv data set needs a header row naming its columns")
    return header, rows, lines


def _require(column: str, header: list[str], path: Path, option: str) -> None:
    if column not in header:
        close = difflib.get_close_matches(column, header, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise HptError(f"{path} has no column '{column}'{hint}; its columns are: {', '.join(header)}; "
                       f"set {option}= to one of them")


def _split_rows(split: str, header: list[str], rows: list[list[str]], path: Path) -> list[int]:
    """Row indices of the split: rows whose split column equals it, or all rows (split=all / no split column)."""
    if SPLIT_COLUMN not in header:
        if split in ("train", "all"):
            return list(range(len(rows)))
        raise HptError(f"{path} has no '{SPLIT_COLUMN}' column, so split={split} cannot be selected; "
                       "use split=train (all rows) or give the split's own csv file")
    if split == "all":
        return list(range(len(rows)))
    col = header.index(SPLIT_COLUMN)
    keep = [i for i, row in enumerate(rows) if row[col].strip() == split]
    if not keep:
        values = sorted({row[col].strip() for row in rows})
        raise HptError(f"no rows of {path} have {SPLIT_COLUMN}={split}; values in that column: "
                       f"{', '.join(values)}; use one of them or all")
    return keep


def _labels(spec: DataSpec, header: list[str], rows: list[list[str]], lines: list[int], path: Path
            ) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels of every row (before the split filter, so class indices agree across splits)."""
    columns = spec.label_columns
    if not columns:
        return None, None
    uncertain = 1.0 if spec.uncertain == "ones" else 0.0
    if len(columns) == 1:
        return _single(columns[0], header.index(columns[0]), rows, lines, uncertain, path)
    out = np.zeros((len(rows), len(columns)), dtype=np.int64)
    empty = unsure = 0
    for k, column in enumerate(columns):
        col = header.index(column)
        for i, row in enumerate(rows):
            value, was_empty, was_unsure = _number(row[col], uncertain, column, lines[i], path)
            if value not in (0.0, 1.0):
                raise HptError(f"{path}: line {lines[i]}, column '{column}' holds {row[col]!r}; multi-label "
                               "columns must be 0, 1, -1 (uncertain) or empty")
            out[i, k] = int(value)
            empty += was_empty
            unsure += was_unsure
    _note(path, empty, unsure, spec.uncertain)
    return out, list(columns)


def _single(column: str, col: int, rows: list[list[str]], lines: list[int], uncertain: float, path: Path
            ) -> tuple[np.ndarray, list[str]]:
    cells = [row[col].strip() for row in rows]
    if all(_is_number(c) for c in cells if c):
        values = []
        empty = unsure = 0
        for i, cell in enumerate(cells):
            value, was_empty, was_unsure = _number(cell, uncertain, column, lines[i], path)
            values.append(value)
            empty += was_empty
            unsure += was_unsure
        _note(path, empty, unsure, "ones" if uncertain else "zeros")
        distinct = sorted(set(values))
        names = [str(int(v)) if float(v).is_integer() else str(v) for v in distinct]
        position = {v: j for j, v in enumerate(distinct)}
        return np.array([position[v] for v in values], dtype=np.int64), names
    blank = [i for i, c in enumerate(cells) if not c]
    if blank:
        raise HptError(f"{path}: line {lines[blank[0]]} has an empty '{column}' label ({len(blank)} rows in all); "
                       "every row needs a class name")
    names = sorted(set(cells))
    index = {name: j for j, name in enumerate(names)}
    return np.array([index[c] for c in cells], dtype=np.int64), names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(cell: str, uncertain: float, column: str, line: int, path: Path) -> tuple[float, bool, bool]:
    """(value, was empty, was -1) with empty -> 0 and -1 -> the uncertain policy."""
    text = cell.strip()
    if not text:
        return 0.0, True, False
    try:
        value = float(text)
    except ValueError:
        raise HptError(f"{path}: line {line}, column '{column}' holds {cell!r}, not a number; "
                       "label columns must be numeric (0, 1, -1 or empty)") from None
    if value == -1.0:
        return uncertain, False, True
    return value, False, False


def _note(path: Path, empty: int, unsure: int, policy: str) -> None:
    if empty or unsure:
        log.info("%s: %d empty label cells read as 0, %d uncertain (-1) read as %s (uncertain=%s)",
                 path, empty, unsure, 1 if policy == "ones" else 0, policy)
