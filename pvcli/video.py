"""Clips in and out. Output by suffix: .mp4 (default), .gif, .webp (animated), or a path without
a suffix: a folder of PNG frames. Writes go to a temporary file or folder renamed into place.
The JSON record (prompt, seed, identity, pv version, ...) travels inside: the mp4 `comment` tag,
the GIF comment, the WebP EXIF image description, each PNG's `pv` text chunk.

Libraries, one job each: PyAV reads video files (stream metadata, the `comment` tag, frames: no
ffmpeg text is parsed), moviepy writes .mp4 (through imageio-ffmpeg's ffmpeg), Pillow reads and
writes GIF, WebP and PNG frames, OpenCV decodes still images (images.py). Every reader checks the
size a file claims against images.MAX_PIXELS / MAX_CLIP_PIXELS before it decodes."""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PVError
from .paths import check_parent, write_error
from .store import atomic_write_file, make_dirs, make_temp, swap_into_place, sweep_stale

OUTPUT_SUFFIXES = (".mp4", ".gif", ".webp")
FRAME_PATTERN = "frame_{:05d}.png"
EXIF_DESCRIPTION = 0x010E


def check_video_path(path: Path) -> Path:
    """Refuse an output path pv cannot write, before any work is done."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix and suffix not in OUTPUT_SUFFIXES:
        raise PVError(f"output must be an .mp4, .gif or .webp file, or a folder (no suffix) for PNG frames; "
                      f"got {path.name}")
    if suffix and path.is_dir():
        raise PVError(f"output {path} is a folder, not a {suffix} file")
    if not suffix and path.exists() and not is_frames_folder(path):
        raise PVError(f"output {path} exists and is not a folder of pv frames", "choose another -o")
    return check_parent(path, "output")


def is_frames_folder(path: Path) -> bool:
    return path.is_dir() and all(re.fullmatch(r"frame_\d{5}\.png", p.name) for p in path.iterdir())


def write_video(frames: np.ndarray, path: Path, fps: int, metadata: dict | None = None) -> Path:
    """frames: (F, H, W, 3) uint8 RGB, written in the format the path's suffix names."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    path = check_video_path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".mp4":
            return write_mp4(frames, path, fps, metadata)
        if suffix in (".gif", ".webp"):
            return atomic_write_file(path, lambda tmp: _write_animation(frames, tmp, suffix, fps, metadata),
                                     suffix=f".tmp{suffix}")
        return _write_frames(frames, path, metadata)
    except OSError as exc:
        raise write_error(path, "output", exc) from None


def _write_animation(frames: np.ndarray, tmp: Path, suffix: str, fps: int, metadata: dict | None) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    text = json.dumps(metadata or {}, sort_keys=True)
    extra: dict = {"comment": text} if suffix == ".gif" else {"lossless": True, "exif": _exif(text)}
    images[0].save(tmp, format=suffix[1:].upper(), save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0, **extra)


def _exif(text: str) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[EXIF_DESCRIPTION] = text
    return exif.tobytes()


def _write_frames(frames: np.ndarray, path: Path, metadata: dict | None) -> Path:
    """A folder of PNG frames, written beside `path` and swapped into place whole."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    make_dirs(path.parent)
    sweep_stale(path)
    tmp = make_temp(path.parent, path.name, ".tmp", folder=True)
    try:
        info = PngInfo()
        info.add_text("pv", json.dumps(metadata or {}, sort_keys=True))
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / FRAME_PATTERN.format(i), pnginfo=info)
        swap_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_mp4(frames: np.ndarray, path: Path, fps: int, metadata: dict | None = None) -> Path:
    """frames: (F, H, W, 3) uint8 RGB."""
    from moviepy import ImageSequenceClip

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise PVError(f"output must be an .mp4 file, got {path.name}")
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
        raise write_error(path, "output", exc) from None


VIDEO_HINT = "give a video (.mp4, .mov, .webm, .mkv, .avi, .gif, .webp), a folder of frames or an image"


def _label(path, what: str) -> str:
    """The input as the user gave it: "--video clip.mp4", "--control canny=clip.mp4"."""
    return f"{what}{path}" if what.endswith("=") else f"{what} {path}" if what else str(path)


def _unreadable(path: Path, what: str) -> PVError | None:
    """Why `path` cannot be a clip, when it is plain from the file itself (missing, empty, a
    text or other non-media file), else None."""
    if not path.exists():
        return PVError(f"{_label(path, what)}: file not found", "check the path")
    if path.is_file() and path.stat().st_size == 0:
        return PVError(f"{_label(path, what)} is an empty file (0 bytes), not a video or an image", VIDEO_HINT)
    return None


@dataclass
class VideoInfo:
    """What a video file's container says of its first video stream, read by PyAV without
    decoding a frame: the frame size, the frame count (None when the container does not say: it
    is then counted as it decodes), the frame rate, and the container's tags (lower-case keys)."""

    width: int
    height: int
    frames: int | None
    fps: float | None
    tags: dict


