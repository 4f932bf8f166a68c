"""Image files in: the suffixes pv reads, photo arguments (files, folders, globs) expanded to
paths, and decoding to RGB arrays whose errors name the file. Media code below the engine: the
video module and the engine both read images through it.

The pixel limits live here, for every reader: an image (or a video frame) claims at most
MAX_PIXELS in its header, and a clip at most MAX_CLIP_PIXELS over all its frames. Both are checked
from the header (Pillow's lazy open, a video's stream metadata) before anything is decoded, so a
file of a few bytes that claims a huge image is refused at once instead of costing minutes and
gigabytes."""

from __future__ import annotations

import glob
import io
import warnings
from pathlib import Path

import numpy as np

from .errors import PVError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 8192 * 8192  # one image or video frame: 64 megapixels (8192 x 8192; 192 MiB as RGB)
MAX_CLIP_PIXELS = 2**30  # all frames of one clip: 1 gigapixel (3 GiB as RGB; 1080p x 517 frames)
SIZE_HINT = "pv reads images and frames up to 8192 x 8192 pixels (64 megapixels) and clips up to 1 gigapixel " \
            "in all; scale it down or trim it first"


def megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:,.1f} megapixels" if pixels < 1e9 else f"{pixels / 1e9:,.1f} gigapixels"


def check_pixels(label: str, width: int, height: int, frames: int = 1) -> None:
    """Refuse a size over the limits (MAX_PIXELS per image or frame, MAX_CLIP_PIXELS per clip)
    before it is decoded; `label` names the input ("photo face.png", "--video clip.mp4")."""
    if width * height > MAX_PIXELS:
        raise PVError(f"{label} claims a {width} x {height} image ({megapixels(width * height)}), over pv's limit of "
                      f"{megapixels(MAX_PIXELS)} per image", SIZE_HINT)
    if frames * width * height > MAX_CLIP_PIXELS:
        raise PVError(f"{label} claims {frames} frames of {width} x {height} ({megapixels(frames * width * height)}), "
                      f"over pv's limit of {megapixels(MAX_CLIP_PIXELS)} per clip", SIZE_HINT)


def header_size(source: Path | bytes) -> tuple[int, int, int] | None:
    """(width, height, frames) an image file (or its bytes) claims in its header, read by
    Pillow's lazy open without decoding a pixel; None when Pillow cannot tell (the decoder then
    says whether it is an image). `frames` counts an animation's frames (1 for a still)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own DecompressionBombWarning: the limit is ours
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # size it ourselves, with the numbers
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                width, height = img.size
                frames = int(getattr(img, "n_frames", 1) or 1) if width * height <= MAX_PIXELS else 1
                return width, height, frames
        except Exception:  # noqa: BLE001 - not an image Pillow knows, or a damaged header: the decoder decides
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def check_image_size(source: Path | bytes, label: str) -> None:
    """What the header of an image claims, checked against the limits before decoding."""
    size = header_size(source)
    if size is not None:
        check_pixels(label, *size)


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
    """RGB uint8 (H, W, 3); errors name the file. Its size is checked from the header first."""
    import cv2

    if path.is_file():
        check_image_size(path, f"image {path}")
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None:
        raise PVError(f"cannot read {path} as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
