"""Generation with a tuned identity on the backbone family's own diffusers pipeline: the
identity adapter (and any LoRA add-ons) active at their weights, late-step gating through
the pipeline's step callback, conditioners' controls in the plan. Tuning keeps pv's own
sampler (engine/sampling.py): it needs the gradient tail; a test pins that both give the same
frames."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..contracts import Backbone, GenerationPlan
from ..errors import PVError
from ..settings import GenerateSettings
from .adapter import ADAPTER_NAME, activate_adapters, set_adapter_scale


def gate_switch(steps: int, adapter_steps: int | None) -> int | None:
    """The step after which the identity adapter switches on, to act in the last `adapter_steps` of
    `steps` (None: it acts in every step)."""
    return None if adapter_steps is None or adapter_steps >= steps else steps - adapter_steps - 1


def gate_callback(backbone: Backbone, steps: int, adapter_steps: int | None, scale: float, on_step=None):
    """(initial identity scale, diffusers step callback): the identity adapter is off until the last
    `adapter_steps` steps. The callback runs after step i, so it switches the adapter on after
    step `gate_switch(steps, adapter_steps)`."""
    switch = gate_switch(steps, adapter_steps)

    def callback(pipe, i, t, kwargs):
        if i == switch:
            set_adapter_scale(backbone.adapted, scale)
        if on_step is not None:
            on_step(i, kwargs.get("latents"))
        return kwargs

    return (scale if switch is None else 0.0), callback


def check_frames(backbone: Backbone, frames: int) -> None:
    if frames > backbone.max_frames and not getattr(backbone, "long_videos", False):
        raise PVError(f"--frames {frames} exceeds this backbone's limit of {backbone.max_frames} frames")
    backbone.check_frames(frames)


def denoising_steps(steps: int, strength: float | None = None) -> int:
    """The steps a pipeline actually runs: video-to-video (a `strength`) redraws only the last part."""
    if strength is None:
        return steps
    run = min(int(steps * strength), steps)
    if run < 1:
        raise PVError(f"--strength {strength} with {steps} steps runs no denoising step", "raise --strength or --steps")
    return run


def plan_strength(plan: GenerationPlan | None) -> float | None:
    return plan.strength if plan is not None and plan.video is not None else None


def gated_steps(backbone: Backbone, steps: int, run: int, gate: float) -> int:
    """How many of the `run` steps a pipeline runs (the tail of a `steps`-step schedule: all of it,
    or video-to-video's last part) are at or below the noise level `gate`: the adapter's steps."""
    from .sampling import schedule_levels, steps_within_gate

    return steps_within_gate(schedule_levels(backbone.scheduler, steps)[steps - run:], gate)


@torch.no_grad()
def render_latents(backbone: Backbone, prompt: str, g: GenerateSettings, adapter_steps: int | None = None,
                   on_step=None, plan: GenerationPlan | None = None, adapter_scale: float = 1.0,
                   gate: float | None = None, regions=None) -> torch.Tensor:
    """The final latents (B, C, F, h, w) of one clip with the settings' seed. The identity adapter
    (if the backbone has one) acts at `adapter_scale` in the steps whose noise level is at most
    `gate` (sampling.noise_level: the same steps whatever the number of steps, the flow shift or a
    video-to-video strength), or, given `adapter_steps` instead, in the last `adapter_steps` steps
    of the full `g.steps` schedule: video-to-video runs only the schedule's tail (`strength`), and
    the adapter acts in the part of that tail inside its window. `plan` carries the add-ons'
    controls and LoRA weights. `regions` (a pvcli.engine.regions mixer, built for `plan.loras`) puts
    several identities each in its own region instead; each gates itself."""
    check_frames(backbone, g.frames)
    plan = plan or GenerationPlan(g.frames, g.height, g.width)
    if g.guidance_scale_2:  # the second expert's scale (one denoiser refuses it in one line)
        backbone.guidance_at(0, g.guidance_scale, g.guidance_scale_2)
        plan.guidance_scale_2 = g.guidance_scale_2
    run = denoising_steps(g.steps, plan_strength(plan))
    if gate is not None:
        in_run = gated_steps(backbone, g.steps, run, gate)
    else:
        in_run = None if adapter_steps is None else min(adapter_steps, run)
    initial, callback = gate_callback(backbone, run, in_run, adapter_scale, on_step)
    if regions is None:
        activate_adapters(backbone.lora_modules(), {ADAPTER_NAME: initial, **plan.loras})
        mixing = nullcontext()
    else:
        mixing, gated = regions, callback

        def callback(pipe, i, t, kwargs):  # noqa: F811 - the regions' own step count, then the gate's
            regions.step = i + 1
            return gated(pipe, i, t, kwargs)
    try:
        with mixing:
            return backbone.pipeline_call(plan, prompt=prompt, negative_prompt=g.negative_prompt,
                                          num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
                                          generator=torch.Generator("cpu").manual_seed(g.seed),
                                          callback_on_step_end=callback)
    finally:
        set_adapter_scale(backbone.adapted, adapter_scale)


def generate_frames(backbone: Backbone, prompt: str, g: GenerateSettings, adapter_steps: int | None = None,
                    on_step=None, plan: GenerationPlan | None = None, adapter_scale: float = 1.0,
                    gate: float | None = None, regions=None) -> torch.Tensor:
    """Frames (F, H, W, 3) uint8 of one clip (see `render_latents`)."""
    latents = render_latents(backbone, prompt, g, adapter_steps, on_step, plan, adapter_scale, gate, regions)
    with torch.no_grad():
        frames = backbone.decode(latents)[0]
    return (frames.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).cpu()
