"""HTML reports, each one self-contained file (see `pvcli.webpage`):

- `identity_report` (`pv report NAME -o FILE`): the photos and aligned crops an identity was tuned
  from, its training curves (loss, ID similarity, face-hit rate against step), the samples kept at
  `tune.sample_every` as animations, held-out ID similarity before/after, settings and versions.
- `eval_report` (`pv eval ... --report FILE`): one row per clip with an animated preview, its
  metrics and its per-frame face similarity; with `--compare-base` the base and tuned clips of
  the same prompt and seed side by side; sortable by any column."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np

from .. import __version__
from .. import webpage as wp
from ..context import Context
from ..errors import PVError
from ..records import held_out_at_text

MAX_SAMPLES = 24  # samples shown in an identity report (spread over the run, the last always)
SAMPLE_SIDE = 192  # longest side of an inlined sample (a 512x512x16 clip: about 100 KiB of WebP)
VERSION_PACKAGES = ("torch", "diffusers", "transformers", "peft", "onnxruntime")


# ------------------------------------------------------------------------------ identity report

def identity_report(ctx: Context, name: str, output: Path | None = None) -> dict:
    """Write identity `name`'s report to `output` (default NAME.html); returns what was written."""
    info = ctx.store.load_info(name)  # "no identity named ..." before anything else
    out = wp.check_page_path(output if output is not None else Path(f"{name}.html"), "-o", f"{name}.html")
    folder = ctx.store.folder(name)
    ctx.reporter.status(f"writing the report of {name}")
    counts = {"images": 0, "samples": 0}
    page = wp.render("identity_report.html.j2", title=f"pv identity report: {name}", sortable=False, info=info,
                     version=__version__, today=_dt.date.today().isoformat(), numbers=_numbers(info, counts),
                     references=_references(folder, counts), curves=_curves(folder, counts),
                     samples=_samples(folder, counts), settings=_settings(folder, info))
    size = wp.write_page(out, page, "-o")
    return {"identity": name, "path": str(out), "bytes": size, **counts}


def _numbers(info: dict, counts: dict) -> dict:
    """The numbers table ((label, value, css class) rows) and the held-out chart."""
    before, after = info.get("held_out_id_sim_before"), info.get("held_out_id_sim_after")
    rows = [("steps", info.get("steps")), ("resumed at step", info.get("resumed_at")),
            ("seconds per step", info.get("seconds_per_step")), ("peak memory (MB)", info.get("peak_memory_mb")),
            ("ID similarity, first step", info.get("id_sim_first")),
            ("ID similarity, last step", info.get("id_sim_last")),
            ("face-hit rate (all steps)", info.get("face_hit_rate")),
            ("adapter layers / parameters", f"{info.get('adapter_layers', '?')} / {info.get('adapter_parameters', '?')}"),
            ("held-out ID similarity before", before), ("held-out ID similarity after", after)]
    rows = [(label, wp.number(value, trim=True), "") for label, value in rows]
    if info.get("held_out_at"):  # generation's size, not tuning's
        rows.append(("held-out clips rendered at", held_out_at_text(info), ""))
    if before is not None and after is not None:
        delta = after - before
        rows.append(("held-out change", f"{delta:+.4f}", "good" if delta > 0 else "bad"))
    if info.get("tracker"):
        rows.append(("tracker run", f"{info['tracker'].get('report_to')} {info['tracker'].get('run_id')}", ""))
    chart = None
    if before is not None or after is not None:
        chart = wp.image(wp.bars(f"held-out ID similarity ({info.get('encoder', '?')})", ["before", "after"],
                                 [before, after]), "image/png", "held-out ID similarity before and after tuning",
                         cls="plot")
        counts["images"] += 1
    return {"rows": rows, "chart": chart}


def _references(folder: Path, counts: dict) -> list[dict]:
    """The photos and aligned crops: {caption, image (None: unreadable)} each."""
    from ..images import load_image

    refs = folder / "refs"
    photos = sorted(refs.glob("photo_*")) if refs.is_dir() else []
    crops = sorted(refs.glob("face_*.png")) if refs.is_dir() else []
    figures = []
    for kind, paths in (("photo", photos), ("aligned crop", crops)):
        for i, path in enumerate(paths):
            try:
                rgb = load_image(path)
            except PVError:
                figures.append({"caption": f"{kind} {i}: unreadable", "image": None})
                continue
            if kind == "photo":
                data, mime = wp.jpeg(wp.fit(rgb)), "image/jpeg"
            else:
                data, mime = wp.png(rgb), "image/png"
            figures.append({"caption": f"{kind} {i}",
                            "image": wp.image(data, mime, f"{kind} {i}", wp.display_width(rgb.shape[:2], 192))})
            counts["images"] += 1
    return figures


LOG_VALUES = ("loss", "id_sim", "face_hit_rate", "scr")


