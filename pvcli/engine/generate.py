"""Generation with a tuned identity: the same sampler as tuning, no grad, adapter scaled."""

from __future__ import annotations

import torch

from ..contracts import Backbone
from ..errors import PVError
from ..settings import GenerateSettings
from .sampling import initial_latents, sample


@torch.no_grad()
def generate_frames(backbone: Backbone, prompt: str, g: GenerateSettings, adapter_steps: int | None = None,
                    on_step=None) -> torch.Tensor:
    """Frames (F, H, W, 3) uint8 for one prompt with the settings' seed; the adapter (if any) acts
    in the last `adapter_steps` denoising steps only."""
    if g.frames > backbone.max_frames:
        raise PVError(f"--frames {g.frames} exceeds this backbone's limit of {backbone.max_frames} frames")
    cond = backbone.encode_prompt([prompt])
    uncond = backbone.encode_prompt([g.negative_prompt]) if g.guidance_scale > 1 else None
    latents = initial_latents(backbone, g.frames, g.height, g.width, torch.Generator("cpu").manual_seed(g.seed))
    result = sample(backbone, cond, uncond, latents, g.steps, g.guidance_scale, on_step=on_step,
                    adapter_steps=adapter_steps)
    frames = backbone.decode(result.latents)[0]
    return (frames.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).cpu()
