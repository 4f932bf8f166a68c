"""One sampler for tuning and generation: the backbone's own scheduler, classifier-free
guidance, and a configurable tail of steps under gradient.

With the usual DDIM settings of video backbones (linspace spacing, set_alpha_to_one=False) the
last step returns its input unchanged, so no gradient would flow from the final latents:
tuning supervises the last step's predicted clean sample (x0) instead. Schedulers name it
`pred_original_sample` (DDIM, Euler) or `denoised` (LCM).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..contracts import Backbone
from .adapter import adapter_disabled


@dataclass
class SampleResult:
    latents: torch.Tensor  # the scheduler's final sample (what generation decodes)
    x0: torch.Tensor  # the last step's predicted clean sample (what tuning decodes)


def initial_latents(backbone: Backbone, frames: int, height: int, width: int, generator: torch.Generator,
                    batch: int = 1) -> torch.Tensor:
    s = backbone.vae_scale_factor
    shape = (batch, backbone.latent_channels, frames, height // s, width // s)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(backbone.device)


def sample(
    backbone: Backbone,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    latents: torch.Tensor,
    steps: int,
    guidance_scale: float,
    grad_steps: int = 0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    adapter_steps: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> SampleResult:
    """Denoise `latents` (pure noise) in `steps` steps. The last `grad_steps` run under grad;
    the rest without. `uncond` is used when guidance_scale > 1. The identity adapter is active
    only in the last `adapter_steps` steps (None: all): late-step gating, motion forms early and
    appearance late.

    `stop=k` returns after the first k steps; `start=k` continues from such latents (the state
    after k steps, not noise). The two halves give exactly the full trajectory."""
    scheduler = backbone.new_scheduler()
    scheduler.set_timesteps(steps, device=backbone.device)
    if start == 0:
        latents = latents * scheduler.init_noise_sigma
    elif hasattr(scheduler, "set_begin_index"):  # Euler/LCM keep a step index
        scheduler.set_begin_index(start)
    use_cfg = guidance_scale > 1.0 and uncond is not None
    embeds = backbone.cat_conditioning([uncond, cond]) if use_cfg else cond
    x0 = latents
    timesteps = scheduler.timesteps
    first_adapted = 0 if adapter_steps is None else len(timesteps) - adapter_steps
    for i, t in enumerate(timesteps[start:stop], start=start):
        gate = adapter_disabled(backbone.unet) if i < first_adapted else nullcontext()
        with gate, torch.enable_grad() if i >= len(timesteps) - grad_steps else torch.no_grad():
            model_in = torch.cat([latents] * 2) if use_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            noise = backbone.predict_noise(model_in, t, embeds)
            if use_cfg:
                n_uncond, n_cond = noise.chunk(2)
                noise = n_uncond + guidance_scale * (n_cond - n_uncond)
            out = scheduler.step(noise, t, latents)
            latents = out.prev_sample
            x0 = predicted_clean(out, latents)
        if on_step is not None:
            on_step(i, latents)
    return SampleResult(latents=latents, x0=x0)


def predicted_clean(out, latents: torch.Tensor) -> torch.Tensor:
    """A scheduler step's estimate of the clean sample, whatever the scheduler calls it."""
    for name in ("pred_original_sample", "denoised"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return latents


def adapter_free_prefix(steps: int, adapter_steps: int, grad_steps: int) -> int:
    """How many first denoising steps run without the adapter and without grad: their result
    depends only on the prompt and the noise, never on the adapter's weights."""
    return max(0, min(steps - adapter_steps, steps - grad_steps))


def adapted_steps(steps: int, fraction: float) -> int:
    """How many final denoising steps the adapter is active in (at least one)."""
    return max(1, min(steps, math.ceil(steps * fraction - 1e-9)))
