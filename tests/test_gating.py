"""Late-step gating on the transformers as the real Wan profiles run it: UniPC with flow sigmas
(the Wan repos' multistep sampler), the adapter in the last quarter of the steps and one step
under grad, on tiny-wan. The gate is a noise level recorded in the identity: generation adapts
the same noise levels whatever its steps or flow shift; the trajectory pool resumes UniPC's
history; a step's clean estimate is the clean sample."""

import json

import pytest
import torch
from conftest import random_adapter, randomize_lora_b, run, tune_home, use_home

from pvcli.engine.adapter import adapter_disabled, set_adapter_scale
from pvcli.engine.generate import render_latents
from pvcli.engine.sampling import (
    adapted_steps,
    gate_level,
    initial_latents,
    noise_level,
    sample,
    schedule_levels,
    steps_within_gate,
)
from pvcli.engine.tune import Tuner
from pvcli.settings import parse_set, resolve

# the real Wan profiles' sampler and gating, on tiny-wan's 8 sampling steps
REAL_GATING = ["backbone.options.scheduler=unipc", "adapter.active_fraction=0.25", "tune.grad_steps=1",
               "tune.num_inference_steps=8", "generate.steps=8"]


def _settings(*items):
    return resolve("tiny-wan", [parse_set([*REAL_GATING, *items])])[1]


def _wan(**options):
    from pv_wan.backbone import make_tiny_wan

    return make_tiny_wan({"scheduler": "unipc", **options})


