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
    # default: the identity's own (else facenet) and, for an identity, a judge it was not tuned against
    encoders: list[str] = field(default_factory=list)
    scorer: str = "clip"
    scorer_options: dict = field(default_factory=dict)
    flow: str = "auto"
    no_face: str = "skip"
    compare_base: bool = False
    out_dir: Path | None = None
    csv: Path | None = None
    sheets: Path | None = None
    report: Path | None = None  # a self-contained HTML page of every clip (pv eval --report)


def evaluate(ctx: Context, req: EvalRequest) -> dict:
    from ..store import atomic_write_bytes
    from . import scoring as ev
    from .generate import identity_settings

    if req.flow not in FLOWS:
        raise PVError(f"--flow must be auto, raft or farneback, got {req.flow!r}")
    if req.no_face not in NO_FACE:
        raise PVError(f"--no-face must be skip or center, got {req.no_face!r}")
    from ..settings import check_seed

    for seed in req.seeds:
        check_seed(seed)
    check_inputs(ctx, req)
    store = ctx.store
    paths = ev.video_paths(req.target)
    if paths:
        from ..video import probe_source

        for path in paths:  # an unreadable clip fails before the encoders and scorer load
            probe_source(path)
    identity = None
    if paths is None:
        if not store.exists(req.target):
            raise PVError(f"{req.target!r} is neither a video, a folder nor an identity",
                          f"identities: {', '.join(store.names()) or 'none yet'}")
        identity = req.target
    else:  # flags that only apply to clips pv generates: refused, never dropped without a word
        for flag, given in (("--compare-base", req.compare_base), ("--seed", req.seeds), ("--out-dir", req.out_dir)):
            if given:
                raise PVError(f"{flag} needs an identity name, not videos: it applies to the clips pv generates",
                              f"drop {flag} to score {req.target} as it is")
    refs = list(req.refs)
    if identity is None and not refs:
        from ..video import read_metadata

        named = {read_metadata(p).get("identity") for p in paths} - {None}
        refs = [n for n in named if store.exists(n)]
        if not refs:
            raise PVError("no reference: pass --ref PHOTO or --ref IDENTITY")
    refs = refs or [identity]
    tuned_with = ev.tuned_encoder(store, [identity] if identity else refs)  # None: photos, or nothing recorded
    # by default the clips are scored with the encoder the reference identity was tuned with (and a judge)
    encoders = list(req.encoders) or [tuned_with or "facenet"]
    judges = ev.judge_candidates(ctx.registry, tuned_with) if tuned_with and not req.encoders else []
    evaluator = ev.Evaluator(ctx.registry, ev.reference_photos(store, refs), encoders, req.scorer,
                             req.scorer_options, req.flow, ctx.device or "cpu", ctx.reporter, req.no_face, store,
                             judges=judges)
    if identity:
        settings = identity_settings(ctx, identity)
        out = req.out_dir or ev.default_out_dir(identity)
        groups = ev.generate_clips(ctx, identity, req.prompts or ev.EVAL_PROMPTS, req.seeds or [0], settings, out,
                                   req.compare_base)
    else:
        groups = {"videos": ev.load_clips(paths, req.prompts[0] if req.prompts else None)}
    # the encoder the identity was tuned against, and the first one it was not (an independent judge)
    judge = evaluator.judge or next((n for n in evaluator.encoders if tuned_with and n != tuned_with), None)
    result: dict = {"tuned_with": tuned_with, "judge": judge, "videos": []}
    if evaluator.judge_note:
        result["judge_note"] = evaluator.judge_note
    entries = []  # (clip, row, per-frame face similarity) for the HTML report
    for group, clips in groups.items():
        rows = []
        for clip in clips:
            row = {"group": group, **evaluator.clip(clip)}
            if req.report:
                entries.append((clip, row, dict(evaluator._per_frame)))  # the scores of the clip just scored
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
    if req.report:
        from .report import eval_report

        eval_report(result, entries, Path(req.report), title=f"pv eval: {req.target}")
        result["report"] = str(Path(req.report).expanduser())
    return result


def check_inputs(ctx: Context, req: EvalRequest) -> None:
    """Before any model loads or clip renders: paths that name nothing, an unknown scorer, and
    outputs that cannot be written (a CSV where a folder is, a folder where a file is)."""
    from ..paths import check_output, check_parent, check_photos
    from ..store import NAME_RE

    def missing(item: str, globs: bool = True) -> bool:  # a path that does not exist and cannot be an identity name
        return (not Path(item).expanduser().exists() and not NAME_RE.match(item)
                and not (globs and any(c in item for c in "*?[")))

    if missing(req.target, globs=False):  # the target is a video, a folder or a name, never a pattern
        raise PVError(f"{req.target}: no such video or folder (nor an identity name)",
                      "give a video, a folder of videos, or an identity (see `pv list`)")
    for ref in req.refs:
        if missing(ref):
            raise PVError(f"--ref {ref}: no such photo or folder (nor an identity name)",
                          "give a photo, a folder of photos, a glob, or an identity (see `pv list`)")
        if Path(ref).expanduser().exists():
            check_photos([ref])  # an unreadable photo fails before the encoders load
    for i, name in enumerate(req.encoders):  # every one named before the first loads
        ctx.registry.get("encoders", name)
        if name in req.encoders[:i]:
            raise PVError(f"--encoder {name} is given twice", "name each encoder once")
    ctx.registry.get("scorers", req.scorer)  # "unknown scorer ..." (a known one that cannot load is a note)
    if req.csv:
        check_output(req.csv, "--csv", "metrics.csv")
    if req.report:
        check_output(req.report, "--report", "eval.html")
    for flag, folder in (("--sheets", req.sheets), ("--out-dir", req.out_dir)):
        if folder is None:
            continue
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise PVError(f"{flag} {folder} is a file, not a folder", f"give a folder for {flag}")
        check_parent(folder / "x", flag)


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 4)
