"""csv data sets: CheXpert-style lists with single-label, multi-label, uncertain labels and split columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpt.data import CsvDataset, open_dataset
from hpt.errors import HptError


def images(root: Path, names: list[str], size: tuple[int, int] = (7, 4)) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        arr = np.full((size[1], size[0]), i, dtype=np.uint8)
        Image.fromarray(arr).save(root / name)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture()
def chexpert(tmp_path: Path) -> Path:
    """A CheXpert-like layout: root/CheXpert-small/train.csv with paths relative to root."""
    names = [f"CheXpert-small/train/p{i}/view1.png" for i in range(6)]
    images(tmp_path, names)
    return write_csv(tmp_path / "CheXpert-small" / "train.csv", [
        "Path,Sex,Atelectasis,Edema,No Finding",
        f"{names[0]},F,1.0,,1",
        f"{names[1]},M,-1.0,0.0,",
        f"{names[2]},M,0.0,1.0,",
        f"{names[3]},F,,-1,1.0",
        f"{names[4]},F,1,1,",
        f"{names[5]},M,0,0,1",
    ])


def test_multilabel_uzeros_by_default(chexpert: Path) -> None:
    root = chexpert.parent.parent
    ds = open_dataset(f"csv:{chexpert}?path_column=Path&label_columns=Atelectasis,Edema&root={root}")
    assert isinstance(ds, CsvDataset) and ds.multilabel and ds.num_classes == 2
    assert ds.class_names == ["Atelectasis", "Edema"]
    assert ds.labels is not None
    assert ds.labels.tolist() == [[1, 0], [0, 0], [0, 1], [0, 0], [1, 1], [0, 0]]
    image, label = ds[2]
    assert image.shape == (1, 4, 7) and int(image[0, 0, 0]) == 2 and label.tolist() == [0, 1]


def test_uncertain_ones(chexpert: Path) -> None:
    root = chexpert.parent.parent
    ds = open_dataset({"kind": "csv", "path": str(chexpert), "path_column": "Path", "root": str(root),
                       "label_columns": ["Atelectasis", "Edema"], "uncertain": "ones"})
    assert ds.labels is not None and ds.labels[1].tolist() == [1, 0] and ds.labels[3].tolist() == [0, 1]


def test_single_label_numeric_column(chexpert: Path) -> None:
    root = chexpert.parent.parent
    ds = open_dataset(f"csv:{chexpert}?path_column=Path&label_columns=No%20Finding&root={root}")
    assert not ds.multilabel and ds.num_classes == 2 and ds.class_names == ["0", "1"]
    assert ds.labels is not None and ds.labels.tolist() == [1, 0, 0, 1, 0, 1]


def test_single_label_text_column_and_unlabelled(chexpert: Path) -> None:
    root = chexpert.parent.parent
    ds = open_dataset(f"csv:{chexpert}?path_column=Path&label_columns=Sex&root={root}")
    assert ds.class_names == ["F", "M"] and ds.labels is not None and ds.labels.tolist() == [0, 1, 1, 0, 0, 1]
    plain = open_dataset(f"csv:{chexpert}?path_column=Path&root={root}")
    assert plain.labels is None and int(plain[0][1]) == -1


def test_paths_relative_to_csv_folder_by_default(tmp_path: Path) -> None:
    images(tmp_path / "imgs", ["a.png", "b.png"])
    path = write_csv(tmp_path / "list.csv", ["path,label", "imgs/a.png,cat", "imgs/b.png,dog"])
    ds = open_dataset(str(path) + "?label_columns=label")
    assert len(ds) == 2 and ds.class_names == ["cat", "dog"]


def test_missing_path_column_lists_columns(chexpert: Path) -> None:
    with pytest.raises(HptError) as err:
        open_dataset(f"csv:{chexpert}?path_column=path")
    msg = str(err.value)
    assert "no column 'path'" in msg and "did you mean 'Path'" in msg
    assert "Path, Sex, Atelectasis, Edema, No Finding" in msg


def test_missing_label_column(chexpert: Path) -> None:
    with pytest.raises(HptError, match="no column 'Edma'.*did you mean 'Edema'"):
        open_dataset(f"csv:{chexpert}?path_column=Path&label_columns=Atelectasis,Edma")


def test_missing_files_listed(tmp_path: Path) -> None:
    images(tmp_path, ["ok.png"])
    rows = ["path"] + ["ok.png"] + [f"gone{i}.png" for i in range(12)]
    path = write_csv(tmp_path / "l.csv", rows)
    with pytest.raises(HptError) as err:
        open_dataset(f"csv:{path}")
    msg = str(err.value)
    assert msg.startswith("12 image files listed in") and "gone0.png" in msg and "and 2 more" in msg
    assert "root=" in msg
    with pytest.raises(HptError, match="12 image files"):  # missing is not "corrupt": skip_corrupt does not hide it
        open_dataset(f"csv:{path}?skip_corrupt=true")


def test_split_column(tmp_path: Path) -> None:
    images(tmp_path, ["a.png", "b.png", "c.png"])
    path = write_csv(tmp_path / "l.csv", ["path,label,split", "a.png,0,train", "b.png,2,val", "c.png,1,train"])
    train = open_dataset(f"csv:{path}?label_columns=label")
    val = open_dataset(f"csv:{path}?label_columns=label&split=val")
    assert len(train) == 2 and len(val) == 1
    assert val.num_classes == 3 and val.labels is not None and val.labels.tolist() == [2]
    assert len(open_dataset(f"csv:{path}?split=all")) == 3
    with pytest.raises(HptError, match="values in that column: train, val"):
        open_dataset(f"csv:{path}?split=test")


def test_no_split_column_only_train(tmp_path: Path) -> None:
    images(tmp_path, ["a.png"])
    path = write_csv(tmp_path / "l.csv", ["path", "a.png"])
    with pytest.raises(HptError, match="no 'split' column"):
        open_dataset(f"csv:{path}?split=val")


def test_corrupt_and_mixed_sizes_shared_with_folder(tmp_path: Path) -> None:
    images(tmp_path, ["a.png"], size=(8, 8))
    images(tmp_path, ["b.png"], size=(4, 4))
    (tmp_path / "c.png").write_bytes(b"garbage")
    path = write_csv(tmp_path / "l.csv", ["path", "a.png", "b.png", "c.png"])
    with pytest.raises(HptError, match="1 of 3 image files cannot be read: c.png"):
        open_dataset(f"csv:{path}")
    with pytest.raises(HptError, match=r"mixed sizes \(8x8 in a.png, 4x4 in b.png\)"):
        open_dataset(f"csv:{path}?skip_corrupt=true")
    ds = open_dataset(f"csv:{path}?skip_corrupt=true&size=6")
    assert len(ds) == 2 and ds.skipped and ds.get_batch([0, 1])[0].shape == (2, 1, 6, 6)


def test_bad_label_values(tmp_path: Path) -> None:
    images(tmp_path, ["a.png"])
    path = write_csv(tmp_path / "l.csv", ["path,x,y", "a.png,2,1"])
    with pytest.raises(HptError, match="line 2, column 'x' holds '2'"):
        open_dataset(f"csv:{path}?label_columns=x,y")
    path = write_csv(tmp_path / "l.csv", ["path,x,y", "a.png,1"])
    with pytest.raises(HptError, match="line 2 has 2 fields but the header has 3"):
        open_dataset(f"csv:{path}")
