"""The jobs behind the commands: resolve settings, build plugins through the registry, run
the engine, write results. Front-end free: they report through a `Reporter`."""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import time
from pathlib import Path

from . import __version__
from .errors import PVError
from .identity import read_adapter, write_identity
from .plugins import Registry
from .reporting import Reporter
from .settings import Settings, from_dict
from .store import Store, validate_name

TINY_NOTE = ("tiny backbone: random weights that never draw a face. This run proves the mechanics "
             "(gradients reach only the adapter, the loss falls, held-out similarity on the tuning "
             "encoder rises), not identity fidelity: use real AnimateDiff weights for that.")
HELD_OUT_SEEDS = [1001, 1002, 1003]


def build_backbone(registry: Registry, settings: Settings, device: str | None, reporter: Reporter):
    reporter.status(f"loading backbone {settings.backbone.name}")
    return registry.create("backbones", settings.backbone.name, options=settings.backbone.options, device=device)


def build_encoder(registry: Registry, settings: Settings, device: str, reporter: Reporter):
    reporter.status(f"loading identity encoder {settings.encoder.name}")
    return registry.create("encoders", settings.encoder.name, options=settings.encoder.options, device=device)


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tune(registry: Registry, store: Store, photos: list[str], name: str, settings: Settings | None, profile: str, *,
         force: bool = False, face_index: int = 0, prompts_file: str | None = None, device: str | None = None,
         resume: bool = False, steps: int | None = None, eval_held_out: bool = True,
         reporter: Reporter | None = None) -> dict:
    """Tune identity `name`, or with `resume` finish its interrupted run (its own photos and
    settings; `steps` may extend it). Checkpoints go to the run folder every
    tune.checkpoint_every steps and on Ctrl-C; the identity is written only when tuning ends."""
    import copy

    import torch

    from .engine.adapter import adapter_state_dict
    from .engine.identity import embed_crops, expand_photos, mean_embedding, reference_faces
    from .engine.prompts import load_prompt_file
    from .engine.tune import Tuner
    from .runs import Run

    reporter = reporter or Reporter()
    validate_name(name)
    run = Run(store, name)
    if resume:
        inputs, saved = run.load()
        settings = from_dict(saved, [{"tune": {"steps": steps}}] if steps else None)
        photos, face_index, prompts, profile = inputs["photos"], inputs["face_index"], inputs["prompts"], inputs["profile"]
        store.check_free(name, force=True)
        paths = expand_photos(photos)
    else:
        store.check_free(name, force)  # fail before minutes of work, and again before replacing
        if run.exists() and not force:
            raise PVError(f"an interrupted run of {name!r} exists", f"resume it with `pv tune --resume {name}`, "
                          "or pass --force to start over")
        paths = expand_photos(photos)
        prompts = load_prompt_file(prompts_file) if prompts_file else None
        run.start({"photos": [str(p) for p in paths], "face_index": face_index, "prompts": prompts,
                   "profile": profile}, settings.to_dict())
    t = settings.tune
    torch.manual_seed(t.seed)
    backbone = build_backbone(registry, settings, device, reporter)
    encoder = build_encoder(registry, settings, str(backbone.device), reporter)
    scorer = None
    if t.scr_weight > 0:
        reporter.status(f"loading scorer {t.scorer}")
        scorer = registry.create("scorers", t.scorer, options=t.scorer_options, device=str(backbone.device))
    refs = reference_faces(encoder, paths, face_index, warn=reporter.warn)
    per_photo = embed_crops(encoder, [r.crop for r in refs])
    reference = mean_embedding(per_photo)

    tuner = Tuner(backbone, encoder, settings, refs, prompts=prompts, scorer=scorer)
    if resume:
        state = run.latest_checkpoint()
        if state is not None:
            tuner.load_state_dict(state)
            run.truncate_log(tuner.step_index)
            reporter.status(f"resuming {name} at step {tuner.step_index}")
    before = tuner.held_out_similarity(HELD_OUT_SEEDS, adapter=False) if eval_held_out else None
    start = time.perf_counter()
    first_step = tuner.step_index
    with reporter.progress(f"tuning {name}", t.steps) as advance:
        for _ in range(first_step):
            advance()
        while tuner.step_index < t.steps:
            snapshot = copy.deepcopy(tuner.state_dict())  # what a Ctrl-C mid-step saves
            try:
                stats = tuner.step()
            except KeyboardInterrupt:
                run.save_checkpoint(snapshot, t.keep_checkpoints)
                raise PVError(f"interrupted at step {snapshot['step']} of {t.steps}; checkpoint saved",
                              f"resume with `pv tune --resume {name}`", exit_code=130) from None
            run.log({**stats.__dict__, "face_hit_rate": stats.face_hits / max(1, stats.frames),
                     "peak_memory_mb": round(_peak_memory_mb(backbone.device), 1)})
            advance(loss=stats.loss, id_sim=stats.id_sim)
            if t.checkpoint_every and stats.step % t.checkpoint_every == 0 and stats.step < t.steps:
                run.save_checkpoint(tuner.state_dict(), t.keep_checkpoints)
            if t.sample_every and stats.step % t.sample_every == 0:
                _write_sample(backbone, settings, tuner, run, stats.step)
    seconds = time.perf_counter() - start
    after = tuner.held_out_similarity(HELD_OUT_SEEDS) if eval_held_out else None
    log = [json.loads(ln) for ln in run.log_path.read_text().splitlines() if ln] if run.log_path.is_file() else []
    sims = [r["id_sim"] for r in log if r["id_sim"] is not None]
    hits, frames = sum(r["face_hits"] for r in log), sum(r["frames"] for r in log)

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
        "pv_version": __version__, "profile": profile, **described,
        "photos": [str(p) for p in paths], "adapter_layers": len(tuner.layers),
        "adapter_parameters": sum(v.numel() for v in adapter.values()), "active_fraction": a.active_fraction,
        "steps": t.steps, "resumed_at": first_step or None, "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / done, 3),
        "id_sim_first": _round(sims[0]) if sims else None, "id_sim_last": _round(sims[-1]) if sims else None,
        "held_out_id_sim_before": _round(before), "held_out_id_sim_after": _round(after),
        "face_hit_rate": round(hits / frames, 3) if frames else None,
        "peak_memory_mb": round(_peak_memory_mb(backbone.device), 1),
        "note": TINY_NOTE if backbone.name.endswith("tiny") else "",
    }
    with store.writer(name, force=True if resume else force) as folder:
        write_identity(folder, adapter=adapter, metadata=metadata, reference=reference, per_photo=per_photo,
                       crops=[r.crop for r in refs], photos=[str(p) for p in paths], settings=settings.to_dict(),
                       info=info)
        if run.log_path.is_file():
            shutil.copy2(run.log_path, folder / "log.jsonl")
        if any(run.samples.iterdir()):
            shutil.copytree(run.samples, folder / "samples")
    run.remove()
    info["path"] = str(store.path(name))
    return info


