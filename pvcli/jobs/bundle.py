"""`pv export NAME --bundle FILE.pvid` and `pv import FILE.pvid`: a whole identity as one archive
that imports on another machine.

A bundle is a gzipped tar of safetensors and text only: manifest.json (format, name, and the
sha256 and size of every other member), adapter.safetensors, reference.safetensors,
faces.safetensors (the aligned crops and the original photos as uint8 tensors), config.yaml,
identity.json and, if the run kept one, log.jsonl. Import checks everything before it writes
anything: regular files with known names only (no absolute paths, `..`, links or devices), a
size limit, the manifest's hashes, the adapter's own tensor hash, the settings; then the identity
is written through the store's atomic writer, so a bad archive leaves the store as it was."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path, PurePosixPath

from .. import __version__
from ..context import Context
from ..errors import PVError
from ..identity import ADAPTER_FILE, REFERENCE_FILE, tensor_hash
from ..identity import FORMAT as ADAPTER_FORMAT
from ..locks import IdentityLock
from ..store import IDENTITY_FILE, atomic_write_file, validate_name
from .export import _check_writable

FORMAT = "pv-identity-bundle/1"
MANIFEST = "manifest.json"
FACES = "faces.safetensors"
REQUIRED = (ADAPTER_FILE, REFERENCE_FILE, FACES, "config.yaml", IDENTITY_FILE)
OPTIONAL = ("log.jsonl",)
SAFETENSORS = {ADAPTER_FILE, REFERENCE_FILE, FACES}
MAX_BUNDLE_BYTES = 2 * 2**30  # uncompressed; a real-size identity adapter is ~15 MB plus its photos
MAX_MEMBER_BYTES = 2**30


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _faces_tensors(folder: Path) -> dict:
    """Aligned crops (face_i) and original photos (photo_i) as uint8 (H, W, 3) RGB tensors."""
    import torch

    from ..engine.identity import load_image

    out = {}
    for prefix in ("face", "photo"):
        for path in sorted((folder / "refs").glob(f"{prefix}_*")):
            out[f"{prefix}_{path.stem.split('_')[1]}"] = torch.from_numpy(load_image(path)).contiguous()
    return out


def export_bundle(ctx: Context, name: str, output: Path | None = None, force: bool = False) -> dict:
    from safetensors.torch import save

    ctx.store.load_info(name)
    output = Path(output) if output is not None else Path(f"{name}.pvid")
    if output.suffix.lower() != ".pvid":
        raise PVError(f"a bundle is a .pvid file, got {output.name}")
    _check_writable(output, force)
    folder = ctx.store.path(name)
    members: dict[str, bytes] = {}
    for item in (*REQUIRED, *OPTIONAL):
        if item == FACES:
            members[item] = save(_faces_tensors(folder))
        elif (folder / item).is_file():
            members[item] = (folder / item).read_bytes()
        elif item in REQUIRED:
            raise PVError(f"identity {name!r} is damaged: {item} is missing", f"re-tune it, or `pv rm {name}`")
    manifest = {"format": FORMAT, "name": name, "pv_version": __version__,
                "files": {k: {"sha256": _sha256(v), "size": len(v)} for k, v in members.items()}}

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for member, data in [(MANIFEST, json.dumps(manifest, indent=2).encode()), *members.items()]:
                info = tarfile.TarInfo(member)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

    atomic_write_file(output, write)
    return {"identity": name, "path": str(output), "format": "bundle", "files": sorted([MANIFEST, *members]),
            "bytes": output.stat().st_size}


def _header(data: bytes) -> dict:
    """A safetensors file's `__metadata__` (8-byte length, then a JSON header)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__") or {}


def _bad(path: Path, why: str) -> PVError:
    return PVError(f"{path} is not a valid pv identity bundle: {why}", "nothing was imported")


