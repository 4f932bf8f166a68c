"""Rendering clips of a tuned identity: the identity's adapter loaded once into its backbone,
then any number of prompts, seeds and settings."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..context import Context
from ..errors import PVError
from ..identity_files import adapter_metadata, read_adapter, read_settings
from ..settings import BackboneSettings, GenerateSettings, Settings, check_seed, from_dict
from .resources import build_backbone, out_of_memory_hint


@dataclass
class AddOn:
    """One generation-time add-on: a registered conditioner and its options (e.g.
    AddOn("controlnet", {"type": "canny", "source": "clip.mp4"}), AddOn("lora", {"source": ..., "weight": 0.8}))."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass
class Video:
    """A rendered clip: frames (F, H, W, 3) uint8 RGB, its record (prompt, seed, settings...),
    and the file it was written to, if any."""

    frames: np.ndarray
    record: dict = field(default_factory=dict)
    path: Path | None = None


def identity_settings(ctx: Context, name: str, profile: str | None = None, overlays: list[dict] | None = None
                      ) -> Settings:
    """The settings an identity renders with: its own saved settings (or a profile), then overlays."""
    from ..settings import resolve

    if profile:
        return resolve(profile, overlays)[1]
    return from_dict(read_settings(ctx.store.folder(name)), overlays)


def check_backbone_matches(info: dict, backbone_name: str, name: str) -> None:
    if info.get("backbone") != backbone_name:
        raise PVError(f"identity {name!r} was tuned on backbone {info.get('backbone')!r}, not {backbone_name!r}",
                      f"generate with that backbone (drop --profile), or re-tune {name} on {backbone_name}")


class IdentityRenderer:
    """An identity loaded once into its backbone; renders any number of clips (adapter on or off)."""

    def __init__(self, ctx: Context, name: str, settings: Settings):
        from ..engine.adapter import add_adapter, load_adapter_state_dict, saved_layers
        from ..engine.prompts import identity_phrase

        self.ctx, self.name, self.settings = ctx, name, settings
        info = ctx.store.load_info(name)
        check_backbone_matches(info, settings.backbone.name, name)
        state, meta = read_adapter(ctx.store.folder(name))
        self.backbone = build_backbone(ctx, settings)
        for key, value in self.backbone.describe().items():  # the backbone's own ids: base model, ...
            if key in meta and meta[key] != value:
                ctx.reporter.warn(f"identity {name!r} was tuned with {key} {meta[key]!r}; generating with {value!r}")
        add_adapter(self.backbone, meta.get("targets", settings.adapter.targets), int(meta["rank"]), float(meta["alpha"]),
                    layers=saved_layers(state))  # the layers it was tuned on
        load_adapter_state_dict(self.backbone.adapted, state)
        self.fraction = float(meta.get("active_fraction", 1.0))
        # the noise level the adapter turns on at (recorded at tuning); identities from before
        # it gate by step index as they always did: the last active_fraction of the steps
        self.gate = float(meta["gate_noise_level"]) if meta.get("gate_noise_level") else None
        self.phrase = identity_phrase(meta.get("token", "sks"), meta.get("class_word", "person"))

    def plan(self, g: GenerateSettings, addons: list[AddOn], video: str | Path | None = None):
        """What one clip asks of the pipeline: its size, the driving clip for video-to-video, the
        long-clip windows, and each add-on's contribution (conditioners built through the registry)."""
        import torch

        from ..contracts import GenerationPlan
        from ..video import read_source, resample

        plan = GenerationPlan(g.frames, g.height, g.width, context_length=g.context_length,
                              context_stride=g.context_stride, strength=g.strength)
        if video is not None:
            frames = resample(read_source(video, "--video"), g.frames, g.height, g.width)
            plan.video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
            plan.record["video"] = {"source": str(video), "strength": g.strength}
        for addon in addons:
            options = {**g.conditioners.get(addon.name, {}), **addon.options}
            conditioner = self.ctx.registry.create("conditioners", addon.name, options=options,
                                                   device=str(self.backbone.device))
            self.ctx.reporter.status(f"adding {addon.name}")
            conditioner.apply(self.backbone, plan)
        for line in plan.warnings:
            self.ctx.reporter.warn(line)
        return plan

    def render(self, prompt: str, output: Path | None = None, adapter: bool = True,
               generate: GenerateSettings | None = None, addons: list[AddOn] | None = None,
               video: str | Path | None = None, advance=None) -> Video:
        """One clip; written to `output` (.mp4, .gif, .webp or a frames folder) when given.
        `generate` overrides the renderer's generate settings for this clip; `addons` are
        conditioners (ControlNet, style LoRA, ...); `video` restyles a driving clip
        (video-to-video, `generate.strength`). `advance` (one call per denoising step) replaces
        the clip's own progress bar, for batches that show one bar."""
        from ..engine.generate import check_frames, denoising_steps, plan_strength
        from ..video import write_video

        g = generate or self.settings.generate
        check_frames(self.backbone, g.frames)  # before the add-ons do any work
        plan = self.plan(g, addons or [], video)
        steps = denoising_steps(g.steps, plan_strength(plan))
        full_prompt = self.full_prompt(prompt)
        bar = nullcontext(advance) if advance else self.ctx.reporter.progress(f"generating {self.name}", steps)
        with bar as step:
            frames, extra = self.frames(full_prompt, g, plan, adapter, lambda i, _: step())
        record = {
            "identity": self.name, "prompt": full_prompt, "negative_prompt": g.negative_prompt, "seed": g.seed,
            "steps": g.steps, "guidance_scale": g.guidance_scale,
            **({"guidance_scale_2": g.guidance_scale_2} if g.guidance_scale_2 else {}),
            "frames": int(frames.shape[0]), "fps": g.fps,
            "height": g.height, "width": g.width, **extra, "backbone": self.backbone.name, "pv_version": __version__,
            **plan.record,
        }
        video = Video(frames.numpy(), record)
        if output is not None:
            video.path = write_video(video.frames, output, g.fps, metadata=record)
        return video

    def full_prompt(self, prompt: str) -> str:
        from ..engine.prompts import with_identity

        return with_identity(prompt, self.phrase)

    def frames(self, prompt: str, g: GenerateSettings, plan, adapter: bool, on_step):
        """(frames, what the clip's record adds) of one clip with the identity's adapter (or without)."""
        from ..engine.generate import denoising_steps, gated_steps, generate_frames, plan_strength
        from ..engine.sampling import adapted_steps

        scale = g.adapter_scale if adapter else 0.0
        steps = denoising_steps(g.steps, plan_strength(plan))
        if self.gate is not None:  # the steps at or below the identity's noise level, whatever the schedule
            gating, adapted = {"gate": self.gate}, gated_steps(self.backbone, g.steps, steps, self.gate)
        else:
            gating = {"adapter_steps": adapted_steps(g.steps, self.fraction)}
            adapted = min(gating["adapter_steps"], steps)
        frames = generate_frames(self.backbone, prompt, g, on_step=on_step, plan=plan, adapter_scale=scale, **gating)
        return frames, {"adapter_scale": scale, "active_fraction": self.fraction, "gate_noise_level": self.gate,
                        "adapted_steps": adapted}


