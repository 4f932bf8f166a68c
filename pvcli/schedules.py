"""Denoising schedules and where the identity adapter acts in them: the noise level of a timestep on
one scale for every scheduler, and the gate (the steps at or below a noise level, or the last fraction
of the steps). Core: the engine samples with these, and the plugins' workflow writers place the gate
with them."""

from __future__ import annotations

import math

ALL_LEVELS = 1.0  # a gate at least every noise level: the adapter acts at every step


def is_flow_matching(scheduler) -> bool:
    """Whether the scheduler samples x_t = (1 - sigma) x0 + sigma noise with sigma = t / T (flow
    matching: FlowMatchEuler, UniPC with flow sigmas) rather than a variance-preserving schedule."""
    config = scheduler.config
    return (not hasattr(scheduler, "alphas_cumprod") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def noise_level(scheduler, t) -> float:
    """How much of the sample is noise at timestep t, on one scale for every scheduler: flow
    matching's sigma (x_t = (1 - sigma) x0 + sigma noise, 1 = pure noise); for a
    variance-preserving schedule (x_t = a x0 + s noise, a^2 + s^2 = 1) the same fraction,
    s / (a + s). It depends on the timestep alone: not on the number of steps, the flow shift
    or a video-to-video strength, which only choose the timesteps."""
    t = float(t)
    if is_flow_matching(scheduler):
        return t / float(scheduler.config.num_train_timesteps)
    alphas = scheduler.alphas_cumprod
    ab = float(alphas[min(max(int(round(t)), 0), len(alphas) - 1)])
    a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
    return s / (a + s)


def schedule_levels(scheduler, steps: int) -> list[float]:
    """The noise level of each timestep of a `steps`-step schedule (a fresh copy of `scheduler`)."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps, device="cpu")
    return [noise_level(probe, t) for t in probe.timesteps]


def gate_level(scheduler, steps: int, adapter_steps: int) -> float:
    """The noise level where the adapter turns on when it acts in the last `adapter_steps` of a
    `steps`-step schedule (the paper's rule, at tuning): the level of the first adapted step, or
    ALL_LEVELS when every step is adapted."""
    if adapter_steps >= steps:
        return ALL_LEVELS
    return schedule_levels(scheduler, steps)[steps - adapter_steps]


def steps_within_gate(levels: list[float], gate: float) -> int:
    """How many final steps of a schedule with these (falling) noise levels are at or below the
    gate: the steps the adapter acts in, whatever the schedule."""
    return sum(level <= gate + 1e-6 for level in levels)


def adapted_steps(steps: int, fraction: float) -> int:
    """How many final denoising steps the adapter is active in: ceil(steps * fraction), at least
    one. At 25 DDIM steps and the paper's last quarter that is 7 steps, the last of which (t=0)
    returns its input under the usual video-model DDIM settings, so the adapter changes the sample in 6
    of 25 steps (24%), the paper's quarter; the same count at tuning and at generation."""
    return max(1, min(steps, math.ceil(steps * fraction - 1e-9)))
