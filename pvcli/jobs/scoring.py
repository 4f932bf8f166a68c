"""`pv eval`: score videos (or clips generated from an identity) against reference photos."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PVError
from ..plugins import Registry
from ..reporting import Reporter
from ..store import Store

EVAL_PROMPTS = ["{id} walking on a beach at sunset", "{id} playing the guitar on a stage",
                "close-up portrait of {id} smiling"]
METRICS = ("face_sim", "face_detect_rate", "clip_t", "dynamic_degree", "motion_magnitude", "temporal_consistency")
CELL = 128
# Judges of an identity when no --encoder is given: an encoder it was never tuned against, these
# first (dlib: not differentiable, so nothing pv tunes can have learnt its quirks), then any other
JUDGES = ("dlib",)


@dataclass
class Clip:
    path: Path
    frames: np.ndarray
    prompt: str | None
    identity: str | None = None  # the identity pv generated it with (its token is taken out for CLIP-T)
    fps: float | None = None  # None: unknown (a folder of frames), counted as 8 fps as VBench does


def _video_fps(path: Path, meta: dict) -> float | None:
    if meta.get("fps"):
        try:
            return float(meta["fps"])
        except (TypeError, ValueError):
            pass
    if path.is_dir() or path.suffix.lower() in (".gif", ".webp"):
        return None
    from ..video import video_info

    try:
        return video_info(path).fps
    except PVError:
        return None


def load_clips(paths: list[Path], prompt: str | None) -> list[Clip]:
    from ..video import read_frames, read_metadata

    clips = []
    for p in paths:
        frames = read_frames(p)
        if not len(frames):
            raise PVError(f"{p} has no frames")
        meta = read_metadata(p)
        clips.append(Clip(p, frames, prompt or meta.get("prompt"), meta.get("identity"), _video_fps(p, meta)))
    return clips


def identity_words(store: Store | None, name: str | None) -> tuple[str, str]:
    """(token, class word) the identity was tuned with; the defaults when it is not in the store."""
    from ..settings import TuneSettings

    token, cls = TuneSettings.token, TuneSettings.class_word
    if store is not None and name and store.exists(name):
        from safetensors import safe_open

        from ..identity_files import ADAPTER_FILE

        try:
            with safe_open(str(store.folder(name) / ADAPTER_FILE), "pt") as fh:
                meta = fh.metadata() or {}
            token, cls = meta.get("token", token), meta.get("class_word", cls)
        except Exception:  # an unreadable adapter: keep the defaults
            pass
    return token, cls


def video_paths(target: str) -> list[Path] | None:
    p = Path(target).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        from ..video import VIDEO_SUFFIXES, is_frames_folder

        if is_frames_folder(p) and any(p.iterdir()):
            return [p]  # one clip written as PNG frames
        found = sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise PVError(f"no videos in folder {target}")
        return found
    return None


def reference_photos(store: Store, refs: list[str]) -> list[Path]:
    """--ref items: identity names (their reference photos) or photo files/folders/globs."""
    from ..images import expand_photos

    paths: list[Path] = []
    for item in refs:
        if not Path(item).expanduser().exists() and store.exists(item):
            folder = store.folder(item)
            kept = sorted((folder / "refs").glob("photo_*"))
            paths += kept or expand_photos(store.load_info(item)["photos"])
        else:
            paths += expand_photos([item])
    return paths


def tuned_encoder(store: Store, identities: list[str]) -> str | None:
    """The encoder `identities` were tuned against, when they are all identities that agree on one
    (None for photos, or for identities tuned against different encoders)."""
    found = {(store.load_info(n).get("encoder") or None) if not Path(n).expanduser().exists() and store.exists(n)
             else None for n in identities}
    return found.pop() if len(found) == 1 else None


def judge_candidates(registry: Registry, tuned_with: str) -> list[str]:
    """Encoders that may judge an identity tuned against `tuned_with`, preferred first (JUDGES)."""
    others = sorted(n for n in registry.entries["encoders"] if n != tuned_with and n not in JUDGES)
    return [n for n in JUDGES if n != tuned_with and n in registry.entries["encoders"]] + others


def _mean(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(float(np.mean(vals)), 4) if vals else None


@dataclass
class LoadedEncoders:
    encoders: dict  # name -> IdentityEncoder
    references: dict  # encoder name -> {reference set: (unit embedding, first aligned crop)}
    judge: str | None = None
    judge_note: str | None = None


def load_encoders(registry: Registry, encoders: list[str], judges: list[str], device: str,
                  ref_sets: dict[str, list[Path]], warn) -> LoadedEncoders:
    """`encoders` must all load and find every reference set's face; of `judges` (candidates,
    preferred first) the first that does is added as `judge`, else `judge_note` says why none could."""
    from ..engine.face_crops import embed_crops, mean_embedding, reference_faces

    out = LoadedEncoders({}, {})
    failed = []
    for name in [*encoders, *judges]:
        try:
            enc = registry.create("encoders", name, options={}, device=device)
            refs = {key: reference_faces(enc, paths, warn=warn) for key, paths in ref_sets.items()}
        except Exception as exc:  # noqa: BLE001 - an optional judge that cannot load is skipped, said why
            if name in encoders:
                raise
            failed.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        out.encoders[name] = enc
        out.references[name] = {key: (mean_embedding(embed_crops(enc, [r.crop for r in found])), found[0].crop)
                                for key, found in refs.items()}
        if name in judges:
            out.judge = name
            break
    if judges and out.judge is None:
        out.judge_note = "no independent judge could run: " + "; ".join(failed)
    return out


class Evaluator:
    def __init__(self, registry: Registry, ref_paths: list[Path], encoders: list[str], scorer: str,
                 scorer_options: dict, flow: str, device: str, reporter: Reporter, no_face: str = "skip",
                 store: Store | None = None, judges: list[str] = ()):
        """`encoders` must all load; of `judges` (candidates, preferred first) the first that loads
        and finds the reference face is added as `judge`, else `judge_note` says why none could."""
        loaded = load_encoders(registry, encoders, judges, device, {"ref": ref_paths}, reporter.warn)
        self.encoders, self.judge, self.judge_note = loaded.encoders, loaded.judge, loaded.judge_note
        self.references = {n: refs["ref"][0] for n, refs in loaded.references.items()}
        self.ref_crops = {n: refs["ref"][1] for n, refs in loaded.references.items()}
        self.scorer, self.scorer_note = None, None
        try:
            self.scorer = registry.create("scorers", scorer, options=scorer_options, device=device)
        except PVError as exc:
            self.scorer_note = f"no CLIP model: {exc.message}"
        self.flow = flow
        self.no_face = no_face
        self.store = store

    def clip(self, clip: Clip) -> dict:
        from ..engine import metrics as ev

        row: dict = {"video": str(clip.path), "prompt": clip.prompt, "frames": int(len(clip.frames)),
                     "face_sim": {}, "face_detect_rate": {}, "models": {}, "notes": {}}
        self._per_frame = {}
        for name, enc in self.encoders.items():
            fs = ev.face_similarity(clip.frames, enc, self.references[name], self.no_face)
            row["face_sim"][name] = round(fs.value, 4)
            row[f"face_sim_{name}"] = row["face_sim"][name]
            row["face_detect_rate"][name] = round(fs.detect_rate, 4)
            self._per_frame[name] = fs.per_frame
            if not fs.scored:
                row["notes"][f"face_sim_{name}"] = ("no face detected in any sampled frame: scored 0 "
                                                    "(ConsisID's protocol; see face_detect_rate)")
            elif self.no_face == "center" and fs.detect_rate < 1:
                row["notes"][f"face_sim_{name}"] = ("frames without a detected face scored on their centre crop "
                                                    "(--no-face center; not the papers' protocol)")
        row["models"]["face_sim"] = {n: e.describe().get("encoder_weights", n) for n, e in self.encoders.items()}
        row["clip_t_caption"] = None
        if clip.prompt:
            row["clip_t_caption"] = ev.plain_caption(clip.prompt, *identity_words(self.store, clip.identity))
        if self.scorer is None:
            row["clip_t"] = row["temporal_consistency"] = None
            row["notes"]["clip_t"] = row["notes"]["temporal_consistency"] = self.scorer_note
        else:
            row["models"]["clip_t"] = row["models"]["temporal_consistency"] = self.scorer.describe()
            if clip.prompt:
                row["clip_t"] = round(ev.clip_t(clip.frames, self.scorer, row["clip_t_caption"]), 4)
            else:
                row["clip_t"] = None
                row["notes"]["clip_t"] = "no prompt (pass --prompt; pv's own mp4s carry theirs)"
            tc = ev.temporal_consistency(clip.frames, self.scorer)
            row["temporal_consistency"] = None if tc is None else round(tc, 4)
        mo = ev.motion(clip.frames, self.flow, clip.fps)
        row["dynamic_degree"] = mo.dynamic
        row["motion_magnitude"] = None if mo.magnitude is None else round(mo.magnitude, 4)
        row["dynamic_pairs"] = (f"{mo.pairs_above}/{mo.pairs_needed} pairs above {mo.threshold:.2f} px"
                                if mo.dynamic is not None else None)
        row["models"]["dynamic_degree"] = row["models"]["motion_magnitude"] = mo.method
        if mo.note:
            row["notes"]["dynamic_degree"] = mo.note
        return row

    def contact_sheet(self, clip: Clip, path: Path) -> Path:
        """Reference face, then the sampled frames with face boxes and scores (first encoder)."""
        import cv2

        name = next(iter(self.encoders))
        per_frame = self._per_frame[name]
        cols = 4
        rows = max(1, math.ceil(len(per_frame) / cols))
        sheet = np.full((rows * CELL, (cols + 1) * CELL, 3), 255, np.uint8)
        sheet[:CELL, :CELL] = cv2.resize(self.ref_crops[name], (CELL, CELL))
        cv2.putText(sheet, "reference", (4, CELL - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1)
        for k, (i, face, score) in enumerate(per_frame):
            frame = clip.frames[i].copy()
            sx, sy = CELL / frame.shape[1], CELL / frame.shape[0]
            cell = cv2.resize(frame, (CELL, CELL))
            label = f"#{i} no face" if score is None else f"#{i} centre {score:.2f}"
            if face is not None:
                x1, y1, x2, y2 = face.box
                cv2.rectangle(cell, (int(x1 * sx), int(y1 * sy)), (int(x2 * sx), int(y2 * sy)), (0, 255, 0), 1)
                label = f"#{i} {score:.2f}"
            cv2.putText(cell, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1)
            r, c = divmod(k, cols)
            sheet[r * CELL:(r + 1) * CELL, (c + 1) * CELL:(c + 2) * CELL] = cell
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        from ..store import atomic_write_bytes

        atomic_write_bytes(path, buf.tobytes())
        return path


def aggregate(rows: list[dict]) -> dict:
    encoders = sorted({n for r in rows for n in r["face_sim"]})
    out = {"videos": len(rows),
           "face_sim": {n: _mean(r["face_sim"].get(n) for r in rows) for n in encoders},
           "face_detect_rate": {n: _mean(r["face_detect_rate"].get(n) for r in rows) for n in encoders}}
    for n in encoders:
        out[f"face_sim_{n}"] = out["face_sim"][n]
    for m in ("clip_t", "dynamic_degree", "motion_magnitude", "temporal_consistency"):
        out[m] = _mean(r.get(m) for r in rows)  # dynamic_degree: the share of dynamic videos (VBench)
    return out


def csv_text(rows: list[dict]) -> str:
    encoders = sorted({n for r in rows for n in r["face_sim"]})
    fields = ["video", "prompt", "frames", *[f"face_sim_{n}" for n in encoders],
              *[f"face_detect_rate_{n}" for n in encoders], "clip_t", "dynamic_degree", "motion_magnitude",
              "temporal_consistency", "clip_t_caption"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, **{f"face_detect_rate_{n}": v for n, v in r["face_detect_rate"].items()}})
    return buf.getvalue()


def generate_clips(ctx, name: str, prompts: list[str], seeds: list[int], settings, out_dir: Path,
                   compare_base: bool) -> dict[str, list[Clip]]:
    """Clips of the identity for every prompt x seed, adapter on ("tuned") and, with
    compare_base, off ("base") from the same noise."""
    import dataclasses

    from .generate import IdentityRenderer, default_output

    renderer = IdentityRenderer(ctx, name, settings)
    groups: dict[str, list[Clip]] = {"tuned": []}
    if compare_base:
        groups["base"] = []
    for prompt in prompts:
        for seed in seeds:
            g = dataclasses.replace(settings.generate, seed=seed)
            for group in groups:
                out = out_dir / f"{group}_{default_output(name, prompt.replace('{id}', ''), seed).name}"
                video = renderer.render(prompt, out, adapter=group == "tuned", generate=g)
                groups[group].extend(load_clips([video.path], video.record["prompt"]))  # scored as saved
    return groups


def default_out_dir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"pv-eval-{name}-"))
