"""Tuning an identity, in three parts: setup (plugins, reference faces, the engine's Tuner, a
checkpoint to resume from), the loop (steps, a per-step log, checkpoints, samples) and finish
(held-out similarity after tuning, the identity written atomically).

Finished tuning is never thrown away: the run folder holds copies of the photos (taken when the
run starts) and a full checkpoint of the last step before anything after it runs. A Ctrl-C or a
failure at any point after tuning began keeps the run, saves the newest completed step and says
which step is saved and how to resume; `pv tune --resume NAME` of a run whose steps are all done
only finishes it."""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..context import Context
from ..errors import PVError
from ..identity_files import write_identity
from ..locks import IdentityLock
from ..settings import Settings, from_dict, overlay
from ..store import validate_name
from .resources import build_backbone, build_encoder, out_of_memory_hint, peak_memory_mb

TINY_NOTE = ("tiny backbone: random weights that never draw a face. This run proves the mechanics "
             "(gradients reach only the adapter, the loss falls, held-out similarity on the tuning "
             "encoder rises), not identity fidelity: use a profile with real weights for that.")
HELD_OUT_FIRST_SEED = 1001


def held_out_seeds(count: int) -> list[int]:
    """The unseen seeds of the held-out measure (`tune.held_out` of them; the same in every run)."""
    return [HELD_OUT_FIRST_SEED + i for i in range(count)]


def refuse_judge_encoder(registry, name: str, encoder=None) -> None:
    """The ID loss needs gradients through the encoder: a non-differentiable one (an evaluation
    judge) is refused in one line, from its factory's `differentiable` before any model loads, or
    from the built `encoder`'s (a plugin that declares it only on the class)."""
    factory = registry.get("encoders", name).factory
    if getattr(factory, "differentiable", True) and getattr(encoder, "differentiable", True):
        return
    usable = sorted(n for n, e in registry.entries["encoders"].items() if getattr(e.factory, "differentiable", True))
    raise PVError(f"encoder {name!r} is not differentiable: it can judge identities (pv eval --encoder {name}) "
                  "but not tune them", f"tune with --encoder {' or '.join(usable)}" if usable else
                  "install a differentiable encoder plugin (see `pv plugins`)")


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
    paths: list[Path]  # the photos the identity keeps (a run's copies)
    settings: Settings
    profile: str
    face_index: int
    prompts: list[str] | None
    force: bool
    resume: bool
    eval_held_out: bool
    sources: list[Path] | None = None  # a fresh run's originals (the copies' bytes): errors name the user's files
    memory_plan: dict | None = None  # what tune.memory chose (jobs/plan.py), recorded in the identity


@dataclass
class _Progress:
    """How far a session got: what a failure keeps and says."""

    phase: str = "loading the models"
    done: dict | None = None  # the tuner's state after its last completed step (a deep copy)
    finished: bool = False  # the identity is written and the run removed
    seconds: float = 0.0  # spent in the loop
    record: dict | None = None  # the log record of the step in `done` while it is being written


@dataclass
class _Session:
    ctx: Context
    run: object  # Run, or None on a data-parallel replica
    r: _RunInputs
    dp: object
    backbone: object
    encoder: object
    refs: list
    per_photo: object
    reference: object
    tuner: object
    before: float | None
    first_step: int
    tracker: object = None  # trackers.Tracker on the main process with tune.report_to set
    # sharded (tune.fsdp): a replica runs the main process's denoiser calls too; whether the main
    # process measures the held-out similarity after tuning
    measure_after: bool = False


# Settings a resume may change; any other differing setting is refused, naming the run's value.
RESUME_MAY_CHANGE = ("tune.steps", "tune.clips_per_step", "tune.report_to", "tune.fsdp")
FLAGS = {"tune.steps": "--steps", "tune.lr": "--lr", "tune.seed": "--seed", "adapter.rank": "--rank",
         "adapter.targets": "--targets", "tune.class_word": "--class-word", "tune.prompts_mode": "--prompts-mode",
         "encoder.name": "--encoder", "tune.augment": "--augment/--no-augment",
         "adapter.active_fraction": "--active-fraction", "tune.scr_weight": "--scr-weight",
         "tune.clips_per_step": "--clips-per-step", "tune.report_to": "--report-to"}
BEFORE = "held_out_id_sim_before"


