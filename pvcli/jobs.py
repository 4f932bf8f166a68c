"""The jobs behind the commands: resolve settings, build plugins through the registry, run
the engine, write results. Front-end free: they report through a `Reporter`."""

from __future__ import annotations

import datetime as _dt
import math
import time
from pathlib import Path

from . import __version__
from .errors import PVError
from .identity import read_adapter, read_settings, write_identity
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


def tune(registry: Registry, store: Store, photos: list[str], name: str, settings: Settings, profile: str, *,
         force: bool = False, face_index: int = 0, prompts_file: str | None = None, device: str | None = None,
         eval_held_out: bool = True, reporter: Reporter | None = None) -> dict:
    import torch

    from .engine.adapter import adapter_state_dict
    from .engine.identity import embed_crops, expand_photos, mean_embedding, reference_faces
    from .engine.prompts import load_prompt_file
    from .engine.tune import Tuner

    reporter = reporter or Reporter()
    validate_name(name)
    store.check_free(name, force)  # fail before minutes of work, and again before replacing
    paths = expand_photos(photos)
    prompts = load_prompt_file(prompts_file) if prompts_file else None
    torch.manual_seed(settings.tune.seed)
    backbone = build_backbone(registry, settings, device, reporter)
    encoder = build_encoder(registry, settings, str(backbone.device), reporter)
    refs = reference_faces(encoder, paths, face_index, warn=reporter.warn)
    per_photo = embed_crops(encoder, [r.crop for r in refs])
    reference = mean_embedding(per_photo)

    tuner = Tuner(backbone, encoder, settings, reference, prompts=prompts)
    before = tuner.held_out_similarity(HELD_OUT_SEEDS) if eval_held_out else None
    history = []
    start = time.perf_counter()
    with reporter.progress(f"tuning {name}", settings.tune.steps) as advance:
        for _ in range(settings.tune.steps):
            stats = tuner.step()
            history.append(stats)
            advance(loss=stats.loss, id_sim=stats.id_sim)
    seconds = time.perf_counter() - start
    after = tuner.held_out_similarity(HELD_OUT_SEEDS) if eval_held_out else None
    sims = [s.id_sim for s in history if s.id_sim is not None]
    hits = sum(s.face_hits for s in history)
    frames = sum(s.frames for s in history)

    adapter = adapter_state_dict(backbone.unet)
    described = {**backbone.describe(), **encoder.describe()}
    a = settings.adapter
    metadata = {
        **described, "targets": a.targets, "rank": str(a.rank), "alpha": str(a.alpha),
        "steps": str(settings.tune.steps), "seed": str(settings.tune.seed), "token": settings.tune.token,
        "class_word": settings.tune.class_word,
        "lora_adapter_metadata": {"r": a.rank, "lora_alpha": a.alpha, "target_modules": backbone.adapter_targets(a.targets),
                                  "init_lora_weights": "gaussian"},
    }
    info = {
        "name": name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pv_version": __version__, "profile": profile, **described,
        "photos": [str(p) for p in paths], "adapter_layers": len(tuner.layers),
        "adapter_parameters": sum(v.numel() for v in adapter.values()),
        "steps": settings.tune.steps, "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, settings.tune.steps), 3),
        "id_sim_first": _round(sims[0]) if sims else None, "id_sim_last": _round(sims[-1]) if sims else None,
        "held_out_id_sim_before": _round(before), "held_out_id_sim_after": _round(after),
        "face_hit_rate": round(hits / frames, 3) if frames else None,
        "note": TINY_NOTE if backbone.name.endswith("tiny") else "",
    }
    with store.writer(name, force) as folder:
        write_identity(folder, adapter=adapter, metadata=metadata, reference=reference, per_photo=per_photo,
                       crops=[r.crop for r in refs], photos=[str(p) for p in paths], settings=settings.to_dict(),
                       info=info)
    info["path"] = str(store.path(name))
    return info


def _round(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def identity_settings(store: Store, name: str) -> tuple[dict, Settings]:
    info = store.load_info(name)
    return info, from_dict(read_settings(store.path(name)))


def check_backbone_matches(info: dict, backbone_name: str, name: str) -> None:
    if info.get("backbone") != backbone_name:
        raise PVError(f"identity {name!r} was tuned on backbone {info.get('backbone')!r}, not {backbone_name!r}",
                      f"generate with that backbone (drop --profile), or re-tune {name} on {backbone_name}")


def generate(registry: Registry, store: Store, name: str, prompt: str, settings: Settings, output: Path, *,
             device: str | None = None, adapter: bool = True, reporter: Reporter | None = None) -> dict:
    from .engine.adapter import add_adapter, load_adapter_state_dict, set_adapter_scale
    from .engine.generate import generate_frames
    from .engine.prompts import identity_phrase, with_identity
    from .video import write_mp4

    reporter = reporter or Reporter()
    info = store.load_info(name)
    check_backbone_matches(info, settings.backbone.name, name)
    state, meta = read_adapter(store.path(name))
    backbone = build_backbone(registry, settings, device, reporter)
    for key in ("base_model", "motion_adapter"):
        if key in meta and backbone.describe().get(key) not in (None, meta[key]):
            reporter.warn(f"identity {name!r} was tuned with {key} {meta[key]!r}; generating with "
                          f"{backbone.describe().get(key)!r}")
    add_adapter(backbone, meta.get("targets", settings.adapter.targets), int(meta["rank"]), float(meta["alpha"]))
    load_adapter_state_dict(backbone.unet, state)
    g = settings.generate
    set_adapter_scale(backbone.unet, g.adapter_scale if adapter else 0.0)
    full_prompt = with_identity(prompt, identity_phrase(meta.get("token", "sks"), meta.get("class_word", "person")))
    with reporter.progress(f"generating {name}", g.steps) as advance:
        frames = generate_frames(backbone, full_prompt, g, on_step=lambda i, _: advance())
    record = {
        "identity": name, "prompt": full_prompt, "negative_prompt": g.negative_prompt, "seed": g.seed,
        "steps": g.steps, "guidance_scale": g.guidance_scale, "frames": int(frames.shape[0]), "fps": g.fps,
        "height": g.height, "width": g.width, "adapter_scale": g.adapter_scale if adapter else 0.0,
        "backbone": backbone.name, "pv_version": __version__,
    }
    path = write_mp4(frames.numpy(), output, g.fps, metadata=record)
    return {"path": str(path), **record}


def default_output(name: str, prompt: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in prompt.lower()).strip("-")
    slug = "-".join(filter(None, slug.split("-")))[:40] or "clip"
    return Path(f"{name}_{slug}_s{seed}.mp4")
