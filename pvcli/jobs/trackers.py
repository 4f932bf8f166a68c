"""Experiment trackers for `pv tune --report-to tensorboard|wandb` (setting `tune.report_to`).

One interface, `Tracker`: the resolved settings as hyperparameters, every logged step's scalars
(what log.jsonl records: loss, id_sim, scr, face_hit_rate, lr, seconds, peak memory...), the
sample clips written at `tune.sample_every` as videos, and the run's final numbers. Only the main
process of a data-parallel run has a tracker (the tuning job opens it where it writes the run).

A run keeps its tracker's identity in `runs/NAME/tracker.json` (the log folder and the run id),
so `pv tune --resume NAME` continues the same TensorBoard folder (steps logged after the
checkpoint it resumes from are purged, as they are run again) or the same W&B run id.

The libraries come with `pip install "pv[tracking]"`; asking for one that is not installed fails
in one line before any model loads (`require`)."""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import secrets
from pathlib import Path

import numpy as np

from ..errors import PVError
from ..store import atomic_write_bytes, home

NONE = "none"
# tracker -> (module to import, what to install)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
STATE_FILE = "tracker.json"
# per-step numbers that are not scalars to plot (counts the rates are made of, the step itself)
NOT_SCALARS = ("step", "face_hits", "frames")


def require(report_to: str) -> None:
    """Fail in one line, before any model loads, when the tracker's library is missing."""
    if report_to == NONE:
        return
    if report_to not in PACKAGES:
        raise PVError(f"unknown tracker {report_to!r}: --report-to takes none, {', '.join(PACKAGES)}")
    module, package = PACKAGES[report_to]
    try:
        __import__(module)
    except ImportError:
        raise PVError(f"--report-to {report_to} needs the {package} package, which is not installed: "
                      f"pip install \"pv[tracking]\" (or pip install {package})") from None


def default_dir() -> Path:
    return home() / "logs"


class Tracker:
    """One tracker run. `first_step` is the step the tuning (re)starts after (0 for a new run)."""

    name = NONE

    def __init__(self, log_dir: Path, run_id: str, identity: str, first_step: int):
        self.log_dir, self.run_id, self.identity, self.first_step = log_dir, run_id, identity, first_step

    def hyperparameters(self, settings: dict) -> None:
        raise NotImplementedError

    def scalars(self, step: int, values: dict) -> None:
        raise NotImplementedError

    def video(self, step: int, tag: str, frames: np.ndarray, fps: int, path: Path | None = None,
              caption: str = "") -> None:
        raise NotImplementedError

    def summary(self, values: dict) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError

    def where(self) -> str:
        """One line for the user: where the run's logs are and how to look at them."""
        raise NotImplementedError

    def record(self) -> dict:
        """What the identity keeps of this run (no paths of this machine)."""
        return {"report_to": self.name, "run_id": self.run_id}


def numeric(values: dict) -> dict[str, float]:
    """The record's plottable numbers: finite ints and floats (not bools, not None), by name."""
    out = {}
    for key, value in values.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def flat_settings(settings: dict, prefix: str = "") -> dict:
    """{"tune": {"lr": 1e-3}} -> {"tune.lr": 1e-3}; values trackers take as hyperparameters
    (numbers, text, bools; anything else as its JSON text)."""
    out: dict = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_settings(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def gif_bytes(frames: np.ndarray, fps: int) -> bytes:
    """An animated GIF of (F, H, W, 3) uint8 RGB frames (what TensorBoard shows as a video)."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / max(1, fps)),
                   loop=0)
    return buf.getvalue()


class TensorBoardTracker(Tracker):
    """torch's SummaryWriter into `log_dir` (one folder per run); a resumed run reopens it with
    purge_step, so steps redone after the checkpoint replace the ones logged before."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, run_id: str, identity: str, first_step: int):
        super().__init__(log_dir, run_id, identity, first_step)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=first_step + 1 if first_step else None)

    def hyperparameters(self, settings: dict) -> None:
        import yaml
        from torch.utils.tensorboard.summary import hparams

        # the metric names point the HParams dashboard at the scalars logged under them
        for summary in hparams(flat_settings(settings), {"loss": 0.0, "id_sim": 0.0, "face_hit_rate": 0.0,
                                                         "held_out_id_sim_after": 0.0}):
            self.writer._get_file_writer().add_summary(summary)
        text = yaml.safe_dump(settings, sort_keys=False)
        self.writer.add_text("settings", "\n".join("    " + ln for ln in text.splitlines()), 0)

    def scalars(self, step: int, values: dict) -> None:
        for key, value in numeric(values).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a killed run keeps its steps

    def video(self, step: int, tag: str, frames: np.ndarray, fps: int, path: Path | None = None,
              caption: str = "") -> None:
        # torch's add_video needs moviepy 1's `editor` module (moviepy 2 has none): the same
        # summary (an image whose encoded bytes are an animated GIF) is written here directly
        from tensorboard.compat.proto.summary_pb2 import Summary

        f, h, w, c = frames.shape
        image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self.writer.flush()

    def summary(self, values: dict) -> None:
        step = max(self.first_step, int(values.get("steps") or 0))
        for key, value in numeric({k: v for k, v in values.items() if k != "steps"}).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()

    def where(self) -> str:
        return f"TensorBoard run {self.log_dir} (view: tensorboard --logdir {self.log_dir.parent})"