def _read_members(path: Path) -> dict[str, bytes]:
    """Every member, checked as it is read: regular files with known names, within the limits."""
    allowed = {MANIFEST, *REQUIRED, *OPTIONAL}
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                name = info.name
                pure = PurePosixPath(name)
                if pure.is_absolute() or ".." in pure.parts or name.startswith(("/", "\\")) or ":" in name:
                    raise _bad(path, f"unsafe path {name!r}")
                if info.issym() or info.islnk():
                    raise _bad(path, f"{name!r} is a link")
                if not info.isfile():
                    raise _bad(path, f"{name!r} is not a regular file")
                if name not in allowed:
                    raise _bad(path, f"unexpected member {name!r} (a bundle holds only {', '.join(sorted(allowed))})")
                if name in members:
                    raise _bad(path, f"{name!r} appears twice")
                total += info.size
                if info.size > MAX_MEMBER_BYTES or total > MAX_BUNDLE_BYTES:
                    raise _bad(path, f"larger than the {MAX_BUNDLE_BYTES / 2**20:.3g} MiB limit")
                data = tar.extractfile(info).read(info.size + 1)
                if len(data) != info.size:
                    raise _bad(path, f"{name!r} is truncated")
                members[name] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # zlib/gzip errors are OSError or ValueError
        raise _bad(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return members


def _validate(path: Path, members: dict[str, bytes]) -> tuple[dict, dict]:
    """(manifest, parsed safetensors members), after checking the manifest and every member."""
    from safetensors.torch import load  # a real parse of a plain format, never pickle

    if MANIFEST not in members:
        raise _bad(path, "no manifest.json")
    try:
        manifest = json.loads(members[MANIFEST])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad(path, "manifest.json is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad(path, f"unknown format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(members) - {MANIFEST}:
        raise _bad(path, "the manifest does not list exactly the archive's files")
    missing = [m for m in REQUIRED if m not in members]
    if missing:
        raise _bad(path, f"{missing[0]} is missing")
    for name, entry in files.items():
        if not isinstance(entry, dict) or entry.get("sha256") != _sha256(members[name]):
            raise _bad(path, f"{name} does not match its hash in the manifest")
    tensors = {}
    for name in SAFETENSORS:
        try:
            tensors[name] = load(members[name])
        except Exception as exc:
            raise _bad(path, f"{name} is not a readable safetensors file ({str(exc)[:80]})") from None
    for name in set(members) - SAFETENSORS:
        try:
            members[name].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(path, f"{name} is not text") from None
    return manifest, tensors


def import_bundle(ctx: Context, path: Path, name: str | None = None, force: bool = False) -> dict:
    """Import the identity in bundle `path` (as `name`, default the bundle's own); nothing is
    written unless every check passes."""
    path = Path(path)
    if not path.is_file():
        raise PVError(f"bundle not found: {path}")
    members = _read_members(path)
    manifest, tensors = _validate(path, members)
    name = validate_name(name or str(manifest.get("name", "")))
    with IdentityLock(ctx.store, name, "imported"):
        return _write_imported(ctx, path, name, force, members, manifest, tensors)


def _write_imported(ctx: Context, path: Path, name: str, force: bool, members: dict, manifest: dict,
                    tensors: dict) -> dict:
    import yaml

    from ..settings import from_dict

    ctx.store.check_free(name, force)
    try:
        info = json.loads(members[IDENTITY_FILE])
        settings = yaml.safe_load(members["config.yaml"])
        assert isinstance(info, dict) and isinstance(settings, dict)
    except (json.JSONDecodeError, yaml.YAMLError, AssertionError):
        raise _bad(path, "identity.json or config.yaml is malformed") from None
    try:
        from_dict(settings)
    except PVError as exc:
        raise _bad(path, f"its settings are invalid ({exc.message})") from None

    meta = _header(members[ADAPTER_FILE])
    if meta.get("format") != ADAPTER_FORMAT:
        raise _bad(path, f"{ADAPTER_FILE} is not a pv identity adapter (format {meta.get('format')!r})")
    state = tensors[ADAPTER_FILE]
    if "embedding" not in tensors[REFERENCE_FILE]:
        raise _bad(path, f"{REFERENCE_FILE} holds no reference embedding")
    if meta.get("tensors_sha256") and meta["tensors_sha256"] != tensor_hash(state):
        raise _bad(path, "the adapter's tensors do not match the hash in its metadata")

    faces = _faces(path, tensors[FACES])
    info.update({"name": name, "imported_from": str(path), "imported_name": manifest.get("name"),
                 "photos": [f"refs/photo_{i}.png" for i in range(len(faces["photo"]))]})
    info.pop("path", None)
    with ctx.store.writer(name, force=force) as folder:
        for member, data in members.items():
            if member not in (MANIFEST, FACES, IDENTITY_FILE):
                (folder / member).write_bytes(data)
        (folder / "refs").mkdir()
        for kind, images in faces.items():
            for i, image in enumerate(images):
                _write_png(folder / "refs" / f"{kind}_{i}.png", image)
        (folder / IDENTITY_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {"name": name, "path": str(ctx.store.path(name)), "from": str(path), "bundle_name": manifest.get("name"),
            "backbone": info.get("backbone"), "encoder": info.get("encoder")}


def _faces(path: Path, tensors: dict) -> dict[str, list]:
    """faces.safetensors -> {"face": [crops], "photo": [photos]} in index order, each checked."""
    import torch

    out: dict[str, list] = {"face": [], "photo": []}
    keys = {}
    for k, t in tensors.items():
        match = re.fullmatch(r"(face|photo)_(\d+)", k)
        if not match:
            raise _bad(path, f"{FACES}: unexpected tensor {k!r}")
        if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[-1] != 3:
            raise _bad(path, f"{FACES}: {k} is not an RGB uint8 image")
        keys[k] = (match[1], int(match[2]))
    for k in sorted(tensors, key=lambda k: keys[k][1]):
        out[keys[k][0]].append(tensors[k].numpy())
    if not out["face"]:
        raise _bad(path, f"{FACES} holds no aligned face")
    return out


def _write_png(path: Path, rgb) -> None:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise PVError(f"cannot write {path}")