def tune(ctx: Context, request: TuneRequest, data_parallel: bool = True) -> dict:
    """Tune a new identity. The photos are copied into the run folder first; checkpoints go to
    it every tune.checkpoint_every steps, after the last step, and on Ctrl-C or a failure; the
    identity is written only when tuning ends. Under a distributed launcher every process tunes
    the same identity (data parallel); the main one writes."""
    from dataclasses import replace

    from ..distributed import process_group
    from ..engine.prompts import load_prompt_file
    from ..images import expand_photos
    from .plan import fit_to_card
    from .trackers import require

    name = validate_name(request.name)
    refuse_judge_encoder(ctx.registry, request.settings.encoder.name)
    require(request.settings.tune.report_to)  # a missing tracker library fails before any model loads
    ctx.registry.check_frames(request.settings.backbone.name, request.settings.tune.frames, "tune.frames")
    # tune.memory: the cheapest memory switches whose traced peak fits the card, before any model loads
    settings, memory_plan = fit_to_card(ctx, request.settings)
    request = replace(request, settings=settings)
    dp = process_group() if data_parallel else None
    if dp is not None and not dp.is_main:  # a replica: reads the inputs, writes nothing
        prompts = load_prompt_file(request.prompts_file) if request.prompts_file else None
        return _tune(ctx, None, _RunInputs(name, expand_photos(request.photos), request.settings, request.profile,
                                           request.face_index, prompts, request.force, False, False), dp)
    with IdentityLock(ctx.store, name, "tuned"):  # one writer per name, across processes
        return _start(ctx, request, name, dp, memory_plan)


def _start(ctx: Context, request: TuneRequest, name: str, dp=None, memory_plan: dict | None = None) -> dict:
    from ..engine.prompts import load_prompt_file
    from ..images import expand_photos
    from ..runs import Run

    run = Run(ctx.store, name)
    ctx.store.check_free(name, request.force)  # fail before minutes of work, and again before replacing
    if run.exists() and not request.force:
        raise PVError(f"an interrupted run of {name!r} exists", f"resume it with `pv tune --resume {name}`, "
                      "or pass --force to start over")
    if not request.photos:
        raise PVError("tune needs reference photo(s)", "e.g. pv tune face.jpg --name alice")
    ctx.registry.check_frames(request.settings.backbone.name, request.settings.tune.frames, "tune.frames")
    check_sizes(ctx, request.settings)
    paths = expand_photos(request.photos)
    prompts = load_prompt_file(request.prompts_file) if request.prompts_file else None
    try:
        copies = run.start({"face_index": request.face_index, "prompts": prompts, "profile": request.profile,
                            "memory_plan": memory_plan}, request.settings.to_dict(), paths)
        return _tune(ctx, run, _RunInputs(name, copies, request.settings, request.profile, request.face_index, prompts,
                                          request.force, False, request.eval_held_out, sources=paths,
                                          memory_plan=memory_plan), dp)
    except BaseException:
        if not run.checkpoint_paths():  # failed before tuning began (setup, a bad photo): nothing to resume
            run.discard()
        raise


def resume(ctx: Context, name: str, steps: int | None = None, eval_held_out: bool = True,
           clips_per_step: int | None = None, data_parallel: bool = True, force: bool = False,
           overlays: list[dict] | None = None, face_index: int | None = None, prompts_file: str | None = None,
           profile: str | None = None) -> dict:
    """Finish the interrupted run of `name` with its own photos (the run's copies) and settings.
    `steps` may extend it and `clips_per_step` change its batch; `overlays` (nested settings, as
    the command line's flags give them) may change those two and must leave every other setting as
    the run has it, as must `face_index`, `prompts_file` and `profile` when given. An identity of
    that name created since the interruption is replaced only with `force`. A run whose steps are
    all done is only finished (no step is run)."""
    from contextlib import nullcontext

    from ..distributed import process_group
    from ..engine.prompts import load_prompt_file
    from ..runs import Run

    dp = process_group() if data_parallel else None
    main = dp is None or dp.is_main
    with IdentityLock(ctx.store, name, "tuned") if main else nullcontext():
        run = Run(ctx.store, validate_name(name))
        inputs, saved = run.load()
        keep = f"to tune with other inputs start over: `pv tune PHOTOS --name {name} --force ...`"
        if profile and profile != inputs["profile"]:
            raise PVError(f"--profile cannot change on resume; the run keeps profile {inputs['profile']!r}", keep)
        if face_index is not None and face_index != inputs["face_index"]:
            raise PVError(f"--face-index cannot change on resume; the run keeps face_index={inputs['face_index']}", keep)
        if prompts_file and load_prompt_file(prompts_file) != inputs["prompts"]:
            raise PVError("--prompts cannot change on resume; the run keeps "
                          + (f"the {len(inputs['prompts'])} prompts it started with" if inputs["prompts"]
                             else "pv's built-in prompts"), keep)
        settings = _resume_settings(run, saved, [*(overlays or []), overlay({"tune.steps": steps,
                                                                             "tune.clips_per_step": clips_per_step})])
        from .trackers import require

        require(settings.tune.report_to)
        if main and ctx.store.exists(name) and not force:
            raise PVError(f"identity {name!r} already exists; finishing its interrupted run would replace it",
                          "pass --force to replace it with the resumed run")
        return _tune(ctx, run if main else None, _RunInputs(
            name, run.photo_paths(inputs), settings, inputs["profile"], inputs["face_index"], inputs["prompts"],
            force, True, eval_held_out and main, memory_plan=inputs.get("memory_plan")), dp,
            resume_from=None if main else run.latest_checkpoint())


