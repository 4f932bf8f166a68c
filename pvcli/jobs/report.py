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
from pathlib import Path

import numpy as np

from .. import __version__
from .. import webpage as wp
from ..context import Context
from ..errors import PVError

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
    sections = [
        _header(info),
        _numbers(info, counts),
        _references(folder, counts),
        _curves(folder, counts),
        _samples(folder, counts),
        _settings(folder, info),
    ]
    size = wp.write_page(out, wp.page(f"pv identity report: {name}", "\n".join(sections)), "-o")
    return {"identity": name, "path": str(out), "bytes": size, **counts}


def _header(info: dict) -> str:
    note = f'<p class="note">{wp.esc(info["note"])}</p>' if info.get("note") else ""
    return (f"<h1>Identity <code>{wp.esc(info.get('name'))}</code></h1>"
            f'<p class="sub">tuned {wp.esc(info.get("created", "?"))} with pv {wp.esc(info.get("pv_version", "?"))}, '
            f"profile {wp.esc(info.get('profile', '?'))}, backbone {wp.esc(info.get('backbone', '?'))}, "
            f"encoder {wp.esc(info.get('encoder', '?'))}; report by pv {wp.esc(__version__)} on "
            f"{_dt.date.today().isoformat()}</p>{note}")


def _numbers(info: dict, counts: dict) -> str:
    before, after = info.get("held_out_id_sim_before"), info.get("held_out_id_sim_after")
    rows = [("steps", info.get("steps")), ("resumed at step", info.get("resumed_at")),
            ("seconds per step", info.get("seconds_per_step")), ("peak memory (MB)", info.get("peak_memory_mb")),
            ("ID similarity, first step", info.get("id_sim_first")),
            ("ID similarity, last step", info.get("id_sim_last")),
            ("face-hit rate (all steps)", info.get("face_hit_rate")),
            ("adapter layers / parameters", f"{info.get('adapter_layers', '?')} / {info.get('adapter_parameters', '?')}"),
            ("held-out ID similarity before", before), ("held-out ID similarity after", after)]
    if before is not None and after is not None:
        delta = after - before
        rows.append(("held-out change", f'<span class="{"good" if delta > 0 else "bad"}">{delta:+.4f}</span>'))
    if info.get("tracker"):
        rows.append(("tracker run", f"{info['tracker'].get('report_to')} {info['tracker'].get('run_id')}"))
    body = "".join(f"<tr><th>{wp.esc(k)}</th><td class='n'>{v if isinstance(v, str) and v.startswith('<') else wp.number(v, trim=True)}"
                   "</td></tr>" for k, v in rows)
    chart = ""
    if before is not None or after is not None:
        chart = wp.img(wp.bars(f"held-out ID similarity ({info.get('encoder', '?')})", ["before", "after"],
                               [before, after]), "image/png", "held-out ID similarity before and after tuning",
                       cls="plot")
        counts["images"] += 1
    else:
        chart = ('<p class="note">Held-out ID similarity was not measured (tune.held_out=0): clips from unseen '
                 "seeds, scored before and after tuning.</p>")
    return f'<h2>Numbers</h2><div class="gallery"><table>{body}</table>{chart}</div>'


def _references(folder: Path, counts: dict) -> str:
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
                figures.append(f"<figure><figcaption>{kind} {i}: unreadable</figcaption></figure>")
                continue
            if kind == "photo":
                data, mime = wp.jpeg(wp.fit(rgb)), "image/jpeg"
            else:
                data, mime = wp.png(rgb), "image/png"
            figures.append(f"<figure>{wp.img(data, mime, f'{kind} {i}', width=wp.display_width(rgb.shape[:2], 192))}"
                           f"<figcaption>{kind} {i}</figcaption></figure>")
            counts["images"] += 1
    if not figures:
        return "<h2>Reference photos</h2><p class='note'>This identity keeps no reference images.</p>"
    return ("<h2>Reference photos and aligned crops</h2><p class='note'>The photos the identity was tuned from "
            "(scaled down) and the aligned face crops the identity encoder embedded.</p>"
            f"<div class='gallery'>{''.join(figures)}</div>")


