"""Self-contained HTML pages (`pv report`, `pv eval --report`): every image, plot and clip is
inlined as a data URI (PNG/JPEG stills, animated WebP clips, matplotlib plots as PNG), the style
and the table sorting are inline too, so the file opens anywhere with no network. The pages are
Jinja2 templates (pvcli/templates) with autoescape: every value (an identity's name and note, a
prompt, a file name, a setting) is text, never markup. Written atomically: a failure leaves the
old file (or none), never half a page."""

from __future__ import annotations

import base64
import functools
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PVError

PREVIEW_SIDE = 256  # longest side of an inlined clip or photo
PREVIEW_FRAMES = 48  # at most this many frames of a clip are inlined (spread evenly)
# matplotlib's default colour cycle (C0, C1, ...): the lines of a plot, named in the page beside it
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")

def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass
class Image:
    """An inlined image of a page: `uri` is a data URI pv built from pixels it encoded itself."""

    uri: str
    alt: str
    width: int | None = None
    cls: str = ""
    title: str = ""


def image(data: bytes, mime: str, alt: str, width: int | None = None, cls: str = "", title: str = "") -> Image:
    return Image(data_uri(data, mime), alt, int(width) if width else None, cls, title)


def fit(rgb: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """`rgb` scaled down so that its longest side is at most `side` (never up)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def animation(frames: np.ndarray, fps: float, side: int = PREVIEW_SIDE,
              max_frames: int = PREVIEW_FRAMES) -> tuple[bytes, str]:
    """(bytes, mime) of an animated image of (F, H, W, 3) uint8 frames, looping: WebP (lossy,
    quality 80) where Pillow has it, else GIF. Long clips keep `max_frames` frames spread evenly
    (the frame time stretched to keep the clip's duration)."""
    from PIL import Image, features

    frames = np.asarray(frames)
    duration_ms = 1000.0 / max(fps or 8.0, 1e-3)
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        duration_ms *= len(frames) / max_frames
        frames = frames[keep]
    images = [Image.fromarray(np.ascontiguousarray(fit(f, side))) for f in frames]
    buf = io.BytesIO()
    if features.check("webp_anim"):
        images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=round(duration_ms),
                       loop=0, quality=80, method=4)
        return buf.getvalue(), "image/webp"
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(duration_ms), loop=0)
    return buf.getvalue(), "image/gif"


def display_width(height_width: tuple[int, int], side: int) -> int:
    """The width to show an image at so its longest side is `side` px (small clips are enlarged
    on screen, pixelated, never in the file)."""
    h, w = height_width
    return max(1, round(side * w / max(h, w)))


def plain(text) -> str:
    """Text for a plot as it is: matplotlib reads $...$ as math (a crafted "$\\frac" fails to draw)."""
    return str(text).replace("$", r"\$")


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def line_panels(panels: list[tuple[str, list, dict[str, list]]]) -> bytes:
    """One PNG of side-by-side line plots: each panel (title, x values, {label: y values}); None
    y values are gaps; few points get markers."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(3.6 * len(panels), 2.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xs, series) in zip(axes, panels, strict=True):
        for label, ys in series.items():
            y = np.array([np.nan if v is None else float(v) for v in ys], dtype=float)
            ax.plot(xs, y, marker="o" if len(xs) <= 30 else None, markersize=4, label=plain(label))
        ax.set_title(plain(title), fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return figure_png(fig)


def bars(title: str, labels: list[str], values: list[float | None]) -> bytes:
    """A small bar chart (None: a missing bar), e.g. held-out similarity before/after."""
    fig = _figure(3.2, 2.4)
    ax = fig.subplots()
    vals = [np.nan if v is None else float(v) for v in values]
    ax.bar([plain(label) for label in labels], vals, color=["#8a94b2", "#2f6fd0"][: len(labels)] + ["#2f6fd0"] * max(0, len(labels) - 2))
    for x, v in enumerate(vals):
        if not np.isnan(v):
            ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    ax.axhline(0, color="#333", linewidth=0.6)
    ax.set_title(plain(title), fontsize=10)
    ax.tick_params(labelsize=8)
    return figure_png(fig)


def sparkline(xs: list[int], series: dict[str, list[float | None]], ymax: float = 1.0) -> bytes:
    """A small PNG of per-frame values (0..ymax) against the frame index, one line per series;
    frames without a value are marked with a red tick at the bottom."""
    fig = _figure(2.0, 0.75)
    ax = fig.subplots()
    for k, (label, ys) in enumerate(series.items()):
        y = np.array([np.nan if v is None else float(v) for v in ys], dtype=float)
        ax.plot(xs, y, marker="o", markersize=2, linewidth=1, label=plain(label), color=SERIES_COLOURS[k % len(SERIES_COLOURS)])
        missing = [x for x, v in zip(xs, ys, strict=True) if v is None]
        if missing:
            ax.plot(missing, [0.0] * len(missing), "|", color="#c0392b", markersize=6)
    ax.set_ylim(-0.03, ymax)
    ax.set_xlim(min(xs, default=0) - 0.5, max(xs, default=0) + 0.5)
    ax.set_yticks([0, ymax])
    ax.tick_params(labelsize=6, length=2, pad=1)
    ax.set_xticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return figure_png(fig)


def number(value, digits: int = 4, trim: bool = False) -> str:
    """A table cell's number: `digits` decimals (`trim`: without trailing zeros); None is "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
        return text.rstrip("0").rstrip(".") if trim and "." in text else text
    return str(value)


@functools.cache
def environment():
    """Jinja2 over the templates in pvcli/templates, autoescaping every value (HTML and attributes);
    an unknown name in a template is an error, never an empty string."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pvcli", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, finalize=_text)
    env.filters["number"] = number
    return env


def _text(value):
    """Every value a template prints: None is empty, pv's own markup (a macro's output) stays, all
    else is escaped as `html.escape` does (quotes too), then left alone by autoescape."""
    from markupsafe import Markup

    if value is None:
        return ""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value)))


def render(template: str, **values) -> str:
    """The page `template` (a file of pvcli/templates) filled with `values`, each escaped."""
    return environment().get_template(template).render(**values)


def check_page_path(path: Path | str, flag: str, example: str) -> Path:
    """An output path a page can be written to, refused in one line before any work."""
    from .paths import check_output

    return check_output(path, flag, example)


def write_page(path: Path, text: str, flag: str) -> int:
    """Write the page atomically; returns its size in bytes."""
    from .paths import write_error
    from .store import atomic_write_bytes

    data = text.encode("utf-8")
    try:
        atomic_write_bytes(Path(path).expanduser(), data)
    except OSError as exc:
        raise write_error(path, flag, exc) from None
    return len(data)


def read_clip(path: Path) -> np.ndarray | None:
    """A clip's frames for a preview, or None when it cannot be read (the page says so)."""
    from .video import read_frames

    try:
        frames = read_frames(Path(path))
    except PVError:
        return None
    return frames if len(frames) else None