def _resume_settings(run, saved: dict, overlays: list[dict]) -> Settings:
    """The run's settings with `overlays`; only RESUME_MAY_CHANGE may differ (one line naming the
    first other setting that would, and the run's value)."""
    base, new = _flat(from_dict(saved).to_dict()), from_dict(saved, overlays)
    flat = _flat(new.to_dict())
    for key in [*flat, *(k for k in base if k not in flat)]:
        if key not in RESUME_MAY_CHANGE and flat.get(key) != base.get(key):
            raise PVError(f"{FLAGS.get(key, '--set ' + key)} cannot change on resume; the run keeps "
                          f"{key}={_show(base.get(key))}",
                          f"to tune with other settings start over: `pv tune PHOTOS --name {run.name} --force ...`")
    done = run.saved_step() or 0
    if new.tune.steps < done:
        raise PVError(f"--steps {new.tune.steps} is fewer than the steps this run has done ({done})",
                      f"leave --steps out, or give {done} or more")
    return new


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else "none" if value is None else str(value)


def _tune(ctx: Context, run, r: _RunInputs, dp=None, resume_from: dict | None = None) -> dict:
    """Setup, loop, finish; `run` is None on a data-parallel replica (it writes nothing and returns
    {}). Any failure once tuning has begun keeps the run (see `_kept`)."""
    if dp is not None:
        from dataclasses import replace

        from ..reporting import Reporter

        ctx = replace(ctx, device=dp.device, reporter=ctx.reporter if dp.is_main else Reporter())
    progress = _Progress()
    try:
        session = _setup(ctx, run, r, dp, resume_from, progress)
        try:
            _loop(session, progress)
            if run is None:  # a replica waits until the main process has written the identity
                if session.measure_after and dp.sharded:
                    session.tuner.held_out_similarity(held_out_seeds(r.settings.tune.held_out))
                dp.barrier()
                return {}
            return _finish(session, progress)
        finally:
            if session.tracker is not None:
                session.tracker.close(failed=not progress.finished)
    except BaseException as exc:
        kept = None if run is None else _kept(run, r, progress, exc)
        if kept is None:
            raise
        raise kept from (None if isinstance(exc, (KeyboardInterrupt, PVError)) else exc)


def _setup(ctx: Context, run, r: _RunInputs, dp, resume_from: dict | None, progress: _Progress) -> _Session:
    """The tracker (main process), plugins, reference faces and the Tuner, at the run's checkpoint
    when resuming; the held-out similarity before tuning (measured once per run: a resume reads it
    back)."""
    settings, reporter, name = r.settings, ctx.reporter, r.name
    t = settings.tune
    tracker = None
    if run is not None and t.report_to != "none":  # opened first: a tracker that cannot start fails at once
        from .trackers import open_tracker

        tracker = open_tracker(run, name, t.report_to, t.logging_dir, (run.saved_step() or 0) if r.resume else 0)
    try:
        if tracker is not None:
            tracker.hyperparameters(settings.to_dict())
            reporter.status(f"logging to {tracker.where()}")
        session = _setup_models(ctx, run, r, dp, resume_from, progress)
    except BaseException:
        if tracker is not None:
            tracker.close(failed=True)
        raise
    session.tracker = tracker
    return session