def _log(folder: Path) -> list[dict]:
    records: dict[int, dict] = {}
    path = folder / "log.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records[rec["step"]] = rec
    return [records[k] for k in sorted(records)]


def _curves(folder: Path, counts: dict) -> str:
    log = _log(folder)
    if not log:
        return "<h2>Training curves</h2><p class='note'>No training log (log.jsonl) in this identity.</p>"
    steps = [r["step"] for r in log]
    panels = [("loss", steps, {"loss": [r.get("loss") for r in log]}),
              ("ID similarity (tuning encoder)", steps, {"id_sim": [r.get("id_sim") for r in log]}),
              ("face-hit rate", steps, {"face_hit_rate": [r.get("face_hit_rate") for r in log]})]
    if any(r.get("scr") is not None for r in log):
        panels.append(("semantic consistency (KL)", steps, {"scr": [r.get("scr") for r in log]}))
    counts["images"] += 1
    return ("<h2>Training curves</h2>"
            + wp.img(wp.line_panels(panels), "image/png", "loss, ID similarity and face-hit rate against step",
                     cls="plot")
            + f"<p class='note'>{len(log)} logged steps; ID similarity is the cosine of the generated faces to the "
              "reference on the tuning encoder; the face-hit rate is the share of supervised frames with a detected "
              "face (the others use a centre crop or are skipped, tune.no_face).</p>")


def _samples(folder: Path, counts: dict) -> str:
    from ..video import read_metadata

    clips = sorted((folder / "samples").glob("step_*.mp4")) if (folder / "samples").is_dir() else []
    if not clips:
        return ("<h2>Samples over the steps</h2><p class='note'>No samples were kept: tune with "
                "<code>--set tune.sample_every=N</code> to keep a clip every N steps.</p>")
    shown = clips
    if len(clips) > MAX_SAMPLES:
        keep = sorted(set(np.linspace(0, len(clips) - 1, MAX_SAMPLES).round().astype(int).tolist()))
        shown = [clips[i] for i in keep]
    figures, firsts, prompt = [], [], None
    for path in shown:
        step = int(path.stem.split("_")[1])
        frames = wp.read_clip(path)
        if frames is None:
            figures.append(f"<figure><figcaption>step {step}: unreadable clip</figcaption></figure>")
            continue
        meta = read_metadata(path)
        prompt = prompt or meta.get("prompt")
        data, mime = wp.animation(frames, float(meta.get("fps") or 8), side=SAMPLE_SIDE)
        figures.append(f"<figure>{wp.img(data, mime, f'sample at step {step}', wp.display_width(frames.shape[1:3], 160), 'px')}"
                       f"<figcaption>step {step}</figcaption></figure>")
        firsts.append(frames[0])
        counts["images"] += 1
        counts["samples"] += 1
    over = ""
    if len(firsts) > 1 and len({f.shape for f in firsts}) == 1:
        data, mime = wp.animation(np.stack(firsts), 2.0, max_frames=MAX_SAMPLES)
        over = (f"<figure>{wp.img(data, mime, 'first frame of each sample, step by step', wp.display_width(firsts[0].shape[:2], 256), 'px')}"
                "<figcaption>first frames, step by step</figcaption></figure>")
        counts["images"] += 1
    more = f" ({len(shown)} of {len(clips)} shown)" if len(shown) < len(clips) else ""
    return (f"<h2>Samples over the steps{more}</h2><p class='note'>One clip per sample step, same seed and prompt"
            f"{': ' + wp.esc(prompt) if prompt else ''}.</p><div class='gallery'>{over}{''.join(figures)}</div>")


def _settings(folder: Path, info: dict) -> str:
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
    vrows = "".join(f"<tr><th>{wp.esc(k)}</th><td>{wp.esc(v)}</td></tr>" for k, v in versions.items())
    arows = "".join(f"<tr><th>{wp.esc(k)}</th><td>{wp.esc(v)}</td></tr>" for k, v in shown.items())
    return (f"<h2>Versions</h2><table>{vrows}</table><h2>Adapter</h2><table>{arows}</table>"
            f"<h2>Settings (config.yaml)</h2><pre>{wp.esc(text)}</pre>")


# ------------------------------------------------------------------------------ eval report

