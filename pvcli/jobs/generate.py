"""Rendering clips of a tuned identity: the identity's adapter loaded once into its backbone,
then any number of prompts, seeds and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..context import Context
from ..errors import PVError
from ..identity import read_adapter, read_settings
from ..settings import GenerateSettings, Settings, from_dict
from .common import build_backbone


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
    return from_dict(read_settings(ctx.store.path(name)), overlays)


def check_backbone_matches(info: dict, backbone_name: str, name: str) -> None:
    if info.get("backbone") != backbone_name:
        raise PVError(f"identity {name!r} was tuned on backbone {info.get('backbone')!r}, not {backbone_name!r}",
                      f"generate with that backbone (drop --profile), or re-tune {name} on {backbone_name}")


class IdentityRenderer:
    """An identity loaded once into its backbone; renders any number of clips (adapter on or off)."""

    def __init__(self, ctx: Context, name: str, settings: Settings):
        from ..engine.adapter import add_adapter, load_adapter_state_dict
        from ..engine.prompts import identity_phrase

        self.ctx, self.name, self.settings = ctx, name, settings
        info = ctx.store.load_info(name)
        check_backbone_matches(info, settings.backbone.name, name)
        state, meta = read_adapter(ctx.store.path(name))
        self.backbone = build_backbone(ctx, settings)
        for key in ("base_model", "motion_adapter"):
            if key in meta and self.backbone.describe().get(key) not in (None, meta[key]):
                ctx.reporter.warn(f"identity {name!r} was tuned with {key} {meta[key]!r}; generating with "
                                  f"{self.backbone.describe().get(key)!r}")
        add_adapter(self.backbone, meta.get("targets", settings.adapter.targets), int(meta["rank"]), float(meta["alpha"]))
        load_adapter_state_dict(self.backbone.unet, state)
        self.fraction = float(meta.get("active_fraction", 1.0))
        self.phrase = identity_phrase(meta.get("token", "sks"), meta.get("class_word", "person"))

    def plan(self, g: GenerateSettings, addons: list[AddOn]):
        """The add-ons' contributions for one clip (each conditioner built through the registry)."""
        from ..contracts import GenerationPlan

        plan = GenerationPlan(g.frames, g.height, g.width)
        for addon in addons:
            options = {**g.conditioners.get(addon.name, {}), **addon.options}
            conditioner = self.ctx.registry.create("conditioners", addon.name, options=options,
                                                   device=str(self.backbone.device))
            self.ctx.reporter.status(f"adding {addon.name}")
            conditioner.apply(self.backbone, plan)
        return plan

    def render(self, prompt: str, output: Path | None = None, adapter: bool = True,
               generate: GenerateSettings | None = None, addons: list[AddOn] | None = None) -> Video:
        """One clip; written to `output` (mp4) when given. `generate` overrides the renderer's
        generate settings for this clip; `addons` are conditioners (ControlNet, style LoRA, ...)."""
        from ..engine.generate import check_frames, generate_frames
        from ..engine.prompts import with_identity
        from ..engine.sampling import adapted_steps
        from ..video import write_mp4

        g = generate or self.settings.generate
        check_frames(self.backbone, g.frames)  # before the add-ons do any work
        scale = g.adapter_scale if adapter else 0.0
        plan = self.plan(g, addons or [])
        full_prompt = with_identity(prompt, self.phrase)
        with self.ctx.reporter.progress(f"generating {self.name}", g.steps) as advance:
            frames = generate_frames(self.backbone, full_prompt, g, adapter_steps=adapted_steps(g.steps, self.fraction),
                                     on_step=lambda i, _: advance(), plan=plan, adapter_scale=scale)
        record = {
            "identity": self.name, "prompt": full_prompt, "negative_prompt": g.negative_prompt, "seed": g.seed,
            "steps": g.steps, "guidance_scale": g.guidance_scale, "frames": int(frames.shape[0]), "fps": g.fps,
            "height": g.height, "width": g.width, "adapter_scale": scale, "active_fraction": self.fraction,
            "backbone": self.backbone.name, "pv_version": __version__, **plan.record,
        }
        video = Video(frames.numpy(), record)
        if output is not None:
            video.path = write_mp4(video.frames, output, g.fps, metadata=record)
        return video


def default_output(name: str, prompt: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in prompt.lower()).strip("-")
    slug = "-".join(filter(None, slug.split("-")))[:40] or "clip"
    return Path(f"{name}_{slug}_s{seed}.mp4")
