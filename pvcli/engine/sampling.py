"""One sampler for tuning and generation: the backbone's own scheduler, classifier-free
guidance, and a configurable tail of steps under gradient.

Tuning supervises what generation decodes: the scheduler's final sample. With the usual DDIM
settings of video backbones (linspace spacing, set_alpha_to_one=False) the last step (t=0)
returns its input unchanged whatever the denoiser predicts: such a *dead* final step is not run
(its output is its input) and the gradient tail counts only the steps that change the sample.
Schedulers that add noise (LCM) draw it from the sampler's generator, as diffusers' pipelines do.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..contracts import Backbone
from ..schedules import (  # noqa: F401 - the engine's names for them
    ALL_LEVELS,
    adapted_steps,
    gate_level,
    is_flow_matching,
    noise_level,
    schedule_levels,
    steps_within_gate,
)
from .adapter import adapter_disabled


@dataclass
class SampleResult:
    latents: torch.Tensor  # the scheduler's final sample (what generation, and so tuning, decodes)
    x0: torch.Tensor  # the last run step's predicted clean sample
    # the scheduler as the run left it (its step index and a multistep solver's history): what a
    # run continued with `start=` must step on to give the full trajectory (UniPC's history)
    scheduler: object = None


def initial_latents(backbone: Backbone, frames: int, height: int, width: int, generator: torch.Generator,
                    batch: int = 1) -> torch.Tensor:
    s = backbone.vae_scale_factor
    shape = (batch, backbone.latent_channels, backbone.latent_frames(frames), height // s, width // s)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(backbone.device)


def final_step_is_identity(scheduler, steps: int) -> bool:
    """Whether the scheduler's last step of a `steps`-step schedule returns its input whatever the
    denoiser predicts (DDIM with linspace spacing and set_alpha_to_one=False: t=0 maps onto itself).
    Probed numerically on a fresh copy, so it holds for any diffusers-style scheduler."""
    return _probe_dead_final(type(scheduler), repr(sorted(dict(scheduler.config).items())), steps, scheduler.config)


_DEAD: dict = {}


def _probe_dead_final(cls, key: str, steps: int, config) -> bool:
    if (cls, key, steps) in _DEAD:
        return _DEAD[(cls, key, steps)]
    probe = cls.from_config(config)
    probe.set_timesteps(steps, device="cpu")
    if len(probe.timesteps) < 2:
        return False
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(1, 4, 1, 4, 4, generator=g, dtype=torch.float64)
    outs = []
    for _ in range(2):
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
        if hasattr(probe, "set_begin_index"):
            probe._step_index = None
            probe.set_begin_index(len(probe.timesteps) - 1)
        try:
            t = probe.timesteps[-1]
            outs.append(probe.step(eps, t, scale_model_input(probe, x, t)).prev_sample)
        except Exception:  # a multistep scheduler that needs its history: not a dead step we know of
            outs = []
            break
    _DEAD[(cls, key, steps)] = dead = bool(outs) and all(
        torch.allclose(o.double(), x, rtol=0, atol=1e-6) for o in outs)
    return dead


def scale_model_input(scheduler, sample: torch.Tensor, t) -> torch.Tensor:
    """The scheduler's input scaling where it has one (Euler's sigma scaling); flow-matching
    schedulers feed the sample as is."""
    scale = getattr(scheduler, "scale_model_input", None)
    return scale(sample, t) if scale is not None else sample


def _step_kwargs(scheduler, generator: torch.Generator | None) -> dict:
    """What diffusers' pipelines pass to `scheduler.step` besides the sample: the generator, for
    schedulers that add noise (LCM), so tuning and generation draw the same noise."""
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": generator}
    return {}


def grad_window(steps: int, grad_steps: int, dead_final: bool) -> int:
    """Index of the first step under grad: the last `grad_steps` steps that change the sample."""
    return max(0, steps - int(dead_final) - grad_steps)


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
    generator: torch.Generator | None = None,
    scheduler=None,
    guidance_scale_2: float = 0.0,
    grad_end: int | None = None,
) -> SampleResult:
    """Denoise `latents` (pure noise) in `steps` steps. The last `grad_steps` steps that change
    the sample run under grad; the rest without. `uncond` is used when guidance_scale > 1 (for a
    backbone with `embedded_guidance` the scale goes to the denoiser instead, and `uncond` is unused). The
    identity adapter is active only in the last `adapter_steps` steps (None: all): late-step
    gating, motion forms early and appearance late. `generator` feeds schedulers that add noise.
    `guidance_scale_2` (0: unset) is a second expert's scale: each step guides with
    `backbone.guidance_at(t, guidance_scale, guidance_scale_2)`, the rule generation follows too.

    `stop=k` returns after the first k steps; `start=k` continues from such latents (the state
    after k steps, not noise) and from `scheduler`, the first half's `SampleResult.scheduler` (or
    a copy of it: the run steps it on). The two halves give exactly the full trajectory; without
    `scheduler` a fresh one starts at step k, exact only for schedulers that keep no history of
    earlier steps (DDIM, Euler, LCM; not a multistep solver such as UniPC). `grad_end=k` puts the
    gradient window on the `grad_steps` steps before step k instead of the schedule's last ones
    (with `stop=k`: the predicted clean sample `x0` of step k - 1 under gradient)."""
    if scheduler is None:
        scheduler = backbone.new_scheduler()
        scheduler.set_timesteps(steps, device=backbone.device)
        if start == 0:
            latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts at noise
        elif hasattr(scheduler, "set_begin_index"):  # Euler/LCM keep a step index
            scheduler.set_begin_index(start)
    embedded = getattr(backbone, "embedded_guidance", False)  # a guidance-distilled model: the scale is an input
    use_cfg = guidance_scale > 1.0 and uncond is not None and not embedded
    embeds = backbone.cat_conditioning([uncond, cond]) if use_cfg else cond
    extra = _step_kwargs(scheduler, generator)
    x0 = latents
    timesteps = scheduler.timesteps
    n = len(timesteps)
    dead = final_step_is_identity(scheduler, steps)
    if not grad_steps:
        first_grad = n
    else:
        first_grad = grad_window(n, grad_steps, dead) if grad_end is None else max(0, grad_end - grad_steps)
    first_adapted = 0 if adapter_steps is None else n - adapter_steps
    for i, t in enumerate(timesteps[start:stop], start=start):
        if dead and i == n - 1:  # returns its input: nothing to compute, nothing to learn
            if on_step is not None:
                on_step(i, latents)
            continue
        gate = adapter_disabled(backbone.adapted) if i < first_adapted else nullcontext()
        scale = backbone.guidance_at(t, guidance_scale, guidance_scale_2)
        with gate, torch.enable_grad() if i >= first_grad else torch.no_grad():
            model_in = torch.cat([latents] * 2) if use_cfg else latents
            model_in = scale_model_input(scheduler, model_in, t)
            noise = backbone.predict_noise(model_in, t, embeds, **({"guidance": scale} if embedded else {}))
            if use_cfg:
                n_uncond, n_cond = noise.chunk(2)
                noise = n_uncond + scale * (n_cond - n_uncond)
            out = scheduler.step(noise, t, latents, **extra)
            x0 = predicted_clean(out, scheduler, latents, noise, t)
            latents = out.prev_sample
        if on_step is not None:
            on_step(i, latents)
    return SampleResult(latents=latents, x0=x0, scheduler=scheduler)


def predicted_clean(out, scheduler, sample: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor:
    """A scheduler step's estimate of the clean sample: what the scheduler reports (DDIM's
    pred_original_sample, LCM's denoised), else computed from the model output at t: flow
    matching x0 = x_t - sigma v; variance-preserving epsilon or v prediction from alphas_cumprod."""
    for name in ("pred_original_sample", "denoised"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    if is_flow_matching(scheduler):  # the step's own sigma (UniPC rounds its timesteps to integers)
        index, sigmas = getattr(scheduler, "step_index", None), getattr(scheduler, "sigmas", None)
        sigma = float(sigmas[index - 1]) if index and sigmas is not None else noise_level(scheduler, t)
        return sample - sigma * model_output
    ab = scheduler.alphas_cumprod[min(max(int(round(float(t))), 0), len(scheduler.alphas_cumprod) - 1)]
    a, s = float(ab) ** 0.5, float(1 - ab) ** 0.5
    if scheduler.config.get("prediction_type") == "v_prediction":
        return a * sample - s * model_output
    return (sample - s * model_output) / a


def adapter_free_prefix(steps: int, adapter_steps: int, grad_steps: int, dead_final: bool = False) -> int:
    """How many first denoising steps run without the adapter and without grad: their result
    depends only on the prompt and the noise, never on the adapter's weights."""
    return max(0, min(steps - adapter_steps, grad_window(steps, grad_steps, dead_final)))