class WandbTracker(Tracker):
    """A W&B run with a fixed id (resumed with resume="allow"); WANDB_MODE=offline logs to local
    files without an account (`wandb sync` uploads them later). WANDB_PROJECT names the project
    (default "pv"); W&B's own console capture is off, so pv's stdout carries only results."""

    name = "wandb"

    def __init__(self, log_dir: Path, run_id: str, identity: str, first_step: int):
        super().__init__(log_dir, run_id, identity, first_step)
        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "pv", name=identity, id=run_id,
                                  resume="allow", dir=str(log_dir), job_type="tune",
                                  settings=wandb.Settings(console="off", silent=True))
        except Exception as exc:  # no login, no network: said in one line, before any model loads
            text = str(exc).strip().splitlines()
            raise PVError(f"W&B could not start a run: {text[0] if text else type(exc).__name__}",
                          "log in with `wandb login`, or set WANDB_MODE=offline to log to local files "
                          "(`wandb sync` uploads them later)") from None
        self.offline = self.run.settings.mode in ("offline", "dryrun")

    def hyperparameters(self, settings: dict) -> None:
        self.run.config.update(flat_settings(settings), allow_val_change=True)

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(numeric(values), step=step)

    def video(self, step: int, tag: str, frames: np.ndarray, fps: int, path: Path | None = None,
              caption: str = "") -> None:
        import wandb

        if path is not None and Path(path).is_file():
            media = wandb.Video(str(path), caption=caption or None, format=Path(path).suffix.lstrip("."))
        else:  # W&B encodes arrays with moviepy; a GIF of our own needs nothing more
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:  # W&B copies the file into its run when logged
                gif = Path(tmp) / f"{tag}_{step}.gif"
                gif.write_bytes(gif_bytes(frames, fps))
                self.run.log({tag: wandb.Video(str(gif), caption=caption or None, format="gif")}, step=step)
            return
        self.run.log({tag: media}, step=step)

    def summary(self, values: dict) -> None:
        self.run.summary.update({k: v for k, v in values.items() if v is not None})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)

    def where(self) -> str:
        folder = Path(self.run.dir).parent
        if self.offline:
            return f"W&B offline run {folder} (upload: wandb sync {folder})"
        return f"W&B run {self.run.url or self.run_id}"


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def open_tracker(run, identity: str, report_to: str, logging_dir: str, first_step: int) -> Tracker | None:
    """The tracker of `run` (None for `none`): the same log folder and run id as the run's last
    one when it used the same tracker (a resume), else a new one recorded in the run folder."""
    if report_to == NONE:
        return None
    require(report_to)
    state_path = run.root / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, json.JSONDecodeError):
        state = {}
    if state.get("report_to") != report_to or not state.get("log_dir") or not state.get("run_id"):
        run_id = secrets.token_hex(4)  # 8 lowercase characters: a valid W&B run id
        base = Path(logging_dir).expanduser().absolute() if logging_dir else default_dir()
        if report_to == "tensorboard":
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            log_dir = base / "tensorboard" / identity / f"{stamp}-{run_id}"
        else:
            log_dir = base / "wandb" / identity
        state = {"report_to": report_to, "log_dir": str(log_dir), "run_id": run_id}
        atomic_write_bytes(state_path, (json.dumps(state, indent=2) + "\n").encode())
    try:
        return TRACKERS[report_to](Path(state["log_dir"]), state["run_id"], identity, first_step)
    except OSError as exc:
        raise PVError(f"cannot write the {report_to} logs to {state['log_dir']}: {exc.strerror or exc}",
                      "set another folder with --set tune.logging_dir=DIR") from None
