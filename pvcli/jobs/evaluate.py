"""`pv eval` as a job: resolve the target (videos or an identity whose clips are generated)
and the references, score every clip, aggregate, compare tuned against base, write reports.
Returns the dict that `pv eval --json` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..context import Context
from ..errors import PVError

FLOWS = ("auto", "raft", "farneback")
NO_FACE = ("skip", "center")


@dataclass
class EvalRequest:
    target: str  # a video, a folder of videos, or an identity name
    refs: list[str] = field(default_factory=list)  # photos or identity names; default: the videos' identity
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)  # default: the identity's own, else facenet
    scorer: str = "clip"
    scorer_options: dict = field(default_factory=dict)
    flow: str = "auto"
    no_face: str = "skip"
    compare_base: bool = False
    out_dir: Path | None = None
    csv: Path | None = None
    sheets: Path | None = None


def evaluate(ctx: Context, req: EvalRequest) -> dict:
    from .. import evaluation as ev
    from ..store import atomic_write_bytes
    from .generate import identity_settings

    if req.flow not in FLOWS:
        raise PVError(f"--flow must be auto, raft or farneback, got {req.flow!r}")
    if req.no_face not in NO_FACE:
        raise PVError(f"--no-face must be skip or center, got {req.no_face!r}")
    store = ctx.store
    paths = ev.video_paths(req.target)
    identity = None
    if paths is None:
        if not store.exists(req.target):
            raise PVError(f"{req.target!r} is neither a video, a folder nor an identity",
                          f"identities: {', '.join(store.names()) or 'none yet'}")
        identity = req.target
    elif req.compare_base:
        raise PVError("--compare-base needs an identity name, not videos")
    refs = list(req.refs)
    if identity is None and not refs:
        from ..video import read_metadata

        named = {read_metadata(p).get("identity") for p in paths} - {None}
        refs = [n for n in named if store.exists(n)]
        if not refs:
            raise PVError("no reference: pass --ref PHOTO or --ref IDENTITY")
    refs = refs or [identity]
    encoders = list(req.encoders) or [(store.load_info(identity).get("encoder") if identity else None) or "facenet"]
    evaluator = ev.Evaluator(ctx.registry, ev.reference_photos(store, refs), encoders, req.scorer,
                             req.scorer_options, req.flow, ctx.device or "cpu", ctx.reporter, req.no_face)
    if identity:
        settings = identity_settings(ctx, identity)
        out = req.out_dir or ev.default_out_dir(identity)
        groups = ev.generate_clips(ctx, identity, req.prompts or ev.EVAL_PROMPTS, req.seeds or [0], settings, out,
                                   req.compare_base)
    else:
        groups = {"videos": ev.load_clips(paths, req.prompts[0] if req.prompts else None)}
    result: dict = {"videos": []}
    for group, clips in groups.items():
        rows = []
        for clip in clips:
            row = {"group": group, **evaluator.clip(clip)}
            if req.sheets:
                row["contact_sheet"] = str(evaluator.contact_sheet(clip, Path(req.sheets) / f"{clip.path.stem}.png"))
            rows.append(row)
        result["videos"] += rows
        result[group if group != "videos" else "aggregate"] = ev.aggregate(rows)
    if req.compare_base:
        t, b = result["tuned"], result["base"]
        result["delta"] = {k: {n: _diff(t[k][n], b[k][n]) for n in t[k]} if isinstance(t[k], dict)
                           else _diff(t[k], b[k]) for k in t if k != "videos"}
    if req.csv:
        atomic_write_bytes(Path(req.csv), ev.csv_text(result["videos"]).encode())
    return result


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 4)
