"""Shared by the bench scripts (run as `python bench/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def astronaut_photo(folder: Path | None = None) -> Path:
    """skimage's astronaut (a real face that ships inside a package) written as a PNG to tune from."""
    import cv2
    import skimage.data

    path = Path(folder or tempfile.mkdtemp()) / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path
