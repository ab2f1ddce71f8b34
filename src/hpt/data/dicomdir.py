"""The ``dicom:`` data kind: DICOM files under a folder, or listed in a text file.

``dicom:DIR`` reads the ``.dcm``/``.dicom`` files under DIR laid out like a folder data set (class subfolders give
labels, split subfolders give splits); ``dicom:LIST.txt`` reads the files a text file lists, one path a line
(relative to the list's folder; blank lines and ``#`` comments skipped), unlabelled. How each file becomes an
image (rescale, window, MONOCHROME1): hpt.data.dicom.
"""

from __future__ import annotations

from pathlib import Path

from hpt.data.dicom import DICOM_EXTENSIONS, is_dicom_file, require_pydicom
from hpt.data.files import FileImageDataset
from hpt.data.folder import FolderDataset
from hpt.data.spec import DataSpec
from hpt.errors import HptError


class DicomDataset(FolderDataset):
    """DICOM files under a folder (labels from class subfolders) or listed in a text file (unlabelled)."""

    kind = "dicom"
    accepts = staticmethod(is_dicom_file)
    what = f"DICOM files ({', '.join(DICOM_EXTENSIONS)})"

    def __init__(self, spec: DataSpec, cache_dir: Path | None = None) -> None:
        require_pydicom()  # one message naming the extra, before any file is looked at
        path = spec.path.expanduser()
        if path.is_dir() or not path.exists():
            super().__init__(spec, cache_dir)
            return
        if spec.kind != self.kind:
            raise ValueError(f"DicomDataset needs a dicom spec, got {spec.kind}")
        if spec.split not in ("train", "all"):
            raise HptError(f"a list of DICOM files ({path}) has no splits; remove split={spec.split} or list the "
                           "split's files in a list of their own")
        files = _read_list(path)
        FileImageDataset._setup(self, spec, files, None, None, None, path.parent,
                                f"fix or remove those lines of {path}", path)


def _read_list(path: Path) -> list[str]:
    """The files a list names, relative paths taken from the list's folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise HptError(f"cannot read the list of DICOM files {path} ({err}); give a folder or a text file "
                       "with one path a line") from None
    folder = path.parent
    files = [str(folder / line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]
    if not files:
        raise HptError(f"{path} lists no DICOM files; write one path a line (relative to its folder)")
    return files