def _setup_models(ctx: Context, run, r: _RunInputs, dp, resume_from: dict | None, progress: _Progress) -> _Session:
    import torch

    from ..engine.face_crops import embed_crops, mean_embedding, reference_faces
    from ..engine.tune import Tuner

    settings, reporter, name = r.settings, ctx.reporter, r.name
    t = settings.tune
    torch.manual_seed(t.seed)
    backbone = build_backbone(ctx, settings)
    encoder = build_encoder(ctx, settings, str(backbone.device))
    refuse_judge_encoder(ctx.registry, settings.encoder.name, encoder)
    scorer = None
    if t.scr_weight > 0:
        reporter.status(f"loading scorer {t.scorer}")
        scorer = ctx.registry.create("scorers", t.scorer, options=t.scorer_options, device=str(backbone.device))
    refs = reference_faces(encoder, r.sources or r.paths, r.face_index, warn=reporter.warn)
    per_photo = embed_crops(encoder, [ref.crop for ref in refs])
    reference = mean_embedding(per_photo)

    tuner = Tuner(backbone, encoder, settings, refs, prompts=r.prompts, scorer=scorer, rank=dp.rank if dp else 0)
    if r.resume:
        state = run.latest_checkpoint() if run is not None else resume_from
        if state is not None:
            tuner.load_state_dict(state, rng=run is not None)  # a replica keeps its own random streams
            if run is not None:
                run.truncate_log(tuner.step_index)
            reporter.status(f"resuming {name} at step {tuner.step_index}" if tuner.step_index < t.steps
                            else f"finishing {name}: its {t.steps} steps are done")
    if dp is not None:
        dp.attach(tuner, shard=t.fsdp)
        reporter.status(f"data parallel: {dp.world} processes, {dp.world * t.clips_per_step} clips per step"
                        + (", the denoiser sharded" if dp.sharded else ""))
    before, measure = None, False
    if run is not None and r.eval_held_out and t.held_out:
        measured = run.measures()
        before, measure = measured.get(BEFORE), BEFORE not in measured
    measure_after = run is not None and r.eval_held_out and t.held_out
    if dp is not None and dp.sharded:  # the replicas run the main process's measuring with it
        measure, measure_after = dp.from_main((measure, measure_after))
    if measure:
        progress.phase = "measuring the held-out similarity before tuning"
        before = _round(tuner.held_out_similarity(held_out_seeds(t.held_out), adapter=False))
        if run is not None:
            run.save_measures(**{BEFORE: before})
    return _Session(ctx, run, r, dp, backbone, encoder, refs, per_photo, reference, tuner, before, tuner.step_index,
                    measure_after=measure_after)


def _loop(s: _Session, progress: _Progress) -> None:
    """The steps left; the state after each is kept (a deep copy) for a failure to save, and the
    last step's is written as a checkpoint before anything else runs."""
    import copy

    tuner, run, t, dp = s.tuner, s.run, s.r.settings.tune, s.dp
    progress.done = copy.deepcopy(tuner.state_dict()) if run is not None else None
    start = time.perf_counter()
    from .plan import memory_hint

    with s.ctx.reporter.progress(f"tuning {s.r.name}", t.steps) as advance, \
            out_of_memory_hint("tune", s.backbone.device,
                               lambda: memory_hint(s.ctx, s.r.settings, "tune", s.backbone.device), s.backbone, t):
        for _ in range(s.first_step):
            advance()
        while tuner.step_index < t.steps:
            progress.phase = "tuning"
            stats = tuner.step()
            drift = {"processes": dp.world, "replica_drift": dp.drift(tuner.params)} if dp is not None else {}
            if run is None:
                if dp.sharded and t.sample_every and stats.step % t.sample_every == 0:
                    _sample(s.backbone, s.r.settings, tuner)  # the main process's sample, in step with it
                continue
            progress.done = copy.deepcopy(tuner.state_dict())
            progress.phase = f"saving step {stats.step}"
            progress.record = {**stats.__dict__, "face_hit_rate": stats.face_hits / max(1, stats.frames),
                               "peak_memory_mb": round(peak_memory_mb(s.backbone.device), 1), **drift}
            run.log(progress.record)
            if s.tracker is not None:
                s.tracker.scalars(stats.step, progress.record)
            progress.record = None
            if stats.step == t.steps or (t.checkpoint_every and stats.step % t.checkpoint_every == 0):
                run.save_checkpoint(progress.done, t.keep_checkpoints)
            advance(loss=stats.loss, id_sim=stats.id_sim)
            if t.sample_every and stats.step % t.sample_every == 0:
                progress.phase = f"writing the sample of step {stats.step}"
                frames, path, prompt = _write_sample(s.backbone, s.r.settings, tuner, run, stats.step)
                if s.tracker is not None:
                    s.tracker.video(stats.step, "sample", frames, s.r.settings.generate.fps, path, caption=prompt)
    progress.seconds = time.perf_counter() - start