def _av_reason(exc: Exception) -> str:
    """FFmpeg's own reason ("Invalid data found when processing input"), without the file name."""
    reason = getattr(exc, "strerror", None) or str(exc).split(": '")[0] or type(exc).__name__
    return str(reason).strip().rstrip(".")


def _video_error(path: Path, what: str, reason: str) -> PVError:
    kind = f" ({path.suffix} file)" if path.suffix and path.suffix.lower() not in VIDEO_SUFFIXES else ""
    return PVError(f"cannot read {_label(path, what)} as a video{kind}: {reason}", VIDEO_HINT)


@contextmanager
def _open_video(path: Path, what: str):
    """The PyAV container and its first video stream; what FFmpeg cannot open is one PVError."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise _video_error(path, what, _av_reason(exc)) from None
    try:
        if not container.streams.video:
            raise _video_error(path, what, "it holds no video stream")
        yield container, container.streams.video[0]
    finally:
        container.close()


def _info(container, stream) -> VideoInfo:
    width, height = int(stream.codec_context.width or stream.width or 0), int(stream.codec_context.height or 0)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    frames = int(stream.frames or 0) or None
    if frames is None and fps:  # mkv, webm: no frame count; the duration tells it
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else \
            (container.duration / 1e6 if container.duration else None)
        frames = max(1, round(seconds * fps)) if seconds else None
    tags = {str(k).lower(): v for k, v in (container.metadata or {}).items()}
    return VideoInfo(width, height, frames, fps, tags)


def video_info(path: Path, what: str = "") -> VideoInfo:
    """The container's own account of a video file (no frame decoded); refuses what FFmpeg cannot
    open and a size over pv's pixel limits (images.MAX_PIXELS per frame, MAX_CLIP_PIXELS per clip)."""
    from .images import check_pixels

    path = Path(path)
    with _open_video(path, what) as (container, stream):
        info = _info(container, stream)
    check_pixels(_label(path, what), info.width, info.height, info.frames or 1)
    return info