METRIC_COLUMNS = ("clip_t", "dynamic_degree", "motion_magnitude", "temporal_consistency")


def eval_report(result: dict, entries: list[tuple], output: Path, title: str = "pv eval") -> int:
    """The eval page: `entries` are (clip, row, per_frame) in result order, `per_frame` the
    scoring's {encoder: [(frame index, face, score | None), ...]}. Returns the bytes written."""
    rows = [row for _, row, _ in entries]
    encoders = sorted({n for r in rows for n in r["face_sim"]})
    columns = ([(f"face_sim_{n}", f"Face Sim<br>{wp.esc(_with_role(result, n))}") for n in encoders]
               + [(f"face_detect_rate_{n}", f"face found<br>{wp.esc(n)}") for n in encoders]
               + [(m, m.replace("_", "<br>", 1).replace("_", " ")) for m in METRIC_COLUMNS])
    groups = _pairs(entries) if "base" in result else [[e] for e in entries]
    heads = ("<tr><th>preview</th><th>per-frame<br>face similarity</th><th data-key='clip'>clip</th><th data-key='group'>group</th>"
             "<th data-key='seed' class='n'>seed</th><th data-key='prompt'>prompt</th>"
             + "".join(f"<th data-key='{k}' class='n'>{label}</th>" for k, label in columns) + "</tr>")
    bodies = [_group_rows(group, columns, encoders) for group in groups]
    body = (f"<h1>{wp.esc(title)}</h1><p class='sub'>{len(rows)} clips, pv {wp.esc(__version__)}, "
            f"{_dt.datetime.now().isoformat(timespec='seconds')}</p>"
            + _judging(result)
            + _aggregate_table(result, encoders)
            + _notes(rows)
            + "<h2>Clips</h2><p class='note'>Click a column to sort (again to reverse)."
            + (" Tuned (adapter on) and base (adapter off) clips of the same prompt and seed stay together; "
               "they sort by the tuned clip's value." if "base" in result else "")
            + " Per-frame face similarity: max(0, cos) of each sampled frame's face to the reference, "
              "a red tick where no face was found.</p>"
            + f"<div class='wide'><table id='clips' class='sortable'><thead>{heads}</thead>{''.join(bodies)}"
              "</table></div>")
    return wp.write_page(output, wp.page(title, body, sortable=True), "--report")


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


def _preview(clip, side: int = 160) -> str:
    data, mime = wp.animation(clip.frames, float(clip.fps or 8))
    return wp.img(data, mime, f"preview of {clip.path.name}", wp.display_width(clip.frames.shape[1:3], side), "px")


def _group_rows(group: list[tuple], columns, encoders) -> str:
    out = []
    if len(group) == 2:  # tuned and base side by side, in one cell over both rows
        figs = "".join(f"<figure>{_preview(clip, 128)}<figcaption>{wp.esc(row['group'])}</figcaption></figure>"
                       for clip, row, _ in group)
        preview = [f"<td rowspan='2'><div class='pair'>{figs}</div></td>", ""]
    else:
        preview = [f"<td>{_preview(group[0][0])}</td>"]
    for k, (clip, row, per_frame) in enumerate(group):
        seed = _seed(clip.path)
        cells = [preview[k], f"<td>{_per_frame_cell(per_frame, encoders)}</td>",
                 f"<td data-key='clip' data-v='{wp.esc(clip.path.name)}'>{wp.esc(clip.path.name)}</td>",
                 f"<td data-key='group' data-v='{wp.esc(row['group'])}'>{wp.esc(row['group'])}</td>",
                 f"<td data-key='seed' class='n' data-v='{wp.esc('' if seed is None else seed)}'>{wp.number(seed)}</td>",
                 f"<td data-key='prompt' data-v='{wp.esc(row.get('prompt') or '')}'>{wp.esc(row.get('prompt') or '-')}</td>"]
        for key, _ in columns:
            value = _metric(row, key)
            cells.append(f"<td data-key='{key}' class='n' data-v='{'' if value is None else value}'>"
                         f"{wp.number(value)}</td>")
        out.append(f"<tr class='clip' data-group='{wp.esc(row['group'])}'>{''.join(cells)}</tr>")
    return f"<tbody>{''.join(out)}</tbody>"