def check_sizes(ctx: Context, settings: Settings) -> None:
    """The backbone's size multiple for the tuning clips and the samples (generate.*), before it loads."""
    b = settings.backbone
    for section in ("tune", "generate"):
        size = getattr(settings, section)
        ctx.registry.check_size(b.name, b.options, size.height, size.width, (f"{section}.height", f"{section}.width"))


def _finish(s: _Session, progress: _Progress) -> dict:
    """Held-out similarity after tuning, then the identity, written atomically; the run goes."""
    from ..engine.adapter import adapter_state_dict

    ctx, run, r, backbone, encoder, tuner = s.ctx, s.run, s.r, s.backbone, s.encoder, s.tuner
    settings, name = r.settings, r.name
    t = settings.tune
    progress.phase = "measuring the held-out similarity after tuning"
    after = tuner.held_out_similarity(held_out_seeds(t.held_out)) if r.eval_held_out and t.held_out else None
    progress.phase = "writing the identity"
    log = run.records()
    sims = [rec["id_sim"] for rec in log if rec["id_sim"] is not None]
    hits, frames = sum(rec["face_hits"] for rec in log), sum(rec["frames"] for rec in log)
    seconds, ran = progress.seconds, t.steps - s.first_step
    step_times = [rec["seconds"] for rec in log if isinstance(rec.get("seconds"), (int, float))]
    per_step = seconds / ran if ran else (sum(step_times) / len(step_times) if step_times else 0.0)

    adapter = adapter_state_dict(backbone.adapted)
    described = {**backbone.describe(), **encoder.describe()}
    a = settings.adapter
    metadata = {
        **described, "targets": a.targets, "rank": str(a.rank), "alpha": str(a.alpha),
        "active_fraction": str(a.active_fraction), "gate_noise_level": repr(tuner.gate), "steps": str(t.steps),
        "seed": str(t.seed), "token": t.token,
        "component": backbone.component,
        "class_word": t.class_word,
        "lora_adapter_metadata": {"r": a.rank, "lora_alpha": a.alpha, "target_modules": backbone.adapter_targets(a.targets),
                                  "init_lora_weights": "gaussian"},
    }
    info = {
        "name": name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pv_version": __version__, "profile": r.profile, **described,
        "photos": [p.name for p in r.paths],  # file names only: no paths of this machine in an identity
        "adapter_layers": len(tuner.layers),
        "adapter_parameters": sum(v.numel() for v in adapter.values()), "active_fraction": a.active_fraction,
        "gate_noise_level": round(tuner.gate, 4), "steps": t.steps, "resumed_at": s.first_step or None,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(per_step, 3),
        "id_sim_first": _round(sims[0]) if sims else None, "id_sim_last": _round(sims[-1]) if sims else None,
        "held_out_id_sim_before": _round(s.before), "held_out_id_sim_after": _round(after),
        # the clip size and steps the held-out clips were rendered at (generation's)
        "held_out_at": tuner.held_out_size() if after is not None or s.before is not None else None,
        "face_hit_rate": round(hits / frames, 3) if frames else None,
        "peak_memory_mb": round(peak_memory_mb(backbone.device), 1),
        "memory_plan": r.memory_plan,
        "note": TINY_NOTE if backbone.random_weights else "",
        **({"tracker": s.tracker.record()} if s.tracker is not None else {}),
    }
    if s.tracker is not None:
        s.tracker.summary({"steps": t.steps, BEFORE: _round(s.before), "held_out_id_sim_after": _round(after),
                           "seconds_per_step": info["seconds_per_step"], "face_hit_rate_total": info["face_hit_rate"]})
    with ctx.store.writer(name, force=r.force) as folder:
        write_identity(folder, adapter=adapter, metadata=metadata, reference=s.reference, per_photo=s.per_photo,
                       crops=[ref.crop for ref in s.refs], photos=[str(p) for p in r.paths],
                       settings=settings.to_dict(), info=info)
        if run.log_path.is_file():
            shutil.copy2(run.log_path, folder / "log.jsonl")
        if any(run.samples.iterdir()):
            shutil.copytree(run.samples, folder / "samples")
    progress.finished = True  # from here on the identity is whole: nothing to keep
    run.remove()
    info["path"] = str(ctx.store.path(name))
    if s.dp is not None:
        info["processes"] = s.dp.world
        s.dp.barrier()
    return info