def _decode(path: Path, what: str, limit: int | None = None) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB frames of a video file (at most `limit`), the size checked from the
    stream's metadata before the first frame decodes and counted again as frames come (a
    container that under-states its frame count is stopped at the clip limit)."""
    import av

    from .images import MAX_CLIP_PIXELS, check_pixels

    label = _label(path, what)
    frames: list[np.ndarray] = []
    with _open_video(path, what) as (container, stream):
        info = _info(container, stream)
        check_pixels(label, info.width, info.height, info.frames or 1)
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(rgb)
                if (len(frames) + 1) * rgb.shape[0] * rgb.shape[1] > MAX_CLIP_PIXELS:
                    check_pixels(label, rgb.shape[1], rgb.shape[0], len(frames) + 1)
                if limit is not None and len(frames) >= limit:
                    break
        except av.error.FFmpegError as exc:
            where = f" at frame {len(frames) + 1}" if frames else ""
            raise _video_error(path, what, f"{_av_reason(exc)}{where}") from None
    h, w = (frames[0].shape[:2]) if frames else (info.height, info.width)
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def read_frames(path: Path, what: str = "") -> np.ndarray:
    """(F, H, W, 3) uint8 RGB of a video file, an animated GIF/WebP or a folder of frames.
    `what` names the input in errors (e.g. "--video"). Sizes over pv's pixel limits are refused
    from the header, before decoding (images.MAX_PIXELS, MAX_CLIP_PIXELS)."""
    path = Path(path)
    if path.is_dir():
        return read_source(path, what)
    if not path.is_file():
        raise PVError(f"video not found: {path}" if not what else f"{_label(path, what)}: file not found", "check the path")
    bad = _unreadable(path, what)
    if bad:
        raise bad
    if path.suffix.lower() in (".gif", ".webp"):
        return _read_animation(path, what)
    return _decode(path, what)


def _read_animation(path: Path, what: str = "") -> np.ndarray:
    from PIL import Image, ImageSequence

    from .images import check_image_size

    check_image_size(path, _label(path, what))  # the header's size and frame count, before decoding
    try:
        with Image.open(path) as img:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)])
    except (OSError, ValueError) as exc:
        raise PVError(f"cannot read {_label(path, what)} as an animation: {exc}", VIDEO_HINT) from None


def read_metadata(path: Path) -> dict:
    """The JSON record pv wrote into a clip ({} if none)."""
    path = Path(path)
    text = None
    if path.is_dir() or path.suffix.lower() in (".gif", ".webp", ".png"):
        from PIL import Image

        first = path / FRAME_PATTERN.format(0) if path.is_dir() else path
        try:
            with Image.open(first) as img:
                text = img.info.get("pv") or img.info.get("comment") or img.getexif().get(EXIF_DESCRIPTION)
        except OSError:
            return {}
    else:
        try:  # the container's `comment` tag, read by PyAV (no frame decoded)
            with _open_video(path, "") as (container, _):
                text = {str(k).lower(): v for k, v in (container.metadata or {}).items()}.get("comment")
        except PVError:
            return {}
    try:
        data = json.loads(text.decode() if isinstance(text, bytes) else text) if text else {}
    except (ValueError, UnicodeDecodeError):  # ValueError: not JSON, or a number of over 4300 digits
        return {}
    return _checked_record(path, data)


# the fields of a clip's record that pv reads back (pv eval, pv report), and what each must be
RECORD_FIELDS = {"identity": "an identity name", "prompt": "text", "negative_prompt": "text", "seed": "an integer",
                 "step": "an integer", "fps": "a number of frames per second (0 to 1000)"}


def _checked_record(path: Path, data) -> dict:
    """The record of clip `path`, its fields checked: a value pv cannot use is refused in one line
    that names the clip and its record (a clip someone else wrote, or a crafted one)."""
    import math

    from .store import NAME_RE

    if not isinstance(data, dict):
        return {}
    for key, kind in RECORD_FIELDS.items():
        value = data.get(key)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {"an identity name": isinstance(value, str) and bool(NAME_RE.match(value)),
              "text": isinstance(value, str) and len(value) <= 10_000,
              "an integer": number and isinstance(value, int) and abs(value) < 2**64}.get(
            kind, number and math.isfinite(value) and 0 <= value <= 1000)
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise PVError(f"{path}: the pv record embedded in the clip has {key} {shown}, not {kind}",
                          "re-render it with pv generate, or strip its metadata (ffmpeg -i IN -map_metadata -1 -c copy OUT)")
    return data


VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".gif", ".webp", ".avi")


def _image(path: Path, what: str) -> np.ndarray:
    from .images import check_image_size, load_image

    bad = _unreadable(path, what)
    if bad:
        raise bad
    check_image_size(path, _label(path, what))
    try:
        return load_image(path)
    except PVError:
        raise PVError(f"cannot read {_label(path, what)} as an image: not a valid {path.suffix or 'image'} file",
                      VIDEO_HINT) from None


def _folder_images(path: Path, what: str) -> list[Path]:
    from .images import IMAGE_SUFFIXES

    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise PVError(f"{_label(path, what)} is a folder with no images", VIDEO_HINT)
    return images


def read_source(source: str | Path, what: str = "") -> np.ndarray:
    """Frames (N, H, W, 3) uint8 RGB from a video, a folder of images (sorted by name) or one image.
    `what` names the input in errors (e.g. "--video", or "--control canny=" for "--control canny=clip.mp4")."""
    from .images import IMAGE_SUFFIXES

    path = Path(source).expanduser()
    if path.is_dir():
        frames = [_image(p, what) for p in _folder_images(path, what)]
        if len({f.shape for f in frames}) > 1:
            raise PVError(f"the images in {_label(source, what)} differ in size")
        return np.stack(frames)
    if not path.is_file():
        raise PVError(f"{_label(source, what)}: file not found" if what else f"not found: {source}", "check the path")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _image(path, what)[None]
    frames = read_frames(path, what)
    if not len(frames):
        raise PVError(f"{_label(source, what)} has no frames", VIDEO_HINT)
    return frames


def probe_source(source: str | Path, what: str = "") -> None:
    """What `read_source` would refuse, found cheaply before any model loads: a missing path, an
    empty or non-media file, a folder without images, a video FFmpeg cannot open, a size over pv's
    pixel limits (from the headers; only a video's first frame is decoded)."""
    from .images import IMAGE_SUFFIXES

    path = Path(source).expanduser()
    if path.is_dir():
        _image(_folder_images(path, what)[0], what)
        return
    bad = _unreadable(path, what)
    if bad:
        raise bad
    if path.suffix.lower() in IMAGE_SUFFIXES:
        _image(path, what)
        return
    if path.suffix.lower() in (".gif", ".webp"):
        _read_animation(path, what)
        return
    if not len(_decode(path, what, limit=1)):  # the size from the metadata, then one frame decodes
        raise PVError(f"{_label(source, what)} has no frames", VIDEO_HINT)
    _check_packets(path, what)


def _check_packets(path: Path, what: str) -> None:
    """Every frame's packet read from the file without decoding (cheap): a file cut short (fewer
    frames than its header lists) and a frame count over the clip limit are refused here."""
    import av

    from .images import check_pixels

    with _open_video(path, what) as (container, stream):
        info, listed = _info(container, stream), int(stream.frames or 0)
        count = 0
        try:
            for packet in container.demux(stream):
                count += bool(packet.size)
        except av.error.FFmpegError as exc:
            raise _video_error(path, what, f"{_av_reason(exc)} after {count} frames") from None
    if listed and count < listed:
        raise PVError(f"{_label(path, what)} is truncated: its header lists {listed} frames, the file holds "
                      f"{count}", "copy or export it again")
    check_pixels(_label(path, what), info.width, info.height, count)


def resample(frames: np.ndarray, count: int, height: int, width: int) -> np.ndarray:
    """`count` frames spread evenly over `frames` (one image repeats), each resized to width x height."""
    import cv2

    idx = np.linspace(0, len(frames) - 1, count).round().astype(int) if len(frames) > 1 else np.zeros(count, int)
    return np.stack([cv2.resize(frames[i], (width, height), interpolation=cv2.INTER_AREA) for i in idx])
