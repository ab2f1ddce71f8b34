"""dicom: data: rescale, windowing (file and spec), MONOCHROME1, 16-bit kept in float, damaged files, list files,
and the one-line error when pydicom is missing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpt.data import DicomDataset, channel_stats, open_dataset, parse_data_spec
from hpt.errors import HptError, MissingExtraError

pydicom = pytest.importorskip("pydicom")


def write_dicom(path: Path, pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                window: tuple[float, float] | None = None, photometric: str = "MONOCHROME2",
                bits_stored: int = 16, signed: bool = False) -> Path:
    """A tiny single-frame DICOM file with 16-bit pixel data (Explicit VR Little Endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path)
    return path


def _save(ds: Any, path: Path) -> None:
    try:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)  # pydicom 3
    except TypeError:  # pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def write_dicom_tree(root: Path, per_class: dict[str, int], side: int = 12, seed: int = 0) -> Path:
    """Class subfolders of 12-bit CT-like images (slope 1, intercept -1024, a soft-tissue window in each file)."""
    rng = np.random.default_rng(seed)
    for k, (name, count) in enumerate(per_class.items()):
        for i in range(count):
            pixels = rng.integers(0, 4096, (side, side)) // (k + 1)
            write_dicom(root / name / f"{i}.dcm", pixels, intercept=-1024.0, window=(40.0, 400.0), bits_stored=12)
    return root


def test_rescale_and_file_window(tmp_path: Path) -> None:
    # stored 1000..1200 -> HU -24..176 with intercept -1024; the window 40/400 spans -160..240
    pixels = np.array([[1000, 1100], [1200, 0]])
    write_dicom(tmp_path / "a.dcm", pixels, intercept=-1024.0, window=(40.0, 400.0))
    image = open_dataset(f"dicom:{tmp_path}")[0][0]
    expected = np.clip((pixels - 1024.0 + 160.0) / 400.0, 0, 1)
    assert image.dtype.is_floating_point and image.shape == (1, 2, 2)
    assert np.allclose(image[0].numpy(), expected, atol=1e-6)


def test_spec_window_overrides_the_file(tmp_path: Path) -> None:
    pixels = np.array([[0, 50], [100, 200]])
    write_dicom(tmp_path / "a.dcm", pixels, slope=2.0, window=(1000.0, 10.0))
    image = open_dataset(f"dicom:{tmp_path}?window=100,200")[0][0]
    assert np.allclose(image[0].numpy(), np.clip((pixels * 2.0 - 0.0) / 200.0, 0, 1), atol=1e-6)


def test_sixteen_bits_are_not_truncated_without_a_window(tmp_path: Path) -> None:
    pixels = np.array([[0, 1], [256, 65535]])  # 0 and 1 would be the same 8-bit value
    write_dicom(tmp_path / "a.dcm", pixels)
    image = open_dataset(f"dicom:{tmp_path}")[0][0][0].double().numpy()
    assert np.allclose(image, pixels / 65535.0, atol=1e-7)
    assert image[0, 1] > image[0, 0]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.array([[0, 4095]])
    write_dicom(tmp_path / "a.dcm", pixels, photometric="MONOCHROME1", bits_stored=12)
    assert open_dataset(f"dicom:{tmp_path}")[0][0][0].tolist() == [[1.0, 0.0]]


def test_class_folders_give_labels_and_stats(tmp_path: Path) -> None:
    write_dicom_tree(tmp_path, {"healthy": 3, "sick": 2})
    ds = open_dataset(f"dicom:{tmp_path}?size=8")
    assert isinstance(ds, DicomDataset) and ds.class_names == ["healthy", "sick"] and len(ds) == 5
    images, labels = ds.get_batch(range(5))
    assert images.shape == (5, 1, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1]
    mean, std = channel_stats(ds, cache_dir=tmp_path / "stats")
    assert len(mean) == 1 and mean[0] == pytest.approx(images.double().mean().item(), rel=1e-3)
    assert std[0] > 0


def test_list_file(tmp_path: Path) -> None:
    for i in range(3):
        write_dicom(tmp_path / "scans" / f"{i}.dcm", np.full((4, 4), i * 100))
    listing = tmp_path / "list.txt"
    listing.write_text("# chest scans\nscans/0.dcm\n\nscans/2.dcm\n")
    ds = open_dataset(f"dicom:{listing}")
    assert len(ds) == 2 and ds.labels is None
    with pytest.raises(HptError, match="has no splits"):
        open_dataset(f"dicom:{listing}?split=val")


def test_damaged_file_is_reported_like_a_corrupt_image(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", np.zeros((4, 4)))
    (tmp_path / "b.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(HptError, match=r"1 of 2 image files cannot be read: b\.dcm .*skip_corrupt=true"):
        open_dataset(f"dicom:{tmp_path}")
    ds = open_dataset(f"dicom:{tmp_path}?skip_corrupt=true")
    assert len(ds) == 1 and ds.skipped == [str(tmp_path / "b.dcm")]


def test_window_option_is_checked() -> None:
    assert parse_data_spec("dicom:/x?window=40,400").window == (40.0, 400.0)
    with pytest.raises(HptError, match="positive width"):
        parse_data_spec("dicom:/x?window=40,0")
    with pytest.raises(HptError, match="window applies to DICOM"):
        parse_data_spec("npz:/x.npz?window=40,400")


def test_missing_pydicom_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dicom(tmp_path / "a.dcm", np.zeros((4, 4)))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingExtraError) as caught:
        open_dataset(f"dicom:{tmp_path}")
    assert str(caught.value) == "reading DICOM files needs pydicom: pip install 'hpt[dicom]'"
