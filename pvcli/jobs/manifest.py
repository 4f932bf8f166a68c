"""`pv tune --manifest people.yaml`: many identities in one command. Each entry is tuned in turn
(or, under several processes, each by one process: entry i goes to process i mod N); finished
identities are skipped, interrupted runs resumed, and a failed identity is reported without
stopping the others. `--shard i/n` takes every n-th entry from the i-th, so a plain job array
(or accelerate's multi-node launch) splits one manifest across machines.

    defaults:                 # optional, under every entry
      profile: tiny
      settings: {tune: {steps: 30}}
    identities:
      - name: alice
        photos: [photos/alice/*.jpg]   # relative to the manifest's folder
      - name: bob
        photos: photos/bob.png
        set: [tune.lr=5e-4]
        face_index: 0
        prompts: bob_prompts.txt
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..context import Context
from ..errors import PVError
from ..settings import parse_set, resolve
from ..store import validate_name

ENTRY_KEYS = {"name", "photos", "profile", "settings", "set", "face_index", "prompts"}


@dataclass
class Entry:
    name: str
    photos: list[str]
    profile: str | None = None
    settings: dict = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)
    face_index: int = 0
    prompts: str | None = None


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' (1-based) -> (i, n); None -> (1, 1)."""
    if not text:
        return 1, 1
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 1 <= int(i) <= int(n):
        raise PVError(f"--shard must be i/n with 1 <= i <= n, got {text!r}", "e.g. --shard 2/4")
    return int(i), int(n)


def read_manifest(path: str | Path) -> list[Entry]:
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PVError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PVError(f"manifest {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, list):
        data = {"identities": data}
    if not isinstance(data, dict) or not isinstance(data.get("identities"), list) or not data["identities"]:
        raise PVError(f"manifest {path} needs a non-empty `identities:` list", "see `pv tune --help`")
    defaults = data.get("defaults") or {}
    unknown = set(data) - {"identities", "defaults"}
    if unknown or not isinstance(defaults, dict):
        raise PVError(f"manifest {path}: unknown top-level key(s) {', '.join(sorted(unknown))}" if unknown
                      else f"manifest {path}: defaults must be a mapping")
    entries, seen = [], set()
    for i, raw in enumerate(data["identities"], 1):
        where = f"manifest {path.name}, identity #{i}"
        if not isinstance(raw, dict):
            raise PVError(f"{where} must be a mapping with name and photos")
        merged = {**copy.deepcopy(defaults), **raw}
        bad = set(merged) - ENTRY_KEYS
        if bad:
            raise PVError(f"{where}: unknown key(s) {', '.join(sorted(bad))}", f"known: {', '.join(sorted(ENTRY_KEYS))}")
        if "name" not in raw or "photos" not in merged:
            raise PVError(f"{where} needs a name and photos")
        name = validate_name(str(raw["name"]))
        if name in seen:
            raise PVError(f"{where}: identity {name!r} appears twice")
        seen.add(name)
        photos = merged["photos"] if isinstance(merged["photos"], list) else [merged["photos"]]
        sets = merged.get("set") or []
        entries.append(Entry(
            name=name, photos=[_relative(path, p) for p in photos], profile=merged.get("profile"),
            settings=merged.get("settings") or {}, sets=sets if isinstance(sets, list) else [sets],
            face_index=int(merged.get("face_index", 0)),
            prompts=_relative(path, merged["prompts"]) if merged.get("prompts") else None))
    return entries


def _relative(manifest: Path, ref) -> str:
    p = Path(str(ref)).expanduser()
    return str(p if p.is_absolute() else manifest.parent / p)


def select(entries: list[Entry], shard: tuple[int, int], rank: int = 0, world: int = 1) -> list[Entry]:
    """This machine's shard, then this process's share of it."""
    i, n = shard
    mine = entries[i - 1::n]
    return mine[rank::world]


def run_manifest(ctx: Context, entries: list[Entry], overrides: list[dict] | None = None, *,
                 profile: str | None = None, face_index: int | None = None,
                 prompts_file: str | None = None) -> Iterator[dict]:
    """Tune each entry (skip finished, resume interrupted); yield one record per identity. The
    command line's `profile`, `overrides`, `face_index` and `prompts_file` win over an entry's own;
    a resumed run keeps its own, and fails (that entry only) if they would change it. Any error of
    one entry is reported for it and the others go on; only Ctrl-C stops the manifest."""
    from ..runs import Run
    from .tune import TuneRequest, resume, tune

    for e in entries:
        record = {"name": e.name, "status": "", "error": None, "path": None}
        try:
            if ctx.store.exists(e.name):
                record["status"] = "skipped"  # finished earlier
            elif Run(ctx.store, e.name).exists():
                ctx.reporter.status(f"{e.name}: resuming its interrupted run")
                info = resume(ctx, e.name, data_parallel=False, overlays=overrides, face_index=face_index,
                              prompts_file=prompts_file, profile=profile)
                record.update(status="resumed", path=info["path"], held_out_id_sim_after=info["held_out_id_sim_after"])
            else:
                prof, settings = resolve(profile or e.profile, [e.settings, parse_set(e.sets), *(overrides or [])])
                info = tune(ctx, TuneRequest(e.name, e.photos, settings, prof,
                                             face_index=e.face_index if face_index is None else face_index,
                                             prompts_file=prompts_file or e.prompts), data_parallel=False)
                record.update(status="tuned", path=info["path"], held_out_id_sim_after=info["held_out_id_sim_after"])
        except PVError as exc:
            if exc.exit_code == 130:  # Ctrl-C: the checkpoint is saved; the whole manifest stops
                raise
            record.update(status="failed", error=exc.message)
            ctx.reporter.warn(f"{e.name}: {exc.message}")
        except Exception as exc:  # a bug in pv or a plugin: this identity fails, the others still run
            if os.environ.get("PV_DEBUG"):
                raise
            text = str(exc).strip()
            message = f"unexpected {type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
            record.update(status="failed", error=message)
            ctx.reporter.warn(f"{e.name}: {message} (a bug in pv or a plugin; PV_DEBUG=1 shows the traceback)")
        yield record