def _metric(row: dict, key: str):
    if key.startswith("face_detect_rate_"):
        return row["face_detect_rate"].get(key[len("face_detect_rate_"):])
    if key.startswith("face_sim_"):
        return row["face_sim"].get(key[len("face_sim_"):])
    return row.get(key)


def _per_frame_cell(per_frame: dict, encoders: list[str]) -> str:
    series, xs = {}, None
    for name in encoders:
        items = per_frame.get(name) or []
        if not items:
            continue
        xs = [int(i) for i, _, _ in items]
        series[name] = [None if s is None else float(s) for _, _, s in items]
    if not series:
        return "-"
    title = "; ".join(f"{n}: " + " ".join("-" if v is None else f"{v:.2f}" for v in vals) for n, vals in series.items())
    image = wp.img(wp.sparkline(xs, series), "image/png", "per-frame face similarity",
                   title=f"frames {xs[0]}..{xs[-1]}: {title}")
    if len(series) < 2:
        return image
    legend = " ".join(f"<span style='color:{wp.SERIES_COLOURS[k % len(wp.SERIES_COLOURS)]}'>&#9632;</span>{wp.esc(n)}"
                      for k, n in enumerate(series))
    return f"{image}<br><span class='note'>{legend}</span>"


def _aggregate_table(result: dict, encoders: list[str]) -> str:
    groups = [g for g in ("aggregate", "tuned", "base", "delta") if g in result]
    if not groups:
        return ""
    keys = ([(f"Face Sim ({_with_role(result, n)})", "face_sim", n) for n in encoders]
            + [(f"face detected ({n})", "face_detect_rate", n) for n in encoders]
            + [(m.replace("_", " "), m, None) for m in METRIC_COLUMNS])
    head = "<tr><th>metric</th>" + "".join(f"<th class='n'>{g}</th>" for g in groups) + "</tr>"
    lines = []
    for label, key, sub in keys:
        cells = []
        for g in groups:
            v = result[g].get(key)
            v = v.get(sub) if sub is not None and isinstance(v, dict) else v
            cells.append(f"<td class='n'>{wp.number(v)}</td>")
        lines.append(f"<tr><th>{wp.esc(label)}</th>{''.join(cells)}</tr>")
    return f"<h2>Summary</h2><table id='summary'><thead>{head}</thead><tbody>{''.join(lines)}</tbody></table>"


def _with_role(result: dict, encoder: str) -> str:
    """"facenet, tuned with" / "dlib, judge": which score the identity was optimised against."""
    if encoder == result.get("tuned_with"):
        return f"{encoder}, tuned with"
    if encoder == result.get("judge"):
        return f"{encoder}, judge"
    return encoder


def _judging(result: dict) -> str:
    tuned, judge = result.get("tuned_with"), result.get("judge")
    if not tuned:
        return ""
    text = (f"The identity was tuned against <b>{wp.esc(tuned)}</b>; "
            + (f"<b>{wp.esc(judge)}</b> judges it independently (it was never optimised against). Compare each "
               "encoder's scores with its own, tuned against base: their scales differ." if judge
               else "no independent judge ran."))
    note = result.get("judge_note")
    return f"<p class='note' id='judging'>{text}{' ' + wp.esc(note) if note else ''}</p>"


def _notes(rows: list[dict]) -> str:
    notes = {k: v for r in rows for k, v in (r.get("notes") or {}).items() if v}
    models = {}
    for r in rows:
        for k, v in (r.get("models") or {}).items():
            models.setdefault(k, "; ".join(f"{n}: {m}" for n, m in v.items()) if isinstance(v, dict) else str(v))
    items = "".join(f"<li><b>{wp.esc(k)}</b>: {wp.esc(v)}</li>" for k, v in notes.items())
    mitems = "".join(f"<li><b>{wp.esc(k)}</b>: {wp.esc(v)}</li>" for k, v in models.items())
    return ((f"<h2>Models</h2><ul class='note'>{mitems}</ul>" if mitems else "")
            + (f"<h2>Notes</h2><ul class='note'>{items}</ul>" if items else ""))