DEFAULT_OUTPUT = "{name}_{slug}_s{seed}.mp4"


def default_output(name: str, prompt: str, seed: int) -> Path:
    return output_path(DEFAULT_OUTPUT, name, prompt, seed, 0)


@dataclass
class ClipRequest:
    """One clip of a batch: its prompt, and optionally its own seed, negative prompt and output."""

    prompt: str
    seed: int | None = None
    negative: str | None = None
    output: str | None = None


def parse_prompt_lines(lines, where: str = "stdin"):
    """Prompts one per line, or JSON lines {"prompt", "seed", "negative", "output"}; blank lines and
    `#` comments skipped. Lazy: a line is parsed when the batch reaches it (streams)."""
    import json

    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            yield ClipRequest(line)
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PVError(f"{where} line {number} is not valid JSON: {exc.msg}") from None
        unknown = set(data) - {"prompt", "seed", "negative", "output"}
        if not isinstance(data.get("prompt"), str) or not data["prompt"].strip() or unknown:
            raise PVError(f"{where} line {number}: a JSON line needs a \"prompt\" and may have seed, negative, "
                          f"output{f' (unknown: {sorted(unknown)[0]})' if unknown else ''}")
        seed = data.get("seed")
        if seed is not None:
            check_seed(seed, f"{where} line {number}: seed")
        yield ClipRequest(data["prompt"], seed, data.get("negative"), data.get("output"))


def slug(prompt: str) -> str:
    text = "".join(c if c.isalnum() else "-" for c in prompt.replace("{id}", "").lower()).strip("-")
    return "-".join(filter(None, text.split("-")))[:40] or "clip"


def output_path(template: str | Path, name: str, prompt: str, seed: int, index: int) -> Path:
    """-o as a template: {name}, {slug} (of the prompt), {seed}, {index} (0-based position in the batch)."""
    try:
        return Path(str(template).format(name=name, slug=slug(prompt), seed=seed, index=index))
    except (KeyError, IndexError, ValueError) as exc:
        raise PVError(f"bad -o template {str(template)!r}: {exc}",
                      "use {name}, {slug}, {seed} and {index}, e.g. -o 'clips/{slug}_s{seed}.gif'") from None