def _write_sample(backbone, settings: Settings, tuner, run, step: int) -> None:
    """A short clip and its first frame, with the adapter as it is now (fixed seed and prompt)."""
    import cv2

    from .engine.generate import generate_frames
    from .engine.sampling import adapted_steps
    from .video import write_mp4

    g = settings.generate
    prompt = tuner.prompts.prompts[0]
    frames = generate_frames(backbone, prompt, g, adapter_steps=adapted_steps(g.steps, settings.adapter.active_fraction))
    stem = run.samples / f"step_{step:07d}"
    write_mp4(frames.numpy(), stem.with_suffix(".mp4"), g.fps, metadata={"step": step, "prompt": prompt, "seed": g.seed})
    cv2.imwrite(str(stem.with_suffix(".png")), cv2.cvtColor(frames[0].numpy(), cv2.COLOR_RGB2BGR))


def _round(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def check_backbone_matches(info: dict, backbone_name: str, name: str) -> None:
    if info.get("backbone") != backbone_name:
        raise PVError(f"identity {name!r} was tuned on backbone {info.get('backbone')!r}, not {backbone_name!r}",
                      f"generate with that backbone (drop --profile), or re-tune {name} on {backbone_name}")


class IdentityRenderer:
    """An identity loaded once into its backbone; renders any number of clips (adapter on or off)."""

    def __init__(self, registry: Registry, store: Store, name: str, settings: Settings, device: str | None,
                 reporter: Reporter):
        from .engine.adapter import add_adapter, load_adapter_state_dict
        from .engine.prompts import identity_phrase

        self.name, self.settings, self.reporter = name, settings, reporter
        info = store.load_info(name)
        check_backbone_matches(info, settings.backbone.name, name)
        state, meta = read_adapter(store.path(name))
        self.backbone = build_backbone(registry, settings, device, reporter)
        for key in ("base_model", "motion_adapter"):
            if key in meta and self.backbone.describe().get(key) not in (None, meta[key]):
                reporter.warn(f"identity {name!r} was tuned with {key} {meta[key]!r}; generating with "
                              f"{self.backbone.describe().get(key)!r}")
        add_adapter(self.backbone, meta.get("targets", settings.adapter.targets), int(meta["rank"]), float(meta["alpha"]))
        load_adapter_state_dict(self.backbone.unet, state)
        self.fraction = float(meta.get("active_fraction", 1.0))
        self.phrase = identity_phrase(meta.get("token", "sks"), meta.get("class_word", "person"))

    def render(self, prompt: str, output: Path, adapter: bool = True) -> dict:
        from .engine.adapter import set_adapter_scale
        from .engine.generate import generate_frames
        from .engine.prompts import with_identity
        from .engine.sampling import adapted_steps
        from .video import write_mp4

        g = self.settings.generate
        scale = g.adapter_scale if adapter else 0.0
        set_adapter_scale(self.backbone.unet, scale)
        full_prompt = with_identity(prompt, self.phrase)
        with self.reporter.progress(f"generating {self.name}", g.steps) as advance:
            frames = generate_frames(self.backbone, full_prompt, g, adapter_steps=adapted_steps(g.steps, self.fraction),
                                     on_step=lambda i, _: advance())
        record = {
            "identity": self.name, "prompt": full_prompt, "negative_prompt": g.negative_prompt, "seed": g.seed,
            "steps": g.steps, "guidance_scale": g.guidance_scale, "frames": int(frames.shape[0]), "fps": g.fps,
            "height": g.height, "width": g.width, "adapter_scale": scale, "active_fraction": self.fraction,
            "backbone": self.backbone.name, "pv_version": __version__,
        }
        path = write_mp4(frames.numpy(), output, g.fps, metadata=record)
        return {"path": str(path), **record}


def generate(registry: Registry, store: Store, name: str, prompt: str, settings: Settings, output: Path, *,
             device: str | None = None, adapter: bool = True, reporter: Reporter | None = None) -> dict:
    return IdentityRenderer(registry, store, name, settings, device, reporter or Reporter()).render(
        prompt, output, adapter)


def default_output(name: str, prompt: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in prompt.lower()).strip("-")
    slug = "-".join(filter(None, slug.split("-")))[:40] or "clip"
    return Path(f"{name}_{slug}_s{seed}.mp4")
