"""A tuning run in progress: `$PV_HOME/runs/<name>/` with run.json (inputs), config.yaml
(resolved settings), checkpoints/ (the last K full tuner states), log.jsonl (one record per
step) and samples/. It becomes an identity when tuning finishes; an interrupted run stays
until `pv tune --resume NAME` finishes it or `--force` starts over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from .errors import PVError
from .store import Store, atomic_write_file, validate_name


class Run:
    def __init__(self, store: Store, name: str):
        self.name = validate_name(name)
        self.root = store.runs / name
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.log_path = self.root / "log.jsonl"

    def exists(self) -> bool:
        return (self.root / "run.json").is_file()

    def start(self, inputs: dict, settings: dict) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.checkpoints.mkdir(parents=True)
        self.samples.mkdir()
        (self.root / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        (self.root / "run.json").write_text(json.dumps(inputs, indent=2) + "\n")

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

    def truncate_log(self, step: int) -> None:
        """Drop log records after `step` (steps redone after a resume)."""
        if not self.log_path.is_file():
            return
        keep = [ln for ln in self.log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        self.log_path.write_text("".join(ln + "\n" for ln in keep))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
