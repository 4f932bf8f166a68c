"""The files of one identity (see store.py for where they live and how they are written)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .errors import PVError

ADAPTER_FILE = "adapter.safetensors"
REFERENCE_FILE = "reference.safetensors"
FORMAT = "pv-identity-adapter/1"


def tensor_hash(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].numpy().tobytes())
    return h.hexdigest()


def write_identity(folder: Path, *, adapter: dict, metadata: dict, reference, per_photo, crops: list[np.ndarray],
                   photos: list[str], settings: dict, info: dict) -> None:
    import cv2
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "pv_version": __version__, "tensors_sha256": tensor_hash(adapter)}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    save_file(adapter, str(folder / ADAPTER_FILE), metadata=meta)
    save_file({"embedding": reference.contiguous(), "per_photo": per_photo.contiguous()}, str(folder / REFERENCE_FILE),
              metadata={"photos": json.dumps([Path(p).name for p in photos]),  # names: no paths of this machine
                        "encoder": metadata.get("encoder", "")})
    (folder / "refs").mkdir()
    for i, crop in enumerate(crops):
        cv2.imwrite(str(folder / "refs" / f"face_{i}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    for i, photo in enumerate(photos):  # originals, so any encoder can re-detect them later (pv eval)
        shutil.copy2(photo, folder / "refs" / f"photo_{i}{Path(photo).suffix.lower()}")
    (folder / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    (folder / "identity.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_adapter(folder: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    meta = adapter_metadata(folder)
    path = folder / ADAPTER_FILE
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise PVError(f"cannot read the adapter {path}: {exc}") from None
    return state, meta


def adapter_metadata(folder: Path) -> dict:
    """The adapter's metadata, checked field by field (pvcli.records) without loading its tensors."""
    from safetensors import safe_open

    from .records import adapter_fault

    path = folder / ADAPTER_FILE
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise PVError(f"cannot read the adapter {path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise PVError(f"{path} is not a pv identity adapter (format {meta.get('format')!r})")
    fault = adapter_fault(meta)
    if fault:
        raise PVError(f"{path} is damaged: its metadata's {fault}", "import the identity again from a good bundle")
    return meta


def read_settings(folder: Path) -> dict:
    try:
        return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PVError(f"cannot read {folder / 'config.yaml'}: {exc}") from None
