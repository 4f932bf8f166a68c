"""A tuning run in progress: `$PV_HOME/runs/<name>/` with run.json (inputs), config.yaml
(resolved settings), photos/ (copies of the reference photos, taken when the run starts, so
moving the originals loses nothing), checkpoints/ (the last K full tuner states; the last step
always has one), log.jsonl (one record per step), measures.json (numbers measured once, e.g.
the held-out similarity before tuning) and samples/. It becomes an identity when tuning
finishes; an interrupted run stays until `pv tune --resume NAME` finishes it or `--force`
starts over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from .errors import PVError
from .store import Store, atomic_write_bytes, atomic_write_file, fsync_tree, make_dirs, validate_name


class Run:
    def __init__(self, store: Store, name: str):
        self.name = validate_name(name)
        self.root = store.runs / name
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.log_path = self.root / "log.jsonl"
        self.photos = self.root / "photos"
        self.measures_path = self.root / "measures.json"

    def exists(self) -> bool:
        return (self.root / "run.json").is_file()

    def start(self, inputs: dict, settings: dict, photos: list[Path]) -> list[Path]:
        """A new run: its settings, and copies of `photos` (run.json lists their file names); the
        copies' paths. run.json is written last, so a run whose start failed does not exist."""
        if self.root.exists():
            shutil.rmtree(self.root)
        make_dirs(self.checkpoints)
        self.samples.mkdir()
        self.photos.mkdir()
        copies = []
        for src in photos:
            dst = self.photos / _unique_name(Path(src).name, {c.name for c in copies})
            try:
                shutil.copyfile(src, dst)
            except OSError as exc:
                raise PVError(f"cannot copy the photo {src} into the run folder {self.photos}: "
                              f"{exc.strerror or exc}") from None
            copies.append(dst)
        (self.root / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        fsync_tree(self.root)  # on the disk before run.json says the run exists
        atomic_write_bytes(self.root / "run.json",
                           (json.dumps({**inputs, "photos": [c.name for c in copies]}, indent=2) + "\n").encode())
        return copies

    def photo_paths(self, inputs: dict) -> list[Path]:
        """The run's copies of its photos (a run started by an older pv lists the originals' paths)."""
        paths = []
        for item in inputs.get("photos") or []:
            copy = self.photos / Path(item).name
            path = copy if copy.is_file() else Path(item).expanduser()
            if not path.is_file():
                raise PVError(f"the run of {self.name!r} lost its photo {item} (not in {self.photos})",
                              f"start over with `pv tune PHOTOS --name {self.name} --force`")
            paths.append(path)
        return paths

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def load(self) -> tuple[dict, dict]:
        if not self.exists():
            raise PVError(f"no interrupted run named {self.name!r} to resume",
                          f"start one with `pv tune PHOTO --name {self.name}`")
        return json.loads((self.root / "run.json").read_text()), yaml.safe_load((self.root / "config.yaml").read_text())

    def save_checkpoint(self, state: dict, keep: int) -> Path:
        """The tuner's full state as safetensors + JSON (no pickle); the last `keep` are kept."""
        from .checkpoint import save_state

        path = self.checkpoints / f"step_{state['step']:07d}.safetensors"
        atomic_write_file(path, lambda tmp: save_state(state, tmp))
        for old in self.checkpoint_paths()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def saved_step(self) -> int | None:
        """The step of the newest checkpoint (from its file name), None without one."""
        paths = self.checkpoint_paths()
        return int(paths[-1].stem.split("_")[1]) if paths else None

    def measures(self) -> dict:
        try:
            return json.loads(self.measures_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def save_measures(self, **values) -> None:
        atomic_write_bytes(self.measures_path, (json.dumps({**self.measures(), **values}) + "\n").encode())

    def checkpoint_paths(self) -> list[Path]:
        return sorted(self.checkpoints.glob("step_*.safetensors")) if self.checkpoints.is_dir() else []

    def latest_checkpoint(self) -> dict | None:
        from .checkpoint import load_state

        paths = self.checkpoint_paths()
        if not paths:
            if self.checkpoints.is_dir() and any(self.checkpoints.glob("step_*.pt")):
                raise PVError(f"the run of {self.name!r} was checkpointed by an older pv in pickle format, which pv "
                              "no longer loads", f"start over with `pv tune ... --name {self.name} --force`")
            return None
        return load_state(paths[-1])

    def log(self, record: dict) -> None:
        with self.log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        """The log's records, one per step, in order; a line a kill cut short is skipped, and a
        step logged twice (a record rewritten after a Ctrl-C) counts once."""
        out: dict[int, dict] = {}
        lines = self.log_path.read_text().splitlines() if self.log_path.is_file() else []
        for ln in lines:
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                out[rec["step"]] = rec
        return [out[k] for k in sorted(out)]

    def truncate_log(self, step: int) -> None:
        """Drop log records after `step` (steps redone after a resume)."""
        if not self.log_path.is_file():
            return
        keep = [rec for rec in self.records() if rec["step"] <= step]
        atomic_write_bytes(self.log_path, "".join(json.dumps(rec) + "\n" for rec in keep).encode())

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `stem-2.ext`, `stem-3.ext` ... if a photo of that name was copied already."""
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{stem}-{i}{suffix}"
    return candidate