def _log(folder: Path) -> list[dict]:
    """The training log's records by step; a value that is no finite number is a gap (None)."""
    records: dict[int, dict] = {}
    path = folder / "log.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:  # not JSON, or a number of over 4300 digits
            continue
        step = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= 2**53:
            records[step] = {"step": step, **{k: _finite(rec.get(k)) for k in LOG_VALUES}}
    return [records[k] for k in sorted(records)]


def _finite(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _curves(folder: Path, counts: dict) -> dict | None:
    log = _log(folder)
    if not log:
        return None
    steps = [r["step"] for r in log]
    panels = [("loss", steps, {"loss": [r["loss"] for r in log]}),
              ("ID similarity (tuning encoder)", steps, {"id_sim": [r["id_sim"] for r in log]}),
              ("face-hit rate", steps, {"face_hit_rate": [r["face_hit_rate"] for r in log]})]
    if any(r["scr"] is not None for r in log):
        panels.append(("semantic consistency (KL)", steps, {"scr": [r["scr"] for r in log]}))
    counts["images"] += 1
    return {"steps": len(log), "image": wp.image(wp.line_panels(panels), "image/png",
                                                 "loss, ID similarity and face-hit rate against step", cls="plot")}


def _samples(folder: Path, counts: dict) -> dict:
    """The clips kept at tune.sample_every: {figures, over (first frames), prompt, shown, total}."""
    from ..video import read_metadata

    clips = sorted((folder / "samples").glob("step_*.mp4")) if (folder / "samples").is_dir() else []
    shown = clips
    if len(clips) > MAX_SAMPLES:
        keep = sorted(set(np.linspace(0, len(clips) - 1, MAX_SAMPLES).round().astype(int).tolist()))
        shown = [clips[i] for i in keep]
    figures, firsts, prompt = [], [], None
    for path in shown:
        step = int(path.stem.split("_")[1])
        frames = wp.read_clip(path)
        if frames is None:
            figures.append({"caption": f"step {step}: unreadable clip", "image": None})
            continue
        meta = read_metadata(path)
        prompt = prompt or meta.get("prompt")
        data, mime = wp.animation(frames, float(meta.get("fps") or 8), side=SAMPLE_SIDE)
        figures.append({"caption": f"step {step}", "image": wp.image(
            data, mime, f"sample at step {step}", wp.display_width(frames.shape[1:3], 160), "px")})
        firsts.append(frames[0])
        counts["images"] += 1
        counts["samples"] += 1
    over = None
    if len(firsts) > 1 and len({f.shape for f in firsts}) == 1:
        data, mime = wp.animation(np.stack(firsts), 2.0, max_frames=MAX_SAMPLES)
        over = wp.image(data, mime, "first frame of each sample, step by step",
                        wp.display_width(firsts[0].shape[:2], 256), "px")
        counts["images"] += 1
    return {"figures": figures, "over": over, "prompt": prompt, "shown": len(shown), "total": len(clips)}


def _settings(folder: Path, info: dict) -> dict:
    from importlib import metadata as md

    config = folder / "config.yaml"
    text = config.read_text() if config.is_file() else "(no config.yaml)"
    adapter = {}
    try:
        from safetensors import safe_open

        with safe_open(str(folder / "adapter.safetensors"), "np") as fh:
            adapter = fh.metadata() or {}
    except Exception:  # an unreadable adapter: the page says so
        adapter = {"error": "adapter.safetensors could not be read"}
    shown = {k: v for k, v in sorted(adapter.items()) if k != "lora_adapter_metadata"}
    versions = {"pv (tuned with)": info.get("pv_version"), "pv (this report)": __version__}
    for package in VERSION_PACKAGES:
        try:
            versions[f"{package} (this machine)"] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {"versions": versions, "adapter": shown, "config": text}


# ------------------------------------------------------------------------------ eval report

METRIC_COLUMNS = ("clip_t", "dynamic_degree", "motion_magnitude", "temporal_consistency")


def eval_report(result: dict, entries: list[tuple], output: Path, title: str = "pv eval") -> int:
    """The eval page: `entries` are (clip, row, per_frame) in result order, `per_frame` the
    scoring's {encoder: [(frame index, face, score | None), ...]}. Returns the bytes written."""
    rows = [row for _, row, _ in entries]
    encoders = sorted({n for r in rows for n in r["face_sim"]})
    # (data-key, header lines) of the metric columns
    columns = ([(f"face_sim_{n}", ["Face Sim", _with_role(result, n)]) for n in encoders]
               + [(f"face_detect_rate_{n}", ["face found", n]) for n in encoders]
               + [(m, [m.split("_", 1)[0], m.split("_", 1)[1].replace("_", " ")]) for m in METRIC_COLUMNS])
    groups = _pairs(entries) if "base" in result else [[e] for e in entries]
    page = wp.render("eval_report.html.j2", title=title, sortable=True, clips=len(rows), version=__version__,
                     now=_dt.datetime.now().isoformat(timespec="seconds"), judging=_judging(result),
                     summary=_summary(result, encoders), models=_models(rows), notes=_notes(rows),
                     paired="base" in result, columns=columns,
                     groups=[_group_rows(group, columns, encoders) for group in groups])
    return wp.write_page(output, page, "--report")


def _pairs(entries: list[tuple]) -> list[list[tuple]]:
    """Tuned and base clips of the same prompt and seed (rendered in the same order per group)."""
    tuned = [e for e in entries if e[1]["group"] == "tuned"]
    base = [e for e in entries if e[1]["group"] == "base"]
    groups = [[t, b] for t, b in zip(tuned, base, strict=False)]
    return groups + [[e] for e in tuned[len(groups):] + base[len(groups):]]


def _seed(path: Path):
    from ..video import read_metadata

    try:
        return read_metadata(path).get("seed")
    except Exception:  # a clip without pv's record
        return None


def _preview(clip, side: int = 160) -> wp.Image:
    data, mime = wp.animation(clip.frames, float(clip.fps or 8))
    return wp.image(data, mime, f"preview of {clip.path.name}", wp.display_width(clip.frames.shape[1:3], side), "px")


def _group_rows(group: list[tuple], columns, encoders) -> dict:
    """One <tbody>: a clip's row, or the tuned and base rows of a pair with their previews side by side."""
    previews = [{"image": _preview(clip, 128 if len(group) == 2 else 160), "caption": row["group"]}
                for clip, row, _ in group]
    rows = []
    for clip, row, per_frame in group:
        rows.append({"group": row["group"], "clip": clip.path.name, "seed": _seed(clip.path),
                     "prompt": row.get("prompt") or "", "per_frame": _per_frame_cell(per_frame, encoders),
                     "metrics": [(key, _metric(row, key)) for key, _ in columns]})
    return {"previews": previews, "rows": rows}


def _metric(row: dict, key: str):
    if key.startswith("face_detect_rate_"):
        return row["face_detect_rate"].get(key[len("face_detect_rate_"):])
    if key.startswith("face_sim_"):
        return row["face_sim"].get(key[len("face_sim_"):])
    return row.get(key)


def _per_frame_cell(per_frame: dict, encoders: list[str]) -> dict | None:
    """The per-frame sparkline and, for several encoders, its legend ((colour, name) pairs)."""
    series, xs = {}, None
    for name in encoders:
        items = per_frame.get(name) or []
        if not items:
            continue
        xs = [int(i) for i, _, _ in items]
        series[name] = [None if s is None else float(s) for _, _, s in items]
    if not series:
        return None
    title = "; ".join(f"{n}: " + " ".join("-" if v is None else f"{v:.2f}" for v in vals) for n, vals in series.items())
    image = wp.image(wp.sparkline(xs, series), "image/png", "per-frame face similarity",
                     title=f"frames {xs[0]}..{xs[-1]}: {title}")
    legend = ([(wp.SERIES_COLOURS[k % len(wp.SERIES_COLOURS)], n) for k, n in enumerate(series)]
              if len(series) > 1 else [])
    return {"image": image, "legend": legend}


def _summary(result: dict, encoders: list[str]) -> dict | None:
    """The aggregate table: its groups (columns) and (label, values) rows."""
    groups = [g for g in ("aggregate", "tuned", "base", "delta") if g in result]
    if not groups:
        return None
    keys = ([(f"Face Sim ({_with_role(result, n)})", "face_sim", n) for n in encoders]
            + [(f"face detected ({n})", "face_detect_rate", n) for n in encoders]
            + [(m.replace("_", " "), m, None) for m in METRIC_COLUMNS])
    lines = []
    for label, key, sub in keys:
        values = []
        for g in groups:
            v = result[g].get(key)
            values.append(v.get(sub) if sub is not None and isinstance(v, dict) else v)
        lines.append((label, values))
    return {"groups": groups, "rows": lines}


def _with_role(result: dict, encoder: str) -> str:
    """"facenet, tuned with" / "dlib, judge": which score the identity was optimised against."""
    if encoder == result.get("tuned_with"):
        return f"{encoder}, tuned with"
    if encoder == result.get("judge"):
        return f"{encoder}, judge"
    return encoder


def _judging(result: dict) -> dict | None:
    tuned = result.get("tuned_with")
    if not tuned:
        return None
    return {"tuned": tuned, "judge": result.get("judge"), "note": result.get("judge_note")}


def _models(rows: list[dict]) -> dict:
    models = {}
    for r in rows:
        for k, v in (r.get("models") or {}).items():
            models.setdefault(k, "; ".join(f"{n}: {m}" for n, m in v.items()) if isinstance(v, dict) else str(v))
    return models


def _notes(rows: list[dict]) -> dict:
    return {k: v for r in rows for k, v in (r.get("notes") or {}).items() if v}
