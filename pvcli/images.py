"""Image files in: the suffixes pv reads, photo arguments (files, folders, globs) expanded to
paths, and decoding to RGB arrays whose errors name the file. Media code below the engine: the
video module and the engine both read images through it."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from .errors import PVError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def expand_photos(items: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths."""
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PVError(f"no images in folder {item}")
            paths += found
        elif p.is_file():
            paths.append(p)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(p)) if Path(q).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PVError(f"no images match {item}")
            paths += found
        else:
            raise PVError(f"photo not found: {item}")
    return paths


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); errors name the file."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None:
        raise PVError(f"cannot read {path} as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
