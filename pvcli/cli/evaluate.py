"""`pv eval`: score videos, or an identity's generated clips, against reference photos."""

from __future__ import annotations

from pathlib import Path

import typer

from ..console import emit, err
from .common import DEVICE_OPT, JSON_OPT, QUIET_OPT, AppState, handle_errors


def register(app: typer.Typer, state: AppState) -> None:
    @app.command("eval")
    @handle_errors
    def eval_(
        target: str = typer.Argument(..., help="A video, a folder of videos, or an identity name (clips are generated)."),
        refs: list[str] = typer.Option(None, "--ref", help="Reference photo(s) or identity name (repeatable)."),
        ids: list[str] = typer.Option(None, "--id", help="Several people in one clip: one person per --id, an "
                                      "identity name or photo(s) of that person (repeatable); faces are assigned "
                                      "one to one and checked against each person's region."),
        layout: str = typer.Option("left-right", "--layout", help="With --id, for clips without pv's record of "
                                   "where each person stands: left-right or top-bottom strips, in --id order."),
        per_frame: bool = typer.Option(False, "--per-frame", help="With --id and --json: every sampled frame's "
                                       "faces, boxes, similarities and assignment."),
        prompts: list[str] = typer.Option(None, "--prompt", help="Prompt(s): the text for CLIP-T; for an identity, "
                                          "what to generate (repeatable)."),
        seeds: list[int] = typer.Option(None, "--seed", help="Seeds to generate with, for an identity (repeatable)."),
        encoders: list[str] = typer.Option(None, "--encoder", help="Identity encoder(s) to judge with (repeatable; "
                                           "default: the identity's own, else facenet, and for an identity also "
                                           "a judge it was not tuned against: dlib where installed)."),
        scorer: str = typer.Option("clip", "--scorer", help="Image-text model for CLIP-T / temporal consistency."),
        scorer_opts: list[str] = typer.Option(None, "--scorer-option", help="key=value for the scorer, e.g. model=PATH."),
        flow: str = typer.Option("auto", "--flow", help="Optical flow for Dynamic Degree: auto, raft or farneback."),
        no_face: str = typer.Option("skip", "--no-face", help="Frames without a face: skip (the papers' protocol) "
                                    "or center (score the centre crop, e.g. for the tiny backbone)."),
        compare_base: bool = typer.Option(False, "--compare-base", help="Identity only: also generate with the "
                                          "adapter off (same prompts and seeds) and compare."),
        out_dir: Path = typer.Option(None, "--out-dir", help="Where generated clips go (default: a temp folder)."),
        csv_path: Path = typer.Option(None, "--csv", help="Write per-video metrics as CSV."),
        sheets: Path = typer.Option(None, "--sheets", help="Folder for contact-sheet PNGs (one per video)."),
        report: Path = typer.Option(None, "--report", help="Write a self-contained HTML page: one sortable row per "
                                    "clip with an animated preview, its metrics and per-frame face similarity."),
        device: str = DEVICE_OPT,
        as_json: bool = JSON_OPT,
        quiet: bool = QUIET_OPT,
    ):
        """Measure identity (Face Sim), prompt following (CLIP-T), motion and temporal consistency."""
        from .. import api
        from ..api import PVError
        from ..settings import parse_set

        if ids:
            for flag, given in (("--ref", refs), ("--prompt", prompts), ("--seed", seeds), ("--compare-base", compare_base),
                                ("--csv", csv_path), ("--sheets", sheets), ("--report", report),
                                ("--out-dir", out_dir), ("--scorer-option", scorer_opts)):
                if given:
                    raise PVError(f"{flag} does not go with --id", "--id scores who is where in videos: give one "
                                  "--id per person (an identity or photos of that person)")
            result = api.evaluate_identities(target, ids, encoders=encoders, layout=layout, per_frame=per_frame,
                                             context=state.context(quiet or as_json, device))
            if not (quiet or as_json):
                _identities_table(result)
            emit(result if as_json else "\n".join(r["video"] for r in result["videos"]), as_json)
            return
        for item in scorer_opts or []:
            if "=" not in item or not item.partition("=")[0].strip():
                raise PVError(f"--scorer-option expects key=value, got {item!r}", "e.g. --scorer-option model=PATH")
        result = api.evaluate(target, refs=refs, prompts=prompts, seeds=seeds, encoders=encoders, scorer=scorer,
                              scorer_options=parse_set(scorer_opts or []), flow=flow, no_face=no_face,
                              compare_base=compare_base, out_dir=out_dir, csv=csv_path, sheets=sheets, report=report,
                              context=state.context(quiet or as_json, device))
        if not (quiet or as_json):
            _table(result)
            if result.get("report"):
                from rich.markup import escape

                err.print(f"report: {escape(result['report'])}", soft_wrap=True)
        emit(result if as_json else "\n".join(r["video"] for r in result["videos"]), as_json)


