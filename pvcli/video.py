"""mp4 in and out. Writes go to a temporary file that is renamed into place. The JSON record
(prompt, seed, identity, ...) goes into the mp4's `comment` tag."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np

from .errors import PVError
from .store import atomic_write_file


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def check_video_path(path: Path) -> Path:
    """Refuse an output path pv cannot write, before any work is done."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise PVError(f"output must be an .mp4 file, got {path.name}")
    if path.is_dir():
        raise PVError(f"output {path} is a folder, not an .mp4 file")
    return path


def write_mp4(frames: np.ndarray, path: Path, fps: int, metadata: dict | None = None) -> Path:
    """frames: (F, H, W, 3) uint8 RGB."""
    from moviepy import ImageSequenceClip

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    path = check_video_path(path)
    params = ["-movflags", "+faststart"]
    if metadata:
        params += ["-metadata", f"comment={json.dumps(metadata, sort_keys=True)}"]

    def write(tmp: Path) -> None:
        clip = ImageSequenceClip(list(frames), fps=fps)
        clip.write_videofile(str(tmp), fps=fps, codec="libx264", audio=False, logger=None, preset="medium",
                             pixel_format="yuv420p", ffmpeg_params=params)

    try:
        return atomic_write_file(path, write, suffix=".tmp.mp4")  # moviepy picks the format by suffix
    except OSError as exc:
        raise PVError(f"cannot write {path}: {exc}") from None


def read_frames(path: Path) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise PVError(f"video not found: {path}")
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
    except (RuntimeError, StopIteration) as exc:
        raise PVError(f"cannot read {path} as a video: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def read_metadata(path: Path) -> dict:
    """The JSON record pv wrote into the `comment` tag ({} if none)."""
    out = subprocess.run([_ffmpeg(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                         capture_output=True, text=True, check=False)
    # json.dumps never writes a raw newline, so the tag is one line; ffmetadata escapes
    # '=', ';', '#' and '\\' with a backslash.
    line = next((ln for ln in out.stdout.split("\n") if ln.startswith("comment=")), None)
    if line is None:
        return {}
    unescaped = re.sub(r"\\(.)", r"\1", line[len("comment="):])
    try:
        return json.loads(unescaped)
    except json.JSONDecodeError:
        return {}


VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".gif", ".avi")


def read_source(source: str | Path) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 RGB from a video, a folder of images (sorted by name) or one image."""
    from .engine.identity import IMAGE_SUFFIXES, load_image

    path = Path(source).expanduser()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise PVError(f"no images in folder {source}")
        frames = [load_image(p) for p in images]
        if len({f.shape for f in frames}) > 1:
            raise PVError(f"the images in {source} differ in size")
        return np.stack(frames)
    if not path.is_file():
        raise PVError(f"not found: {source}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(path)[None]
    frames = read_frames(path)
    if not len(frames):
        raise PVError(f"{source} has no frames")
    return frames


def resample(frames: np.ndarray, count: int, height: int, width: int) -> np.ndarray:
    """`count` frames spread evenly over `frames` (one image repeats), each resized to width x height."""
    import cv2

    idx = np.linspace(0, len(frames) - 1, count).round().astype(int) if len(frames) > 1 else np.zeros(count, int)
    return np.stack([cv2.resize(frames[i], (width, height), interpolation=cv2.INTER_AREA) for i in idx])