def test_the_trajectory_pool_on_unipc_tunes_on_the_clip_generation_renders(encoder, reference):
    """A pooled clip resumes after the adapter-free steps with UniPC's history of them: the latents
    the loss decodes are the full trajectory's from the pair's noise (a fresh scheduler at the
    resume step lost 36% of the adapter's effect on this model)."""
    settings = _settings("tune.trajectory_pool=1", "tune.scr_weight=0")
    tuner = Tuner(_wan(), encoder, settings, reference)
    randomize_lora_b(tuner.bb.denoiser)  # an adapter that changes the clip
    assert tuner.pool.start == 6  # 8 steps, the last 2 adapted: 6 adapter-free steps kept
    prompt, seed = tuner.pool.pairs[0]
    noise = initial_latents(tuner.bb, 9, 64, 64, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = tuner._final(prompt, noise, grad=False)
        base = tuner._final(prompt, noise, grad=False, adapter=False)
    decoded = []
    real = tuner.bb.decode_frames
    tuner.bb.decode_frames = lambda latents, idx: decoded.append(latents.detach().clone()) or real(latents, idx)
    tuner.step()
    effect = (full - base).norm()
    assert effect > 1.0
    assert (decoded[0] - full).norm() / effect < 1e-5


def test_wanpipeline_on_unipc_is_pvs_sampler_with_the_real_gating():
    """diffusers' WanPipeline with UniPC and pv's step-callback gate gives pv's sampler's latents at
    the profiles' gating (last quarter), and the steps before the gate are the base model's."""
    wan = _wan()
    random_adapter(wan)
    g = _settings().generate
    g = type(g)(**{**g.__dict__, "seed": 3, "guidance_scale": 5.0, "negative_prompt": "blurry"})
    prompt, adapted = "sks person, surfing at sunset", adapted_steps(8, 0.25)
    gate = gate_level(wan.scheduler, 8, adapted)
    ours = render_latents(wan, prompt, g, gate=gate)
    set_adapter_scale(wan.denoiser, 1.0)
    seen, base_seen = [], []
    with torch.no_grad():
        lat = initial_latents(wan, g.frames, g.height, g.width, torch.Generator().manual_seed(3))
        cond, uncond = wan.encode_prompt([prompt]), wan.encode_prompt([g.negative_prompt])
        mine = sample(wan, cond, uncond, lat, 8, 5.0, adapter_steps=adapted, on_step=lambda i, x: seen.append(x.clone()))
        with adapter_disabled(wan.denoiser):
            sample(wan, cond, uncond, lat, 8, 5.0, on_step=lambda i, x: base_seen.append(x.clone()))
    assert (ours - mine.latents).abs().max() < 1e-4
    assert all(torch.equal(seen[i], base_seen[i]) for i in range(8 - adapted))
    assert (seen[-1] - base_seen[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("steps,shift", [(10, 3.0), (12, 1.5)])
def test_generation_adapts_the_tuned_noise_levels_whatever_the_steps_and_shift(steps, shift):
    """The gate picked on the tuning schedule (8 steps, shift 3, the last quarter) is a noise level;
    generating with more steps or another flow shift adapts exactly the steps at or below it, which
    is not the last quarter of those steps."""
    gate = gate_level(_wan().scheduler, 8, adapted_steps(8, 0.25))
    wan = _wan(shift=shift)
    random_adapter(wan)
    levels = schedule_levels(wan.scheduler, steps)
    k = steps_within_gate(levels, gate)
    assert k != adapted_steps(steps, 0.25)  # the step-index rule would move the gate
    assert all(level > gate for level in levels[:steps - k]) and all(level <= gate for level in levels[steps - k:])
    g = _settings().generate
    g = type(g)(**{**g.__dict__, "seed": 5, "steps": steps})
    prompt = "sks person, surfing"
    ours = render_latents(wan, prompt, g, gate=gate)
    set_adapter_scale(wan.denoiser, 1.0)
    with torch.no_grad():
        lat = initial_latents(wan, g.frames, g.height, g.width, torch.Generator().manual_seed(5))
        mine = sample(wan, wan.encode_prompt([prompt]), None, lat, steps, 1.0, adapter_steps=k).latents
        index_rule = sample(wan, wan.encode_prompt([prompt]), None, lat, steps, 1.0,
                            adapter_steps=adapted_steps(steps, 0.25)).latents
    assert (ours - mine).abs().max() < 1e-4
    assert (ours - index_rule).abs().max() > 1e-3


def test_a_steps_clean_estimate_is_the_clean_sample_on_flow_schedulers():
    """SampleResult.x0 after a step at sigma is x_t - sigma * v (the clean sample flow matching
    predicts), not the next noisy latent, on flow-matching Euler and UniPC alike."""
    for options in ({"scheduler": "euler"}, {}):
        wan = _wan(**options)
        cond = wan.encode_prompt(["sks person"])
        lat = initial_latents(wan, 9, 64, 64, torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = sample(wan, cond, None, lat, 4, 1.0, stop=1)
            scheduler = wan.new_scheduler()
            scheduler.set_timesteps(4)
            t = scheduler.timesteps[0]
            expected = lat - noise_level(scheduler, t) * wan.predict_noise(lat, t, cond)
        assert (out.x0 - expected).abs().max() < 2e-3 * expected.abs().max(), options
        assert (out.x0 - out.latents).abs().max() > 0.1  # not the next noisy latent


@pytest.fixture(scope="module")
def gated_home(tmp_path_factory, astronaut):
    """A PV_HOME with `g`, tuned one step on tiny-wan with the real Wan gating and sampler."""
    home = tmp_path_factory.mktemp("gated_home")
    sets = [x for item in REAL_GATING for x in ("--set", item)]
    return home, tune_home(home, astronaut, "g", "tiny-wan", "--steps", "1", "--set", "tune.held_out=0", *sets)


def test_the_identity_records_its_gate_and_generation_reports_the_steps_it_adapts(gated_home, monkeypatch,
                                                                                 tmp_path):
    from safetensors.torch import load_file, save_file

    home, info = gated_home
    use_home(monkeypatch, home)
    levels = schedule_levels(_wan().scheduler, 8)
    assert info["gate_noise_level"] == round(levels[6], 4)  # the first of the last 2 of 8 steps
    r = run("generate", "g", "surfing", "--steps", "10", "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    gate = rec["gate_noise_level"]
    assert gate == pytest.approx(levels[6]) and rec["adapted_steps"] == steps_within_gate(
        schedule_levels(_wan().scheduler, 10), gate) == 2  # the index rule says 3 of 10
    # an identity from before the recorded level gates by step index, as it always did
    old = tmp_path / "old"
    import shutil

    shutil.copytree(home, old)
    adapter = old / "identities" / "g" / "adapter.safetensors"
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != "gate_noise_level"}
    save_file(load_file(str(adapter)), str(adapter), metadata=meta)
    use_home(monkeypatch, old)
    r = run("generate", "g", "surfing", "--steps", "10", "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["gate_noise_level"] is None and rec["adapted_steps"] == adapted_steps(10, 0.25) == 3
