"""`pv export NAME --bundle FILE.pvid` and `pv import FILE.pvid`: a whole identity as one archive
that imports on another machine.

A bundle is a gzipped tar of safetensors, text and images only: manifest.json (format, name, and
the sha256 and size of every other member), adapter.safetensors, reference.safetensors,
config.yaml, identity.json, refs/face_N.png (the aligned crops) and refs/photo_N.EXT (the
original photos, their encoded bytes as the identity keeps them, not decoded pixels) and, if the
run kept one, log.jsonl. No path of the exporting machine travels: photos are named by file name
only, and a setting or record that names a local file or folder (a base model given as a path)
travels as "local:NAME", which the recipient points at their own copy with --set. Export checks the size limits import enforces before it writes anything.

Import checks everything before it writes anything: regular files with known names only (no
absolute paths, `..`, links or devices), a size limit, the manifest's hashes, the adapter's own
tensor hash, the settings, every image decodes; then the identity is written through the store's
atomic writer, so a bad archive leaves the store as it was. Bundles of format 1 (photos as uint8
tensors in faces.safetensors) still import."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from .. import __version__
from ..context import Context
from ..errors import PVError
from ..identity_files import ADAPTER_FILE, REFERENCE_FILE, tensor_hash
from ..identity_files import FORMAT as ADAPTER_FORMAT
from ..locks import IdentityLock
from ..records import adapter_fault, identity_fault
from ..store import IDENTITY_FILE, atomic_write_file, validate_name
from .export import _check_writable

FORMAT = "pv-identity-bundle/2"
FORMAT_1 = "pv-identity-bundle/1"  # photos as decoded uint8 tensors in faces.safetensors: still imported
MANIFEST = "manifest.json"
FACES = "faces.safetensors"  # format 1 only
REQUIRED = (ADAPTER_FILE, REFERENCE_FILE, "config.yaml", IDENTITY_FILE)
OPTIONAL = ("log.jsonl",)
SAFETENSORS = {ADAPTER_FILE, REFERENCE_FILE}
IMAGE = re.compile(r"refs/(face|photo)_(\d{1,4})\.(png|jpg|jpeg|webp|bmp|tif|tiff)")
MAX_BUNDLE_BYTES = 2 * 2**30  # uncompressed; a real-size identity adapter is ~15 MB plus its photos
MAX_MEMBER_BYTES = 2**30


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _image_members(folder: Path) -> dict[str, bytes]:
    """refs/face_N.png and refs/photo_N.EXT of the identity, as the files' own bytes."""
    refs = folder / "refs"
    found = {}
    for p in refs.iterdir() if refs.is_dir() else []:
        match = IMAGE.fullmatch(f"refs/{p.name.lower()}")
        if match and p.is_file():
            found[(match[1], int(match[2]))] = p
    return {f"refs/{found[k].name.lower()}": found[k].read_bytes() for k in sorted(found)}


def _names_only(items) -> list[str]:
    return [PurePosixPath(str(p).replace("\\", "/")).name for p in items] if isinstance(items, list) else []


LOCAL = "local:"  # what a path of the exporting machine becomes in a bundle: "local:" and its file name


def _local_path(value: str) -> bool:
    """Whether a text value names a file or folder of this machine: absolute, from the home folder,
    explicitly relative, or an existing path with a separator (a hub id "org/name" that is not a
    folder here is no path)."""
    text = value.strip()
    if not text or "\n" in text:
        return False
    if text.startswith(("~", "./", "../", ".\\", "..\\", "\\")) or PurePosixPath(text).is_absolute() \
            or PureWindowsPath(text).is_absolute():
        return True
    try:
        return ("/" in text or "\\" in text) and Path(text).expanduser().exists()
    except (OSError, ValueError):
        return False


def _portable(value):
    """`value` (text, or lists and mappings of it) with every path of this machine replaced by
    LOCAL and the file's name: a base model given as a local folder travels as its name only."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and _local_path(value):
        return LOCAL + PureWindowsPath(value.strip().rstrip("/\\")).name
    return value


def _local_settings(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(setting, value) of every setting a bundle's exporter replaced with LOCAL + a name."""
    found = []
    for key, value in settings.items():
        if isinstance(value, dict):
            found += _local_settings(value, f"{prefix}{key}.")
        elif isinstance(value, str) and value.startswith(LOCAL):
            found.append((f"{prefix}{key}", value))
    return found