def _table(result: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    groups = [g for g in ("aggregate", "tuned", "base", "delta") if g in result]
    first = result[groups[0]]
    encoders = list(first["face_sim"])
    table = Table(title="pv eval", title_justify="left")
    table.add_column("metric")
    for g in groups:
        table.add_column(g, justify="right")
    role = {result.get("tuned_with"): ", tuned with", result.get("judge"): ", judge"}
    encoders.sort(key=lambda n: (n != result.get("tuned_with"), n != result.get("judge")))  # tuned with, judge, others
    metric_rows = [(f"face_sim ({n}{role.get(n, '')})", "face_sim", n) for n in encoders]
    metric_rows += [(f"face_detect_rate ({n})", "face_detect_rate", n) for n in encoders]
    metric_rows += [(m, m, None) for m in ("clip_t", "dynamic_degree", "motion_magnitude", "temporal_consistency")]
    for label, key, sub in metric_rows:
        cells = []
        for g in groups:
            v = result[g].get(key)
            v = v.get(sub) if sub is not None and isinstance(v, dict) else v
            cells.append("-" if v is None else f"{v:.4f}")
        table.add_row(escape(label), *cells)
    err.print(table)
    if result.get("judge"):
        err.print(f"judge: {escape(result['judge'])}, an encoder the identity was not tuned against (it was tuned "
                  f"against {escape(str(result['tuned_with']))}); each encoder has its own scale: compare its scores with its own "
                  "(tuned against base, --compare-base), not across encoders", soft_wrap=True)
    elif result.get("judge_note"):
        err.print(f"judge: none ({escape(result['judge_note'])})", soft_wrap=True)
    notes = {k: v for r in result["videos"] for k, v in r["notes"].items()}
    for k, v in notes.items():
        err.print(f"[dim]{escape(k)}: {escape(str(v))}[/dim]", soft_wrap=True)


def _identities_table(result: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    for row in result["videos"]:
        table = Table(title=f"pv eval --id: {escape(row['video'])} (regions: {escape(row['regions_from'])})",
                      title_justify="left")
        for col in ("person", "encoder", "own_sim", "margin", "swap_rate", "presence"):
            table.add_column(col, justify="left" if col in ("person", "encoder") else "right")
        for enc, scores in row["scores"].items():
            role = " (judge)" if enc == result.get("judge") else ""
            for person, s in scores["identities"].items():
                table.add_row(escape(person), escape(enc) + role,
                              *("-" if s[k] is None else f"{s[k]:.4f}" for k in ("own_sim", "margin", "swap_rate", "presence")))
        err.print(table)
        first = next(iter(row["scores"].values()))
        err.print(f"exactly {len(result['ids'])} faces in {first['exact_count_rate']:.0%} of the sampled frames; "
                  f"swap rate {first['swap_rate']:.0%}", soft_wrap=True)
        for w in row["warnings"]:
            err.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
