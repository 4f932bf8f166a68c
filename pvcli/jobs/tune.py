"""Tuning an identity: resolve the photos and prompts, build the plugins, run the engine's
Tuner with checkpoints and a per-step log, and write the identity atomically when it ends."""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..context import Context
from ..errors import PVError
from ..identity import write_identity
from ..locks import IdentityLock
from ..settings import Settings, from_dict, overlay
from ..store import validate_name
from .common import build_backbone, build_encoder, out_of_memory_hint, peak_memory_mb

TINY_NOTE = ("tiny backbone: random weights that never draw a face. This run proves the mechanics "
             "(gradients reach only the adapter, the loss falls, held-out similarity on the tuning "
             "encoder rises), not identity fidelity: use a profile with real weights for that.")
HELD_OUT_SEEDS = [1001, 1002, 1003]


@dataclass
class TuneRequest:
    """What a new tuning run needs beside its settings."""

    name: str
    photos: list[str]
    settings: Settings
    profile: str = ""
    force: bool = False
    face_index: int = 0
    prompts_file: str | None = None
    eval_held_out: bool = True


@dataclass
class _RunInputs:
    name: str
    paths: list[Path]
    settings: Settings
    profile: str
    face_index: int
    prompts: list[str] | None
    force: bool
    resume: bool
    eval_held_out: bool


def tune(ctx: Context, request: TuneRequest, data_parallel: bool = True) -> dict:
    """Tune a new identity. Checkpoints go to the run folder every tune.checkpoint_every steps
    and on Ctrl-C; the identity is written only when tuning ends. Under a distributed launcher
    every process tunes the same identity (data parallel); the main one writes."""
    from ..distributed import process_group
    from ..engine.identity import expand_photos
    from ..engine.prompts import load_prompt_file

    name = validate_name(request.name)
    dp = process_group() if data_parallel else None
    if dp is not None and not dp.is_main:  # a replica: reads the inputs, writes nothing
        prompts = load_prompt_file(request.prompts_file) if request.prompts_file else None
        return _tune(ctx, None, _RunInputs(name, expand_photos(request.photos), request.settings, request.profile,
                                           request.face_index, prompts, request.force, False, False), dp)
    with IdentityLock(ctx.store, name, "tuned"):  # one writer per name, across processes
        return _start(ctx, request, name, dp)


def _start(ctx: Context, request: TuneRequest, name: str, dp=None) -> dict:
    from ..engine.identity import expand_photos
    from ..engine.prompts import load_prompt_file
    from ..runs import Run

    run = Run(ctx.store, name)
    ctx.store.check_free(name, request.force)  # fail before minutes of work, and again before replacing
    if run.exists() and not request.force:
        raise PVError(f"an interrupted run of {name!r} exists", f"resume it with `pv tune --resume {name}`, "
                      "or pass --force to start over")
    if not request.photos:
        raise PVError("tune needs reference photo(s)", "e.g. pv tune face.jpg --name alice")
    paths = expand_photos(request.photos)
    prompts = load_prompt_file(request.prompts_file) if request.prompts_file else None
    run.start({"photos": [str(p) for p in paths], "face_index": request.face_index, "prompts": prompts,
               "profile": request.profile}, request.settings.to_dict())
    try:
        return _tune(ctx, run, _RunInputs(name, paths, request.settings, request.profile, request.face_index, prompts,
                                          request.force, False, request.eval_held_out), dp)
    except BaseException:
        if not run.checkpoint_paths():  # failed before any checkpoint (setup, a bad photo): nothing to resume
            run.discard()
        raise