def _portable_info(data: bytes) -> bytes:
    """identity.json without paths of this machine: photos by file name, no `path`, a local base
    model by its name."""
    info = json.loads(data)
    info["photos"] = _names_only(info.get("photos"))
    if info.get("imported_from"):
        info["imported_from"] = PurePosixPath(str(info["imported_from"]).replace("\\", "/")).name
    info.pop("path", None)
    return (json.dumps(_portable(info), indent=2, sort_keys=True) + "\n").encode()


def _portable_settings(data: bytes) -> bytes:
    """config.yaml with no path of this machine (unchanged bytes when it names none)."""
    import yaml

    settings = yaml.safe_load(data)
    portable = _portable(settings)
    return data if portable == settings else yaml.safe_dump(portable, sort_keys=False).encode()


def _portable_adapter(data: bytes) -> bytes:
    """adapter.safetensors whose metadata names no path of this machine (the tensors, and so their
    hash, unchanged)."""
    from safetensors.torch import load, save

    meta = _header(data)
    portable = _portable(meta)
    return data if portable == meta else save(load(data), metadata=portable)


def _portable_reference(data: bytes) -> bytes:
    """reference.safetensors with its photos' file names only (older identities kept their paths)."""
    from safetensors.torch import load, save

    meta = _header(data)
    try:
        photos = json.loads(meta.get("photos", "[]"))
    except json.JSONDecodeError:
        photos = []
    names = _names_only(photos)
    if names == photos:
        return data
    return save(load(data), metadata={**meta, "photos": json.dumps(names)})


def export_bundle(ctx: Context, name: str, output: Path | None = None, force: bool = False) -> dict:
    ctx.store.load_info(name)
    output = Path(output) if output is not None else Path(f"{name}.pvid")
    if output.suffix.lower() != ".pvid":
        raise PVError(f"a bundle is a .pvid file, got {output.name}")
    _check_writable(output, force)
    folder = ctx.store.folder(name)
    members: dict[str, bytes] = {}
    for item in (*REQUIRED, *OPTIONAL):
        if (folder / item).is_file():
            members[item] = (folder / item).read_bytes()
        elif item in REQUIRED:
            raise PVError(f"identity {name!r} is damaged: {item} is missing", f"re-tune it, or `pv rm {name}`")
    images = _image_members(folder)
    if not any(k.startswith("refs/face_") for k in images):
        raise PVError(f"identity {name!r} is damaged: refs/ holds no aligned face", f"re-tune it, or `pv rm {name}`")
    members[IDENTITY_FILE] = _portable_info(members[IDENTITY_FILE])
    members["config.yaml"] = _portable_settings(members["config.yaml"])
    members[ADAPTER_FILE] = _portable_adapter(members[ADAPTER_FILE])
    members[REFERENCE_FILE] = _portable_reference(members[REFERENCE_FILE])
    members.update(images)
    manifest = {"format": FORMAT, "name": name, "pv_version": __version__,
                "files": {k: {"sha256": _sha256(v), "size": len(v)} for k, v in members.items()}}
    members = {MANIFEST: json.dumps(manifest, indent=2).encode(), **members}
    _check_limits(name, members)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

    atomic_write_file(output, write)
    return {"identity": name, "path": str(output), "format": "bundle", "files": sorted(members),
            "bytes": output.stat().st_size}


def _check_limits(name: str, members: dict[str, bytes]) -> None:
    """The limits import enforces, checked before anything is written: a bundle pv writes imports."""
    biggest = max(members, key=lambda k: len(members[k]))
    total = sum(len(v) for v in members.values())
    if len(members[biggest]) > MAX_MEMBER_BYTES:
        raise PVError(f"cannot bundle {name!r}: {biggest} is {len(members[biggest]) / 2**20:.0f} MiB, over the "
                      f"{MAX_MEMBER_BYTES / 2**20:.3g} MiB per file that `pv import` accepts", "nothing was written")
    if total > MAX_BUNDLE_BYTES:
        photos = sum(len(v) for k, v in members.items() if k.startswith("refs/photo_"))
        raise PVError(f"cannot bundle {name!r}: its files take {total / 2**20:.1f} MiB (photos {photos / 2**20:.1f} MiB), "
                      f"over the {MAX_BUNDLE_BYTES / 2**20:.3g} MiB that `pv import` accepts",
                      "nothing was written; re-tune it from fewer or smaller photos to move it as a bundle")