def check_inputs(ctx: Context, name: str, g: GenerateSettings, addons: list[AddOn], video=None,
                 backbone: BackboneSettings | None = None) -> None:
    """What can be known wrong before any model loads: the driving clip is readable, each add-on
    is registered, takes its options, and finds its files usable for the identity's backbone
    (`Conditioner.check`, given what the identity recorded of it), and the model the identity was
    tuned on takes what is asked of it (its family's `accepts`, then its registered `refuse`,
    given `backbone`, the backbone settings the clips render with: its name must be the identity's)."""
    from ..video import probe_source

    if video is not None:
        probe_source(video, "--video")
    info = ctx.store.load_info(name)
    adapter_metadata(ctx.store.path(name))  # a damaged adapter fails here, not once the model is loaded
    accepts = None
    entry = ctx.registry.get("backbones", info["backbone"]) if info.get("backbone") else None
    if entry is not None:
        ctx.registry.check_frames(info["backbone"], g.frames, "--frames")
        options = (dict(backbone.options) if backbone is not None
                   else (read_settings(ctx.store.path(name)).get("backbone") or {}).get("options") or {})
        ctx.registry.check_size(info["backbone"], options, g.height, g.width, ("--height", "--width"))
        accepts = entry.accepts
    if video is not None and accepts is not None and "video" not in accepts:
        raise PVError(f"--video is not available on the {info['backbone']} backbone: it has no video-to-video pipeline",
                      "generate from text, or use a profile whose backbone restyles clips (pv profiles)")
    if entry is not None and entry.refuse is not None:
        asked = [(a.name, {**g.conditioners.get(a.name, {}), **a.options}) for a in addons]
        entry.refuse(info, dict(backbone.options if backbone is not None else {}), asked + ([("video", {"source": str(video)})] if video is not None
                                                                   else []))
    if not addons:
        _check_backbone(info, backbone, name)
        return
    target = {k: str(info[k]) for k in ("backbone", "base_model", "base_model_version", "architecture") if info.get(k)}
    if accepts is not None:
        target["accepts"] = accepts  # what the backbone takes, for the add-on to refuse what it cannot
    for addon in addons:
        options = {**g.conditioners.get(addon.name, {}), **addon.options}
        conditioner = ctx.registry.create("conditioners", addon.name, options=options, device=ctx.device)
        check = getattr(conditioner, "check", None)
        if check is not None:
            check(target)
    _check_backbone(info, backbone, name)


def _check_backbone(info: dict, backbone: BackboneSettings | None, name: str) -> None:
    """The clips render on the backbone the identity was tuned on (after what the add-ons say of it)."""
    if backbone is not None and backbone.name and info.get("backbone"):
        check_backbone_matches(info, backbone.name, name)


def _memory_hint(ctx: Context, settings, clip: GenerateSettings) -> str:
    """plan.memory_hint for the clip that ran out of memory (the settings it rendered with)."""
    import dataclasses

    from .plan import memory_hint

    return memory_hint(ctx, dataclasses.replace(settings, generate=clip), "generate", ctx.device) \
        if settings is not None else ""


def render_batch(ctx: Context, name: str, renderer, g: GenerateSettings, requests, *, output=None,
                 seeds: list[int] | None = None, adapter: bool = True, addons: list[AddOn] | None = None,
                 video=None, one_bar: bool = True, check_name: str | None = None,
                 backbone: BackboneSettings | None = None, settings=None):
    """Render every request (a prompt or ClipRequest, read lazily) once per seed (default the
    settings' seed; a request's own seed renders once), yielding each Video as soon as it is
    written. `renderer()` gives the loaded IdentityRenderer; `output` is a file template ({name},
    {slug}, {seed}, {index}; None: no files unless a request names one). `one_bar`: one progress
    bar for the batch instead of one per clip. `check_name`: the identity whose record the inputs are
    checked against, when `name` names a group of them. `backbone`: the backbone settings the clips
    render with (a mismatch with the identity's, or what the model cannot take, is refused before it
    loads). `settings`: all of them (an out-of-memory error's hint plans the clip with them)."""
    import dataclasses

    from ..engine.generate import denoising_steps
    from ..video import check_video_path

    if output is not None and one_bar:
        check_video_path(output_path(output, name, "prompt", 0, 0))  # before minutes of work
    # a bad file or add-on fails before any model loads
    check_inputs(ctx, check_name or name, g, addons or [], video, backbone)
    seed_list = seeds if seeds is not None else [g.seed]
    if not seed_list:
        raise PVError("no seeds to render")
    for seed in seed_list:
        check_seed(seed)
    total = len(requests) * len(seed_list) if hasattr(requests, "__len__") else None
    per_clip = denoising_steps(g.steps, g.strength if video is not None else None)
    bar = ctx.reporter.progress(f"generating {name}", None if total is None else total * per_clip) if one_bar \
        else nullcontext()
    index, loaded = 0, {}
    with bar as advance:
        for item in requests:
            req = ClipRequest(item) if isinstance(item, str) else item
            for seed in [req.seed] if req.seed is not None else seed_list:
                clip = dataclasses.replace(g, seed=seed, **({"negative_prompt": req.negative}
                                                            if req.negative is not None else {}))
                target = req.output or (output_path(output, name, req.prompt, seed, index) if output is not None
                                        else None)
                if target is not None:
                    check_video_path(Path(target))
                # the hint names the traced plan's switch, then what lowers memory on the renderer's model, once it loaded
                with out_of_memory_hint("generate", ctx.device, lambda clip=clip: _memory_hint(ctx, settings, clip),
                                        lambda: getattr(loaded.get("r"), "backbone", None), clip):
                    loaded["r"] = renderer()
                    video_out = loaded["r"].render(req.prompt, Path(target) if target is not None else None,
                                                   adapter=adapter, generate=clip, addons=addons, video=video,
                                                   advance=advance)
                yield video_out
                index += 1
