"""A user's paths: what is wrong with one, said in one line that names it, before any work is
done (an output folder that cannot be written, an input that is missing, empty or of the wrong
kind). These checks run before any model loads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import PVError


def _named(flag: str, path: Path) -> str:
    return f"{flag} {path}" if flag else str(path)


def check_parent(path: Path | str, flag: str = "") -> Path:
    """Refuse an output path whose folder pv could not write, before any work: a parent path that
    is a file, or a folder that is not writable. Missing folders are fine (they are created when
    the file is written)."""
    path = Path(path).expanduser()
    ancestor = path.parent
    again = f"choose another {flag}" if flag.startswith("-") else f"choose another {flag or 'output'} path"
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            raise PVError(f"cannot write {_named(flag, path)}: {ancestor} is a link to a folder that does not exist",
                          again)
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise PVError(f"cannot write {_named(flag, path)}: {ancestor} is a file, not a folder", again)
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise PVError(f"cannot write {_named(flag, path)}: the folder {ancestor} is not writable", again)
    return path


def check_output(path: Path | str, flag: str = "", example: str = "NAME") -> Path:
    """`check_parent`, and no folder where the output file goes (`example`: a file name to suggest)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PVError(f"{_named(flag, path)} is a folder, not a file",
                      f"give a file name, e.g. {flag + ' ' if flag else ''}{path / example}")
    return check_parent(path, flag)


def write_error(path: Path | str, flag: str, exc: OSError) -> PVError:
    """An OSError while writing the user's file `path` (or pv's temporary file beside it) as one
    line about the user's path."""
    reason = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "the file system is read-only", errno.ENOTDIR: "a part of the path is a file, not a folder",
              errno.EEXIST: "a part of the path is a file, not a folder", errno.EISDIR: "it is a folder",
              errno.ENOENT: "its folder does not exist or was removed"}.get(exc.errno, exc.strerror or str(exc))
    return PVError(f"cannot write {_named(flag, Path(path))}: {reason}",
                   f"choose another {flag if flag.startswith('-') else (flag or 'output') + ' path'}; nothing was written")


def check_input_file(path: Path | str, flag: str, kind: str = "file") -> Path:
    """An input file that exists, is a file and is not empty."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PVError(f"{flag} {path}: {kind} not found", "check the path")
    if p.is_dir():
        raise PVError(f"{flag} {path} is a folder, not a {kind}")
    if p.stat().st_size == 0:
        raise PVError(f"{flag} {path} is an empty file (0 bytes)")
    return p


def read_text(path: Path | str, flag: str) -> str:
    """A UTF-8 text file the user named, or one line saying why not."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise PVError(f"{flag} {path} is a folder, not a text file")
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PVError(f"{flag} {path}: file not found", "check the path") from None
    except UnicodeDecodeError:
        raise PVError(f"{flag} {path} is not a UTF-8 text file", "give a text file, one prompt per line") from None
    except OSError as exc:
        raise PVError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def check_photos(items: list[str]) -> None:
    """Reference photos that exist and decode as images, checked before any model loads (a
    reduced decode: cheap even for large photos)."""
    import cv2
    import numpy as np

    from .images import check_image_size, expand_photos

    for path in expand_photos(items):
        try:
            data = np.fromfile(str(path), dtype=np.uint8)
        except OSError as exc:
            raise PVError(f"cannot read photo {path}: {exc.strerror or exc}") from None
        if not data.size:
            raise PVError(f"photo {path} is an empty file (0 bytes)", "give JPEG, PNG, BMP, WebP or TIFF photos")
        check_image_size(data.tobytes(), f"photo {path}")
        if cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
            raise PVError(f"photo {path} is not an image pv can read", "give JPEG, PNG, BMP, WebP or TIFF photos")