def _header(data: bytes) -> dict:
    """A safetensors file's `__metadata__` (8-byte length, then a JSON header)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__") or {}


def _bad(path: Path, why: str) -> PVError:
    return PVError(f"{path} is not a valid pv identity bundle: {why}", "nothing was imported")


# where the data filter checks that a member would land (members are read into memory, never
# extracted: nothing of a bundle is written before every check has passed)
DATA_FILTER_DEST = "/pv-bundle"


def _member_fault(info: tarfile.TarInfo, allowed: set) -> str | None:
    """pv's own rules for a member: a regular file with a known name, no absolute path or `..`."""
    name = info.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith(("/", "\\")) or ":" in name:
        return f"unsafe path {name!r}"
    if info.issym() or info.islnk():
        return f"{name!r} is a link"
    if not info.isfile():
        return f"{name!r} is not a regular file"
    if name not in allowed and not IMAGE.fullmatch(name):
        return (f"unexpected member {name!r} (a bundle holds only {', '.join(sorted(allowed))} "
                "and refs/face_N.png, refs/photo_N.EXT)")
    return None


def _read_members(path: Path) -> dict[str, bytes]:
    """Every member, checked as it is read: regular files with known names, within the limits."""
    allowed = {MANIFEST, *REQUIRED, *OPTIONAL, FACES}
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                name = info.name
                fault = _member_fault(info, allowed)
                if fault:
                    raise _bad(path, fault)
                try:  # defence in depth: the standard library's own rules for extracting data (PEP 706;
                    # Python 3.10.12, 3.11.4 and later have it)
                    info = tarfile.data_filter(info, DATA_FILTER_DEST) if hasattr(tarfile, "data_filter") else info
                except tarfile.FilterError as exc:
                    raise _bad(path, f"{name!r} is refused by the tar data filter ({exc})") from None
                if name in members:
                    raise _bad(path, f"{name!r} appears twice")
                total += info.size
                if info.size > MAX_MEMBER_BYTES or total > MAX_BUNDLE_BYTES:
                    raise _bad(path, f"larger than the {MAX_BUNDLE_BYTES / 2**20:.3g} MiB limit")
                data = tar.extractfile(info).read(info.size + 1)
                if len(data) != info.size:
                    raise _bad(path, f"{name!r} is truncated")
                members[name] = data
    except tarfile.ReadError:  # "file could not be opened successfully:" and the methods tried
        raise _bad(path, "it is not a tar archive (pv export --bundle writes one)") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # zlib/gzip errors are OSError or ValueError
        why = str(exc).splitlines()[0].rstrip(": ") if str(exc) else type(exc).__name__
        raise _bad(path, why) from None
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
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if version not in (FORMAT, FORMAT_1):
        raise _bad(path, f"unknown format {version!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(members) - {MANIFEST}:
        raise _bad(path, "the manifest does not list exactly the archive's files")
    images = sorted(m for m in members if IMAGE.fullmatch(m))
    if version == FORMAT_1 and images:
        raise _bad(path, f"unexpected member {images[0]!r} in a format-1 bundle")
    if version == FORMAT and FACES in members:
        raise _bad(path, f"unexpected member {FACES!r}")
    missing = [m for m in (*REQUIRED, *([FACES] if version == FORMAT_1 else [])) if m not in members]
    if missing:
        raise _bad(path, f"{missing[0]} is missing")
    if version == FORMAT and not any(m.startswith("refs/face_") for m in images):
        raise _bad(path, "it holds no aligned face (refs/face_N.png)")
    for name, entry in files.items():
        if not isinstance(entry, dict) or entry.get("sha256") != _sha256(members[name]):
            raise _bad(path, f"{name} does not match its hash in the manifest")
    tensors = {}
    for name in (*SAFETENSORS, *([FACES] if version == FORMAT_1 else [])):
        try:
            tensors[name] = load(members[name])
        except Exception as exc:
            raise _bad(path, f"{name} is not a readable safetensors file ({str(exc)[:80]})") from None
    for name in images:
        _check_image(path, name, members[name])
    for name in set(members) - SAFETENSORS - {FACES} - set(images):
        try:
            members[name].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(path, f"{name} is not text") from None
    return manifest, tensors


def _check_image(path: Path, name: str, data: bytes) -> None:
    """An image member decodes to a colour image of sane size (its header is sized first, against
    pv's pixel limit; cv2 parses; nothing else runs)."""
    import cv2
    import numpy as np

    from ..images import check_image_size

    try:
        check_image_size(data, name)
    except PVError as exc:
        raise _bad(path, exc.message) from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None or image.ndim != 3 or min(image.shape[:2]) < 1:
        raise _bad(path, f"{name} is not a readable image")


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
    except (ValueError, yaml.YAMLError, AssertionError):  # ValueError: JSON's own, or a 4300-digit number
        raise _bad(path, "identity.json or config.yaml is malformed") from None
    fault = identity_fault(info)
    if fault:
        raise _bad(path, f"{IDENTITY_FILE}: {fault}")
    if not isinstance(manifest.get("name"), str):
        raise _bad(path, f"{MANIFEST}: name must be text, got {manifest.get('name')!r}"[:200])
    _check_log(path, members.get("log.jsonl"))
    try:
        from_dict(settings)
    except PVError as exc:
        raise _bad(path, f"its settings are invalid ({exc.message})") from None
    for key, value in _local_settings(settings):
        ctx.reporter.warn(f"{key} named a local file of the machine that made the bundle ({value[len(LOCAL):]}): "
                          f"render with --set {key}=PATH to your copy")

    meta = _header(members[ADAPTER_FILE])
    if meta.get("format") != ADAPTER_FORMAT:
        raise _bad(path, f"{ADAPTER_FILE} is not a pv identity adapter (format {meta.get('format')!r})")
    fault = adapter_fault(meta)
    if fault:
        raise _bad(path, f"the metadata of {ADAPTER_FILE}: {fault}")
    state = tensors[ADAPTER_FILE]
    if "embedding" not in tensors[REFERENCE_FILE]:
        raise _bad(path, f"{REFERENCE_FILE} holds no reference embedding")
    if meta.get("tensors_sha256") and meta["tensors_sha256"] != tensor_hash(state):
        raise _bad(path, "the adapter's tensors do not match the hash in its metadata")

    faces = _faces(path, tensors[FACES]) if FACES in members else None  # a format-1 bundle
    photos = (_names_only(info.get("photos")) if faces is None
              else [f"photo_{i}.png" for i in range(len(faces["photo"]))])
    info.update({"name": name, "imported_from": path.name, "imported_name": manifest.get("name"), "photos": photos})
    info.pop("path", None)
    with ctx.store.writer(name, force=force) as folder:
        (folder / "refs").mkdir()
        for member, data in members.items():
            if member not in (MANIFEST, FACES, IDENTITY_FILE):
                (folder / member).write_bytes(data)
        for kind, images in (faces or {}).items():
            for i, image in enumerate(images):
                _write_png(folder / "refs" / f"{kind}_{i}.png", image)
        (folder / IDENTITY_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {"name": name, "path": str(ctx.store.path(name)), "from": str(path), "bundle_name": manifest.get("name"),
            "backbone": info.get("backbone"), "encoder": info.get("encoder")}


def _check_log(path: Path, data: bytes | None) -> None:
    """log.jsonl, if the bundle has one: JSON objects, one a line, each with its integer step."""
    for number, line in enumerate((data or b"").decode().splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else {"step": 0}
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= 2**53:
            raise _bad(path, f"log.jsonl line {number} is not a step's record (a JSON object with its step)")


def _faces(path: Path, tensors: dict) -> dict[str, list]:
    """A format-1 faces.safetensors -> {"face": [crops], "photo": [photos]} in index order, each checked."""
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
