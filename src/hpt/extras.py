"""Optional dependencies, imported only where they are used, with one message naming the extra that installs them.

``pip install 'hpt[dicom]'`` adds pydicom (``dicom:`` data), ``pip install 'hpt[tiff]'`` adds tifffile (16-bit and
multi-channel TIFF files).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hpt.errors import MissingExtraError

#: module -> the extra of pyproject.toml that installs it
EXTRAS: dict[str, str] = {"pydicom": "dicom", "tifffile": "tiff"}
#: module -> what it is needed for (``hpt doctor`` lists them)
USES: dict[str, str] = {"pydicom": "DICOM folders and lists (dicom: data)",
                        "tifffile": "16-bit and multi-channel TIFF images"}


def missing_extra(module: str, purpose: str) -> MissingExtraError:
    """The error for a missing optional module, e.g. "reading DICOM files needs pydicom: pip install 'hpt[dicom]'"."""
    return MissingExtraError(f"{purpose} needs {module}: pip install 'hpt[{EXTRAS[module]}]'")


def import_extra(module: str, purpose: str) -> ModuleType:
    """Import an optional module, or raise :func:`missing_extra`'s one-line error."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(module, purpose) from None


def has_extra(module: str) -> bool:
    """Whether the optional module can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
