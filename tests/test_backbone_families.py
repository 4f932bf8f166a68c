"""Second backbone family and few-step samplers: each tunes and generates through the CLI on CPU,
its diffusers pipeline draws what pv's sampler draws, and the adapter lands only on spatial layers."""

import json

import pytest
import torch
from conftest import NO_HELD_OUT, copy_home, run, use_home

from pvcli.contracts import GenerationPlan
from pvcli.engine.adapter import add_adapter
from pvcli.engine.sampling import initial_latents, sample


@pytest.fixture
def tiny_sdxl():
    from pv_animatediff_sdxl.backbone import make_tiny_sdxl

    return make_tiny_sdxl()


def test_sdxl_conditioning_has_pooled_embeddings_and_the_empty_prompt_is_zero(tiny_sdxl):
    cond = tiny_sdxl.encode_prompt(["sks person surfing", ""])
    assert cond["embeds"].shape == (2, 77, 64)  # both encoders' hidden states, concatenated
    assert cond["pooled"].shape == (2, 32)  # the second encoder's projection
    assert cond["embeds"][0].abs().sum() > 0 and cond["embeds"][1].abs().sum() == 0  # SDXL's empty prompt
    batched = tiny_sdxl.cat_conditioning([cond, cond])
    assert batched["embeds"].shape[0] == 4 and batched["pooled"].shape[0] == 4
    # the text conditioning reaches the UNet (zeroed embeddings change the output; the time ids: below)
    lat = torch.randn(1, 4, 2, 8, 8)
    a = tiny_sdxl.predict_noise(lat, 500, {k: v[:1] for k, v in cond.items()})
    b = tiny_sdxl.predict_noise(torch.randn(1, 4, 2, 8, 8) * 0 + lat, 500, {k: v[:1] * 0 for k, v in cond.items()})
    assert a.shape == lat.shape and not torch.allclose(a, b)


def test_sdxl_time_ids_reach_the_unet(tiny_sdxl, monkeypatch):
    """The size conditioning (original size, crop corner, target size) changes the prediction for
    the same latents and prompt."""
    cond = tiny_sdxl.encode_prompt(["sks person surfing"])
    lat = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert tiny_sdxl.time_ids(64, 64, 1).tolist() == [[64, 64, 0, 0, 64, 64]]  # the clip's size, no crop
    own = tiny_sdxl.predict_noise(lat, 500, cond)
    time_ids = tiny_sdxl.time_ids
    monkeypatch.setattr(tiny_sdxl, "time_ids", lambda h, w, b: time_ids(2 * h, 2 * w, b))  # another size
    assert not torch.allclose(tiny_sdxl.predict_noise(lat, 500, cond), own)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sdxl_pipeline_draws_what_pvs_sampler_draws(tiny_sdxl, guidance):
    lat = initial_latents(tiny_sdxl, 4, 64, 64, torch.Generator().manual_seed(0))
    uncond = tiny_sdxl.encode_prompt([""]) if guidance > 1 else None
    ours = sample(tiny_sdxl, tiny_sdxl.encode_prompt(["sks person"]), uncond, lat, 3, guidance).latents
    theirs = tiny_sdxl.pipeline_call(GenerationPlan(frames=4, height=64, width=64), prompt="sks person",
                                     negative_prompt="", num_inference_steps=3, guidance_scale=guidance,
                                     generator=torch.Generator().manual_seed(0))
    assert (ours - theirs).abs().max() < 1e-5


