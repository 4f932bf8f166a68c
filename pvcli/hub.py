"""Loading pretrained weights for plugins: local files first (a folder, a file or the Hugging
Face cache, no network), then the hub unless HF_HUB_OFFLINE is set or it cannot be reached.
Every failure becomes one line that keeps its first cause (a damaged local file is reported as
that file's error, never as "not in the cache", and never followed by a download) and says what
to fetch or which setting to change."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import PVError


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint (HF_ENDPOINT honoured), instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from or during, outermost first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def explain(exc: BaseException) -> str:
    """One line: the error, and its first cause when that says something the error does not."""
    top, root = short(exc), short(causes(exc)[-1])
    return top if root in top else f"{top} ({root})"


def not_cached(exc: BaseException, ref: str) -> bool:
    """Whether a `local_files_only` load of hub id `ref` failed because files are missing from the
    Hugging Face cache (a download would help), rather than because what is there failed to load."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if not any((Path(constants.HF_HUB_CACHE) / f"{kind}--{ref.replace('/', '--')}").is_dir()
               for kind in ("models", "datasets", "spaces")):
        return True
    return any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in causes(exc))


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def looks_like_path(ref: str) -> bool:
    """A reference no hub id can be: ./x, ../x, /x, ~/x, a/b/c, or a model file's name."""
    return (ref.startswith((".", "/", "~", "\\")) or not REPO_ID.fullmatch(ref)
            or ref.lower().endswith((".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json")))


def load_pretrained(setting: str, ref: str, loader, offline_hint: str = "run offline with --profile tiny",
                    what: str | None = None, **kwargs):
    """`loader(ref, local_files_only=..., **kwargs)`; `setting` is the settings path that names
    `ref` (e.g. backbone.options.base_model), quoted in the error; `what` names the model in it
    (default: the setting's last part). A local file or folder is loaded from there and nowhere
    else: its failure is reported with its own cause, never as a cache miss and never followed by
    a download. A hub id is tried in the local cache first; only files missing there are fetched,
    and a cached copy that fails to load is reported as such."""
    what = what or setting.rsplit(".", 1)[-1]
    path = Path(ref).expanduser()
    if path.exists():
        try:
            return loader(ref, local_files_only=True, **kwargs)
        except Exception as exc:
            raise PVError(f"cannot load {what} from {path}: {explain(exc)}",
                          f"check that it is a complete copy in the expected layout, or point --set {setting}=PATH "
                          "at another") from None
    if looks_like_path(ref):
        raise PVError(f"{what} not found: {ref}", f"check the path, or point --set {setting}=PATH at a local copy")
    try:
        return loader(ref, local_files_only=True, **kwargs)
    except Exception as first:
        if not not_cached(first, ref):  # it is in the cache, and what is there fails to load
            raise PVError(f"cannot load {what} {ref!r} from the local Hugging Face cache: {explain(first)}",
                          f"the cached copy is damaged or incomplete: fetch it again (`hf download {ref} "
                          f"--force-download`), point --set {setting}=PATH at a local copy, or {offline_hint}") from None
        if offline() or not hub_reachable():
            reason = ("not in the local cache and HF_HUB_OFFLINE is set" if offline()
                      else "not in the local cache and the hub is unreachable")
            raise PVError(f"cannot load {what} {ref!r} offline ({reason})",
                          f"download it first (`hf download {ref}`), point --set {setting}=PATH at a local copy, "
                          f"or {offline_hint}") from None
    try:
        return loader(ref, **kwargs)
    except Exception as exc:
        raise PVError(f"cannot load {what} {ref!r}: {explain(exc)}",
                      f"check the id or path, your network and HF token; or {offline_hint}") from None