def _kept(run, r: _RunInputs, progress: _Progress, exc: BaseException) -> PVError | None:
    """After a failure or Ctrl-C: save the newest completed step if no checkpoint has it, and the
    one-line error that says what is saved and how to resume; None when there is nothing to keep
    (tuning never began, or the identity is already written): the exception goes on as it is."""
    if progress.finished:
        return None
    interrupted = isinstance(exc, KeyboardInterrupt)
    saved, done, t = run.saved_step(), progress.done, r.settings.tune
    if done is not None and (saved is None or done["step"] > saved) and (interrupted or done["step"] > 0):
        try:
            record = progress.record
            if record is not None and record["step"] == done["step"] and \
                    not any(rec["step"] == record["step"] for rec in run.records()):
                run.log(record)  # the step's log record, cut off by the failure
            run.save_checkpoint(done, t.keep_checkpoints)
            saved = done["step"]
        except BaseException:  # a full disk, a second Ctrl-C: the newest checkpoint on disk is what is kept
            saved = run.saved_step()
    if saved is None:
        return None
    n, name, phase = t.steps, r.name, progress.phase
    last = saved >= n
    resume = (f"finish it with `pv tune --resume {name}` (no retraining)" if last
              else f"resume with `pv tune --resume {name}`")
    if interrupted:
        what = (f"interrupted while {phase}, after the last step ({n} of {n}); the tuned adapter is saved" if last
                else f"interrupted at step {saved} of {n}; checkpoint saved")
        return PVError(what, resume, exit_code=130)
    if isinstance(exc, PVError):
        cause, hint, code = exc.message, f"{exc.hint}; then {resume}" if exc.hint else resume, exc.exit_code
    else:
        text = str(exc).strip()
        cause = f"unexpected {type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
        hint, code = f"this is a bug in pv or a plugin (PV_DEBUG=1 shows the traceback); {resume}", 1
    if last:
        return PVError(f"{cause} (while {phase}, after the last step); the tuned adapter is saved", hint, exit_code=code)
    return PVError(f"{cause} (while {phase}); step {saved} of {n} is saved", hint, exit_code=code)


def _sample(backbone, settings: Settings, tuner):
    """A short clip with the adapter as it is now (fixed seed and prompt): (frames, prompt)."""
    from contextlib import nullcontext

    from ..engine.generate import generate_frames
    from ..engine.offload import text_encoders_on

    g, prompt = settings.generate, tuner.prompts.prompts[0]
    # the pipeline encodes its prompts itself: offloaded text encoders come back for the clip
    with text_encoders_on(backbone) if tuner.embeds.offloaded else nullcontext():
        return generate_frames(backbone, prompt, g, gate=tuner.gate), prompt


def _write_sample(backbone, settings: Settings, tuner, run, step: int):
    """A short clip and its first frame, with the adapter as it is now (fixed seed and prompt);
    returns (frames, the clip's path, prompt)."""
    import cv2

    from ..video import write_mp4

    g = settings.generate
    frames, prompt = _sample(backbone, settings, tuner)
    stem = run.samples / f"step_{step:07d}"
    write_mp4(frames.numpy(), stem.with_suffix(".mp4"), g.fps, metadata={"step": step, "prompt": prompt, "seed": g.seed,
                                                                           "fps": g.fps})
    cv2.imwrite(str(stem.with_suffix(".png")), cv2.cvtColor(frames[0].numpy(), cv2.COLOR_RGB2BGR))
    return frames.numpy(), stem.with_suffix(".mp4"), prompt


def _round(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)
