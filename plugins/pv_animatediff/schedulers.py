"""The samplers AnimateDiff-family checkpoints are made for, by name (backbone.options.scheduler):

- ddim: AnimateDiff's own (linear betas 0.00085-0.012, no clipping, linspace spacing), 20-30 steps;
- lcm: AnimateLCM's consistency sampler (same betas), 4-8 steps, guidance 1-2;
- euler-trailing: AnimateDiff-Lightning's (Euler, trailing timestep spacing), 1-8 steps, guidance 1.
"""

from __future__ import annotations

from pvcli.errors import PVError

_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")


def ddim(config: dict | None):
    from diffusers import DDIMScheduler

    return _build(DDIMScheduler, config, clip_sample=False, set_alpha_to_one=False, timestep_spacing="linspace",
                  steps_offset=1)


def lcm(config: dict | None):
    from diffusers import LCMScheduler

    return _build(LCMScheduler, config)


def euler_trailing(config: dict | None):
    from diffusers import EulerDiscreteScheduler

    return _build(EulerDiscreteScheduler, config, timestep_spacing="trailing")


SCHEDULERS = {"ddim": ddim, "lcm": lcm, "euler-trailing": euler_trailing}


def _build(cls, config: dict | None, **overrides):
    settings = {**_BETAS, **overrides}
    if config:  # the checkpoint's own scheduler config (num_train_timesteps, ...) under the family's betas
        return cls.from_config(config, **settings)
    return cls(**settings)


def make_scheduler(name: str, config: dict | None = None):
    if name not in SCHEDULERS:
        raise PVError(f"backbone.options.scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    return SCHEDULERS[name](config)