def resume(ctx: Context, name: str, steps: int | None = None, eval_held_out: bool = True,
           clips_per_step: int | None = None, data_parallel: bool = True) -> dict:
    """Finish the interrupted run of `name` with its own photos and settings; `steps` may extend it."""
    from contextlib import nullcontext

    from ..distributed import process_group
    from ..engine.identity import expand_photos
    from ..runs import Run

    dp = process_group() if data_parallel else None
    main = dp is None or dp.is_main
    with IdentityLock(ctx.store, name, "tuned") if main else nullcontext():
        run = Run(ctx.store, validate_name(name))
        inputs, saved = run.load()
        settings = from_dict(saved, [overlay({"tune.steps": steps, "tune.clips_per_step": clips_per_step})])
        if main:
            ctx.store.check_free(name, force=True)
        return _tune(ctx, run if main else None, _RunInputs(
            name, expand_photos(inputs["photos"]), settings, inputs["profile"], inputs["face_index"], inputs["prompts"],
            True, True, eval_held_out and main), dp, resume_from=None if main else run.latest_checkpoint())


def _tune(ctx: Context, run, r: _RunInputs, dp=None, resume_from: dict | None = None) -> dict:
    """Tune; `run` is None on a data-parallel replica (it writes nothing and returns {})."""
    import copy

    import torch

    from ..engine.adapter import adapter_state_dict
    from ..engine.identity import embed_crops, mean_embedding, reference_faces
    from ..engine.tune import Tuner

    if dp is not None:
        from dataclasses import replace

        from ..reporting import Reporter

        ctx = replace(ctx, device=dp.device, reporter=ctx.reporter if dp.is_main else Reporter())
    settings, reporter, name = r.settings, ctx.reporter, r.name
    t = settings.tune
    torch.manual_seed(t.seed)
    backbone = build_backbone(ctx, settings)
    encoder = build_encoder(ctx, settings, str(backbone.device))
    scorer = None
    if t.scr_weight > 0:
        reporter.status(f"loading scorer {t.scorer}")
        scorer = ctx.registry.create("scorers", t.scorer, options=t.scorer_options, device=str(backbone.device))
    refs = reference_faces(encoder, r.paths, r.face_index, warn=reporter.warn)
    per_photo = embed_crops(encoder, [ref.crop for ref in refs])
    reference = mean_embedding(per_photo)

    tuner = Tuner(backbone, encoder, settings, refs, prompts=r.prompts, scorer=scorer, rank=dp.rank if dp else 0)
    if r.resume:
        state = run.latest_checkpoint() if run is not None else resume_from
        if state is not None:
            tuner.load_state_dict(state, rng=run is not None)  # a replica keeps its own random streams
            if run is not None:
                run.truncate_log(tuner.step_index)
            reporter.status(f"resuming {name} at step {tuner.step_index}")
    if dp is not None:
        tuner.grad_sync = dp.sync
        dp.broadcast(tuner.params)
        reporter.status(f"data parallel: {dp.world} processes, {dp.world * t.clips_per_step} clips per step")
    before = tuner.held_out_similarity(HELD_OUT_SEEDS, adapter=False) if r.eval_held_out else None
    start = time.perf_counter()
    first_step = tuner.step_index
    with reporter.progress(f"tuning {name}", t.steps) as advance, out_of_memory_hint("tune", backbone.device):
        for _ in range(first_step):
            advance()
        while tuner.step_index < t.steps:
            snapshot = copy.deepcopy(tuner.state_dict())  # what a Ctrl-C mid-step saves
            try:
                stats = tuner.step()
            except KeyboardInterrupt:
                if run is None:
                    raise
                run.save_checkpoint(snapshot, t.keep_checkpoints)
                raise PVError(f"interrupted at step {snapshot['step']} of {t.steps}; checkpoint saved",
                              f"resume with `pv tune --resume {name}`", exit_code=130) from None
            drift = {"processes": dp.world, "replica_drift": dp.drift(tuner.params)} if dp is not None else {}
            if run is None:
                continue
            run.log({**stats.__dict__, "face_hit_rate": stats.face_hits / max(1, stats.frames),
                     "peak_memory_mb": round(peak_memory_mb(backbone.device), 1), **drift})
            advance(loss=stats.loss, id_sim=stats.id_sim)
            if t.checkpoint_every and stats.step % t.checkpoint_every == 0 and stats.step < t.steps:
                run.save_checkpoint(tuner.state_dict(), t.keep_checkpoints)
            if t.sample_every and stats.step % t.sample_every == 0:
                _write_sample(backbone, settings, tuner, run, stats.step)
    if run is None:  # a replica waits until the main process has written the identity
        dp.barrier()
        return {}
    seconds = time.perf_counter() - start
    after = tuner.held_out_similarity(HELD_OUT_SEEDS) if r.eval_held_out else None
    log = [json.loads(ln) for ln in run.log_path.read_text().splitlines() if ln] if run.log_path.is_file() else []
    sims = [rec["id_sim"] for rec in log if rec["id_sim"] is not None]
    hits, frames = sum(rec["face_hits"] for rec in log), sum(rec["frames"] for rec in log)

    adapter = adapter_state_dict(backbone.unet)
    described = {**backbone.describe(), **encoder.describe()}
    a = settings.adapter
    metadata = {
        **described, "targets": a.targets, "rank": str(a.rank), "alpha": str(a.alpha),
        "active_fraction": str(a.active_fraction), "steps": str(t.steps), "seed": str(t.seed), "token": t.token,
        "class_word": t.class_word,
        "lora_adapter_metadata": {"r": a.rank, "lora_alpha": a.alpha, "target_modules": backbone.adapter_targets(a.targets),
                                  "init_lora_weights": "gaussian"},
    }
    done = max(1, t.steps - first_step)
    info = {
        "name": name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pv_version": __version__, "profile": r.profile, **described,
        "photos": [str(p) for p in r.paths], "adapter_layers": len(tuner.layers),
        "adapter_parameters": sum(v.numel() for v in adapter.values()), "active_fraction": a.active_fraction,
        "steps": t.steps, "resumed_at": first_step or None, "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / done, 3),
        "id_sim_first": _round(sims[0]) if sims else None, "id_sim_last": _round(sims[-1]) if sims else None,
        "held_out_id_sim_before": _round(before), "held_out_id_sim_after": _round(after),
        "face_hit_rate": round(hits / frames, 3) if frames else None,
        "peak_memory_mb": round(peak_memory_mb(backbone.device), 1),
        "note": TINY_NOTE if backbone.random_weights else "",
    }
    with ctx.store.writer(name, force=r.force) as folder:
        write_identity(folder, adapter=adapter, metadata=metadata, reference=reference, per_photo=per_photo,
                       crops=[ref.crop for ref in refs], photos=[str(p) for p in r.paths],
                       settings=settings.to_dict(), info=info)
        if run.log_path.is_file():
            shutil.copy2(run.log_path, folder / "log.jsonl")
        if any(run.samples.iterdir()):
            shutil.copytree(run.samples, folder / "samples")
    run.remove()
    info["path"] = str(ctx.store.path(name))
    if dp is not None:
        info["processes"] = dp.world
        dp.barrier()
    return info


def _write_sample(backbone, settings: Settings, tuner, run, step: int) -> None:
    """A short clip and its first frame, with the adapter as it is now (fixed seed and prompt)."""
    import cv2

    from ..engine.generate import generate_frames
    from ..engine.sampling import adapted_steps
    from ..video import write_mp4

    g = settings.generate
    prompt = tuner.prompts.prompts[0]
    frames = generate_frames(backbone, prompt, g, adapter_steps=adapted_steps(g.steps, settings.adapter.active_fraction))
    stem = run.samples / f"step_{step:07d}"
    write_mp4(frames.numpy(), stem.with_suffix(".mp4"), g.fps, metadata={"step": step, "prompt": prompt, "seed": g.seed})
    cv2.imwrite(str(stem.with_suffix(".png")), cv2.cvtColor(frames[0].numpy(), cv2.COLOR_RGB2BGR))


def _round(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)
