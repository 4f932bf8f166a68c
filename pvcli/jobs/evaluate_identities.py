"""`pv eval VIDEOS --id A --id B`: several people in one clip, one `--id` per person (an identity
name or photos of that person). Every sampled frame's faces are matched one to one with the people
(Hungarian assignment), so a swap or a blended face is caught where a max over all pairs would not
be; see pvcli.engine.face_assignment for the numbers. Regions come from the clip's own record when pv
made it (`regions`), else from `--layout` in flag order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..context import Context
from ..errors import PVError

SWAP_WARN = 0.5  # an identity whose faces stand outside its region this often is reported as swapped


@dataclass
class IdentitiesRequest:
    target: str  # a video or a folder of videos
    ids: list[str]  # one person each: an identity name, or a photo / folder / glob of that person
    encoders: list[str] = field(default_factory=list)
    layout: str = "left-right"
    per_frame: bool = False


def _label(item: str) -> str:
    """The name a person goes by in the output: the identity's name, or the photo's file stem."""
    p = Path(item).expanduser()
    return p.stem if p.exists() and p.is_file() else p.name or item


def check_ids(ctx: Context, ids: list[str]) -> list[str]:
    """Before any model loads: each --id names an identity or readable photos, once each."""
    from ..images import expand_photos
    from ..paths import check_photos

    if not ids:
        raise PVError("--id needs an identity name or a photo")
    seen: dict[str, str] = {}
    for item in ids:
        if not item or not item.strip():
            raise PVError("--id is empty", "give an identity name or a photo of one person per --id")
        p = Path(item).expanduser()
        if not p.exists() and not any(c in item for c in "*?["):
            if not ctx.store.exists(item):
                raise PVError(f"--id {item}: no such identity or photo",
                              f"identities: {', '.join(ctx.store.names()) or 'none yet'}")
        else:
            check_photos([item])
            if not expand_photos([item]):
                raise PVError(f"--id {item}: no photos there", "give a photo of one person per --id")
        label = _label(item)
        if label in seen:
            raise PVError(f"--id {item} is given twice (as {seen[label]!r} too)", "one --id per person")
        seen[label] = item
    return list(seen)


def clip_regions(path: Path, labels: list[str], layout: str) -> tuple[list, str]:
    """The clip's own regions (pv's record names each identity's box), else the layout's strips in
    flag order. Returns (boxes, where they came from)."""
    from ..engine.face_assignment import check_regions, layout_regions
    from ..video import read_metadata

    record = read_metadata(path).get("regions")
    if isinstance(record, list) and record:
        try:
            boxes = {str(r["identity"]): r["box"] for r in record}
        except (TypeError, KeyError):
            raise PVError(f"{path}: the 'regions' of its pv record are not a list of identity/box entries") from None
        if set(labels) <= set(boxes):
            return check_regions([boxes[n] for n in labels], f"{path}: recorded region"), "clip record"
    return layout_regions(len(labels), layout), f"--layout {layout}"


def evaluate_identities(ctx: Context, req: IdentitiesRequest) -> dict:
    from ..engine.face_assignment import LAYOUTS, assign_identities
    from . import scoring as ev

    if req.layout not in LAYOUTS:
        raise PVError(f"--layout must be one of {', '.join(LAYOUTS)}, got {req.layout!r}")
    paths = ev.video_paths(req.target)
    if paths is None:
        raise PVError(f"{req.target}: --id scores videos; no such video or folder",
                      "generate the clip first, then pv eval CLIP --id A --id B")
    labels = check_ids(ctx, req.ids)
    from ..video import probe_source

    for path in paths:  # an unreadable clip fails before the encoders load
        probe_source(path)
    store = ctx.store
    identities = [i for i in req.ids if not Path(i).expanduser().exists() and store.exists(i)]
    tuned_with = ev.tuned_encoder(store, identities) if len(identities) == len(req.ids) else None
    encoders = list(req.encoders) or [tuned_with or "facenet"]
    judges = ev.judge_candidates(ctx.registry, tuned_with) if tuned_with and not req.encoders else []
    ref_sets = {label: ev.reference_photos(store, [item]) for label, item in zip(labels, req.ids, strict=True)}
    loaded = ev.load_encoders(ctx.registry, encoders, judges, ctx.device or "cpu", ref_sets, ctx.reporter.warn)
    result: dict = {"ids": labels, "tuned_with": tuned_with, "judge": loaded.judge, "videos": []}
    if loaded.judge_note:
        result["judge_note"] = loaded.judge_note
    for clip in ev.load_clips(paths, None):
        regions, source = clip_regions(clip.path, labels, req.layout)
        row: dict = {"video": str(clip.path), "frames": int(len(clip.frames)), "regions_from": source,
                     "scores": {}, "warnings": []}
        for name, enc in loaded.encoders.items():
            refs = {label: loaded.references[name][label][0] for label in labels}
            row["scores"][name] = assign_identities(clip.frames, enc, refs, regions).as_dict(req.per_frame)
        first = row["scores"][next(iter(loaded.encoders))]
        for label, s in first["identities"].items():
            if s["swap_rate"] is not None and s["swap_rate"] >= SWAP_WARN:
                row["warnings"].append(f"{label}'s face stands outside {label}'s region in "
                                       f"{s['swap_rate']:.0%} of the frames it was found in (swapped?)")
            if s["presence"] == 0:
                row["warnings"].append(f"{label} was not found in any sampled frame")
        if first["exact_count_rate"] < 1:
            row["warnings"].append(f"{len(labels)} people asked for, but {first['faces_per_frame']:g} faces per "
                                   f"frame on average (exactly {len(labels)} in {first['exact_count_rate']:.0%})")
        result["videos"].append(row)
    return result
