"""Loading pretrained weights for plugins: local files first (a folder, a file or the Hugging
Face cache, no network), then the hub unless HF_HUB_OFFLINE is set or it cannot be reached.
Every failure becomes one line that says what to fetch or which setting to change."""

from __future__ import annotations

import os
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


def short(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_pretrained(setting: str, ref: str, loader, offline_hint: str = "run offline with --profile tiny",
                    what: str | None = None, **kwargs):
    """`loader(ref, local_files_only=..., **kwargs)`; `setting` is the settings path that names
    `ref` (e.g. backbone.options.base_model), quoted in the error; `what` names the model in it
    (default: the setting's last part)."""
    what = what or setting.rsplit(".", 1)[-1]
    local = Path(ref).expanduser().exists()
    try:
        return loader(ref, local_files_only=True, **kwargs)
    except Exception as first:
        if local or offline() or not hub_reachable():
            reason = (short(first) if local else "not in the local cache and HF_HUB_OFFLINE is set" if offline()
                      else "not in the local cache and the hub is unreachable")
            raise PVError(f"cannot load {what} {ref!r} offline ({reason})",
                          f"download it first (`hf download {ref}`), point --set {setting}=PATH at a local copy, "
                          f"or {offline_hint}") from None
    try:
        return loader(ref, **kwargs)
    except Exception as exc:
        raise PVError(f"cannot load {what} {ref!r}: {short(exc)}",
                      f"check the id or path, your network and HF token; or {offline_hint}") from None