def test_sdxl_adapter_lands_only_on_spatial_attention(tiny_sdxl):
    names = add_adapter(tiny_sdxl, "attention", 4, 4)
    # 2 transformer layers in each attention of the second level (2 down + 3 up) and the mid block,
    # 8 projections (q, k, v, out of attn1 and attn2) each; none in the first level (SDXL has none there)
    assert len(names) == (2 + 3 + 1) * 2 * 8 == 96
    assert not [n for n in names if "motion_modules" in n]
    assert all(".attentions." in n and ".attn" in n for n in names)
    assert {n.rsplit(".attn", 1)[1] for n in names} == {f"{a}.{p}" for a in "12" for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_sdxl_profile_tunes_and_generates_through_the_cli_and_keeps_frozen_parts(astronaut, pv_home, tmp_path):
    from pv_animatediff_sdxl.backbone import make_tiny_sdxl

    r = run("tune", astronaut, "--name", "xl", "--profile", "tiny-sdxl", *NO_HELD_OUT, "--steps", "2", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout)
    info = json.loads((pv_home / "identities" / "xl" / "identity.json").read_text())
    assert info["backbone"] == "animatediff-sdxl-tiny" and info["adapter_layers"] == 156  # the `spatial` set
    assert record["name"] == "xl"
    out = tmp_path / "xl.mp4"
    r = run("generate", "xl", "surfing at sunset", "-o", out, "--frames", "4")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out) and out.stat().st_size > 0
    # the export carries SDXL's family names for kohya readers
    r = run("export", "xl", "--format", "kohya", "-o", tmp_path / "xl.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "xl.safetensors"), "pt") as fh:
        assert fh.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    # the adapter holds spatial UNet layers only: nothing of the motion modules or either text encoder
    from safetensors.torch import load_file

    keys = list(load_file(str(pv_home / "identities" / "xl" / "adapter.safetensors")))
    assert keys and all(".lora_" in k for k in keys)
    assert not [k for k in keys if "motion_modules" in k or "text_encoder" in k]
    assert "text_encoder_2" in make_tiny_sdxl().protected_modules()


def test_sdxl_backbone_says_what_it_cannot_do(astronaut, tmp_path):
    assert run("tune", astronaut, "--name", "xl", "--profile", "tiny-sdxl", *NO_HELD_OUT, "--steps", "1", "--quiet").exit_code == 0
    r = run("generate", "xl", "surfing", "--control", "canny=" + str(astronaut), "-o", tmp_path / "a.mp4")
    assert r.exit_code == 1 and "ControlNet" in r.stderr and "Traceback" not in r.stderr
    r = run("generate", "xl", "surfing", "--control", "canny=" + str(astronaut), "--control-model", "canny=tiny",
            "-o", tmp_path / "a.mp4")
    assert r.exit_code == 1 and "has no ControlNet pipeline" in r.stderr and "Traceback" not in r.stderr
    r = run("generate", "xl", "surfing", "--frames", "40", "-o", tmp_path / "b.mp4")
    assert r.exit_code == 1 and "exceeds this backbone's limit of 32 frames" in r.stderr  # no FreeNoise for SDXL


@pytest.mark.parametrize("scheduler", ["lcm", "euler-trailing"])
def test_few_step_samplers_pass_gradient_to_the_adapter_and_match_their_pipeline(scheduler, encoder, reference):
    from pv_animatediff.backbone import make_tiny

    bb = make_tiny({"scheduler": scheduler})
    lat = initial_latents(bb, 4, 64, 64, torch.Generator().manual_seed(0))
    ours = sample(bb, bb.encode_prompt(["sks person"]), None, lat, 4, 1.0).latents
    theirs = bb.pipeline_call(GenerationPlan(frames=4, height=64, width=64), prompt="sks person", negative_prompt="",
                              num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    if scheduler == "euler-trailing":  # deterministic sampler: the same clip
        assert (ours - theirs).abs().max() < 1e-4
    add_adapter(bb, "spatial", 4, 4)
    x0 = sample(bb, bb.encode_prompt(["sks person"]), None, lat, 4, 1.0, grad_steps=1).x0
    loss = bb.decode(x0).mean()
    loss.backward()
    grads = [p.grad for p in bb.unet.parameters() if p.requires_grad]
    assert grads and sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_few_step_profile_tunes_and_generates_through_the_cli(astronaut, pv_home, tmp_path):
    r = run("tune", astronaut, "--name", "fast", "--profile", "tiny-lightning", *NO_HELD_OUT, "--steps", "2", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    info = json.loads((pv_home / "identities" / "fast" / "identity.json").read_text())
    assert info["scheduler"] == "euler-trailing"
    out = tmp_path / "fast.gif"
    r = run("generate", "fast", "surfing", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out) and out.is_file() and out.stat().st_size > 0


def test_no_profile_means_the_default_profile_and_an_empty_backbone_is_an_error(tmp_path):
    from pvcli.errors import PVError
    from pvcli.settings import default_profile, resolve

    assert default_profile() == "animatediff"
    mine = tmp_path / "mine.yaml"  # a profile file that names no backbone extends the default
    mine.write_text("tune:\n  steps: 7\n")
    _, s = resolve(str(mine))
    assert s.backbone.name == "animatediff" and s.tune.steps == 7
    mine.write_text("extends: tiny-sdxl\ntune:\n  steps: 7\n")
    _, s = resolve(str(mine))
    assert s.backbone.name == "animatediff-sdxl-tiny" and s.tune.steps == 7 and s.tune.height == 64
    mine.write_text(f"extends: {mine}\n")
    with pytest.raises(PVError, match="extends itself"):
        resolve(str(mine))
    with pytest.raises(PVError, match="no backbone is set"):
        resolve("tiny", [{"backbone": {"name": ""}}])


def test_an_add_on_the_backbone_cannot_take_is_refused_before_it_loads(tuned_alice, monkeypatch, tmp_path, astronaut):
    """The backbone registers what it takes (`accepts`): --video or --control on one without them
    is one line before minutes of model loading (here an identity recorded on the SDXL backbone)."""
    home = use_home(monkeypatch, copy_home(tuned_alice, tmp_path / "home"))
    record = home / "identities" / "alice" / "identity.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "backbone": "animatediff-sdxl-tiny"}))
    for flag, value, says in (("--video", astronaut, "--video is not available on the animatediff-sdxl-tiny backbone"),
                              ("--control", f"canny={astronaut}", "has no ControlNet pipeline")):
        r = run("generate", "alice", "surfing", flag, value, "-o", tmp_path / "a.mp4")
        assert r.exit_code == 1 and says in r.stderr, r.stderr
        assert "loading backbone" not in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "a.mp4").exists()
