"""The Wan family (a diffusion transformer with flow matching and a VAE that compresses time) as
a plugin: the whole method runs on the tiny Wan built in-process, through the same engine and
CLI as AnimateDiff. What is Wan-specific is checked here: frame-mixing attention stays frozen,
pv's sampler is WanPipeline's, late-step gating, the causal decoder, 4k+1 frames, exports, and
`--control` through Wan VACE (a VACE transformer assembled around the tiny transformer)."""

import json
import re

import pytest
import torch
from conftest import HARD_TUNE, fixed_clip_similarities, random_adapter, run, tune_home, use_home

from pvcli.engine.adapter import ADAPTER_NAME, adapter_disabled, adapter_state_dict, set_adapter_scale
from pvcli.engine.generate import render_latents
from pvcli.engine.sampling import adapted_steps, initial_latents, sample
from pvcli.engine.tune import Tuner
from pvcli.settings import resolve


@pytest.fixture
def wan():
    from pv_wan.backbone import make_tiny_wan

    return make_tiny_wan()


@pytest.fixture(scope="module")
def wan_settings():
    return resolve("tiny-wan")[1]


@pytest.fixture(scope="module")
def wan_home(tmp_path_factory, astronaut):
    """A PV_HOME holding `w`, tuned once per module on tiny-wan (conftest's HARD_TUNE), and the record
    `pv tune --json` printed. Tests only read it; they write under their tmp_path."""
    home = tmp_path_factory.mktemp("wan_home")
    # tune.memory=64: pv plans the step from its trace before loading (it fits: no switch is set)
    return home, tune_home(home, astronaut, "w", "tiny-wan", *HARD_TUNE, "--set", "tune.memory=64")


@pytest.fixture
def pv_home(wan_home, monkeypatch):
    """This module's tests run on the shared `w` identity's home."""
    return use_home(monkeypatch, wan_home[0])


def test_tiny_wan_tunes_and_generates_through_the_cli(wan_home, astronaut, pv_home, tmp_path):
    info = wan_home[1]
    assert info["backbone"] == "wan-tiny" and info["steps"] == 2 and info["adapter_layers"] == 12  # 2 blocks x 6
    plan = info["memory_plan"]  # tune.memory's plan, recorded in the identity
    assert plan["gpu_memory_gib"] == 64 and plan["source"] == "tune.memory" and plan["changes"] == {}
    assert 0 < plan["peak_gib"] < 1
    out = tmp_path / "w.mp4"
    r = run("generate", "w", "surfing at sunset", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    from pvcli.video import read_frames

    assert read_frames(out).shape == (9, 64, 64, 3)
    r = run("generate", "w", "surfing", "--frames", "16", "-o", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "4k+1 frames" in r.stderr and "use 13 or 17" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.mp4").exists()
    assert "loading backbone" not in r.stderr  # refused before minutes of model loading
    r = run("tune", astronaut, "--name", "v", "--profile", "tiny-wan", "--set", "tune.frames=8")
    assert r.exit_code == 1 and "tune.frames 8: Wan renders 4k+1 frames" in r.stderr and "use 5 or 9" in r.stderr
    assert "loading backbone" not in r.stderr and not (pv_home / "runs" / "v").exists()


def test_video_to_video_on_wan_restyles_a_clip_with_the_identity(astronaut, pv_home, tmp_path):
    import cv2
    import numpy as np

    from pvcli.images import load_image
    from pvcli.video import read_frames, write_mp4

    img = cv2.resize(load_image(astronaut), (96, 96))
    drive = tmp_path / "drive.mp4"
    write_mp4(np.stack([np.roll(img, 3 * k, axis=1) for k in range(12)]), drive, 8)
    clips = {}
    for name, extra in (("v2v", ("--video", drive, "--strength", "0.75")), ("t2v", ()),
                        ("base", ("--video", drive, "--strength", "0.75", "--no-adapter"))):
        out = tmp_path / f"{name}.mp4"
        r = run("generate", "w", "as an astronaut", *extra, "-o", out, "--json")
        assert r.exit_code == 0, r.stderr
        clips[name] = read_frames(out).astype(int)
        if name == "v2v":
            rec = json.loads(r.stdout)
            assert rec["video"] == {"source": str(drive), "strength": 0.75} and rec["frames"] == 9
    assert clips["v2v"].shape == (9, 64, 64, 3)  # the clip resampled to the profile's 4k+1 frames
    assert np.abs(clips["v2v"] - clips["t2v"]).max() > 10  # the driving clip shapes the result
    assert not np.array_equal(clips["v2v"], clips["base"])  # the identity acts


def test_tuning_adapts_only_frame_wise_layers_and_leaves_the_rest_bit_identical(wan, encoder, reference, wan_settings):
    frozen = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in wan.protected_modules().items()}
    assert any(n.endswith(".attn1") for n in frozen) and {"text_encoder", "vae"} <= set(frozen)
    tuner = Tuner(wan, encoder, wan_settings, reference)
    assert tuner.layers and all(".attn1." not in n for n in tuner.layers)
    assert {n.split(".")[2] for n in tuner.layers} == {"attn2", "ffn"}  # cross-attention and feed-forward
    before = adapter_state_dict(wan.denoiser)
    held = [p for group in tuner.optimizer.param_groups for p in group["params"]]  # the adapter, nothing else
    assert {id(p) for p in held} == {id(p) for n, p in wan.denoiser.named_parameters() if ADAPTER_NAME in n}
    stats = tuner.step()
    assert stats.loss is not None
    after = adapter_state_dict(wan.denoiser)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the adapter learned
    for name, module in wan.protected_modules().items():
        now = module.state_dict()
        assert all(torch.equal(now[k], frozen[name][k]) for k in now), name
    base = {n: p for n, p in wan.denoiser.named_parameters() if ADAPTER_NAME not in n}
    assert not any(p.requires_grad for p in base.values())


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_pv_sampler_is_wanpipeline_and_gating_leaves_early_steps_base(wan, wan_settings, guidance):
    """diffusers' WanPipeline (with pv's step-callback gating) gives pv's own sampler's latents,
    and gating keeps the first steps the base model's, bit for bit."""
    random_adapter(wan)
    g = wan_settings.generate
    g = type(g)(**{**g.__dict__, "seed": 3, "guidance_scale": guidance, "negative_prompt": "blurry"})
    prompt, steps, adapted = "sks person, surfing at sunset", g.steps, adapted_steps(g.steps, 0.5)
    ours = render_latents(wan, prompt, g, adapter_steps=adapted)
    set_adapter_scale(wan.denoiser, 1.0)
    seen, base_seen = [], []
    with torch.no_grad():
        lat = initial_latents(wan, g.frames, g.height, g.width, torch.Generator().manual_seed(3))
        uncond = wan.encode_prompt([g.negative_prompt])
        mine = sample(wan, wan.encode_prompt([prompt]), uncond, lat, steps, guidance, adapter_steps=adapted,
                      on_step=lambda i, x: seen.append(x.clone())).latents
        with adapter_disabled(wan.denoiser):
            sample(wan, wan.encode_prompt([prompt]), uncond, lat, steps, guidance,
                   on_step=lambda i, x: base_seen.append(x.clone()))
    assert ours.shape == (1, 16, 3, 8, 8)  # 9 frames -> 3 latent frames; 64 px -> 8
    assert (ours - mine).abs().max() < 1e-4
    for i in range(steps - adapted):
        assert torch.equal(seen[i], base_seen[i]), i
    assert (seen[-1] - base_seen[-1]).abs().max() > 1e-3


def test_two_experts_the_adapter_lives_on_the_low_noise_expert(encoder, reference, wan_settings):
    """Wan 2.2 A14B's layout on the tiny model: a high-noise and a low-noise transformer. The adapter
    goes on the low-noise expert only; the high-noise one stays bit-identical through tuning, the
    high-noise steps are the base model's even with no gating, and pv's sampler is WanPipeline's."""
    from pv_wan.backbone import make_tiny_wan

    wan = make_tiny_wan({"experts": 2})
    assert wan.high_noise is not None and "high_noise" in wan.protected_modules()
    assert wan.describe()["expert"] == "low-noise (transformer_2)"
    frozen = {k: v.clone() for k, v in wan.high_noise.state_dict().items()}
    tuner = Tuner(wan, encoder, wan_settings, reference)
    assert tuner.step().loss is not None
    assert all(torch.equal(v, frozen[k]) for k, v in wan.high_noise.state_dict().items())
    assert not any(ADAPTER_NAME in n for n, _ in wan.high_noise.named_parameters())

    random_adapter(wan)
    g = wan_settings.generate
    g = type(g)(**{**g.__dict__, "seed": 3, "guidance_scale": 5.0, "negative_prompt": "blurry"})
    prompt = "sks person, surfing at sunset"
    ours = render_latents(wan, prompt, g)  # adapter on at every step (no gating)
    set_adapter_scale(wan.denoiser, 1.0)
    seen, base_seen = [], []
    with torch.no_grad():
        lat = initial_latents(wan, g.frames, g.height, g.width, torch.Generator().manual_seed(3))
        cond, uncond = wan.encode_prompt([prompt]), wan.encode_prompt([g.negative_prompt])
        mine = sample(wan, cond, uncond, lat, g.steps, g.guidance_scale, on_step=lambda i, x: seen.append(x.clone())).latents
        with adapter_disabled(wan.denoiser):
            sample(wan, cond, uncond, lat, g.steps, g.guidance_scale, on_step=lambda i, x: base_seen.append(x.clone()))
    assert (ours - mine).abs().max() < 1e-4
    scheduler = wan.new_scheduler()
    scheduler.set_timesteps(g.steps)
    high = sum(float(t) >= 875 for t in scheduler.timesteps)
    assert 0 < high < g.steps  # both experts take part
    for i in range(high):
        assert torch.equal(seen[i], base_seen[i]), i  # the high-noise expert has no adapter
    assert (seen[-1] - base_seen[-1]).abs().max() > 1e-3
    # what diffusers' Wan pipelines cannot do with two experts is one line, not a wrong clip
    from pvcli.contracts import GenerationPlan
    from pvcli.errors import PVError

    plan = GenerationPlan(g.frames, g.height, g.width)
    plan.video = torch.rand(g.frames, 3, g.height, g.width)
    with pytest.raises(PVError, match="--video is not available on Wan 2.2"):
        wan.pipeline_call(plan, prompt=prompt, negative_prompt="", num_inference_steps=2, guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(0))
    with pytest.raises(PVError, match="style LoRAs on Wan 2.2 A14B"):
        wan.load_lora("style.safetensors", "style")


def test_two_experts_guide_each_with_its_own_scale_in_tuning_and_generation(wan, wan_settings):
    """Wan 2.2's recipe guides A14B's high-noise expert at 4.0 and its low-noise one at 3.0
    (generate/tune.guidance_scale and guidance_scale_2): pv's sampler (tuning) guides the steps
    above the boundary with the first scale and those below it with the second, and WanPipeline
    (generation, guidance_scale_2) draws the same latents. One expert refuses a second scale."""
    from pv_wan.backbone import make_tiny_wan

    from pvcli.errors import PVError

    two = make_tiny_wan({"experts": 2})
    random_adapter(two)
    g = wan_settings.generate
    g = type(g)(**{**g.__dict__, "seed": 3, "guidance_scale": 4.0, "guidance_scale_2": 3.0, "negative_prompt": "blurry"})
    prompt = "sks person, surfing at sunset"
    ours = render_latents(two, prompt, g)
    with torch.no_grad():
        lat = initial_latents(two, g.frames, g.height, g.width, torch.Generator().manual_seed(3))
        cond, uncond = two.encode_prompt([prompt]), two.encode_prompt([g.negative_prompt])
        runs = {}
        for scales in ((4.0, 3.0), (4.0, 0.0)):
            seen = []
            runs[scales] = seen, sample(two, cond, uncond, lat, g.steps, scales[0], guidance_scale_2=scales[1],
                                        on_step=lambda i, x, seen=seen: seen.append(x.clone()))
        high = sum(float(t) >= 875 for t in runs[4.0, 0.0][1].scheduler.timesteps)
        assert 0 < high < g.steps
        # the low-noise steps from where the high-noise ones left off, at 3.0 throughout
        head = sample(two, cond, uncond, lat, g.steps, 4.0, stop=high)
        tail = sample(two, cond, uncond, head.latents, g.steps, 3.0, start=high, scheduler=head.scheduler)
    (split, mixed), (single, _) = runs[4.0, 3.0], runs[4.0, 0.0]
    assert (ours - mixed.latents).abs().max() < 1e-4  # generation guides as tuning does
    assert all(torch.equal(split[i], single[i]) for i in range(high))  # above the boundary: 4.0
    assert (split[high] - single[high]).abs().max() > 1e-4  # below it: not 4.0 ...
    assert (mixed.latents - tail.latents).abs().max() < 1e-6  # ... but 3.0
    g1 = type(g)(**{**g.__dict__, "guidance_scale_2": 3.0})
    with pytest.raises(PVError, match="guidance_scale_2 3: backbone 'wan-tiny' has one denoiser"):
        render_latents(wan, prompt, g1)


def test_both_experts_take_the_adapter_where_the_gate_opens_and_both_learn(encoder, reference):
    """backbone.options.adapter_experts=both (A14B): the high-noise expert gets its own adapter layers
    (with `low` it has none); tuning trains both when a step under gradient is the high-noise
    expert's (refused in one line when none is) and leaves every frozen weight bit-identical;
    generation (WanPipeline) uses both, each in its own steps inside the gate, as pv's sampler does."""
    from conftest import randomize_lora_b
    from pv_wan.backbone import make_tiny_wan

    from pvcli.engine.adapter import add_adapter
    from pvcli.errors import PVError
    from pvcli.settings import parse_set

    low = make_tiny_wan({"experts": 2})
    add_adapter(low, "attention", 4, 4)
    assert not any(ADAPTER_NAME in n for n, _ in low.high_noise.named_parameters())  # low: none on the high-noise expert

    both_set = ["backbone.options.experts=2", "backbone.options.adapter_experts=both"]
    # tiny-wan's 4 steps: the high-noise expert takes the first only, the last 2 are under gradient
    with pytest.raises(PVError, match=r"adapter on the high-noise \(transformer\) acts in steps 1-1 of 4 but none"
                                      r".*raise tune.grad_steps to 4"):
        Tuner(make_tiny_wan({"experts": 2, "adapter_experts": "both"}), encoder,
              resolve("tiny-wan", [parse_set(both_set)])[1], reference)
    settings = resolve("tiny-wan", [parse_set([*both_set, "tune.num_inference_steps=2", "tune.grad_steps=2"])])[1]
    wan = make_tiny_wan({"experts": 2, "adapter_experts": "both"})
    frozen = {f"{e}.{n}": p.detach().clone() for e in ("high_noise", "denoiser")
              for n, p in getattr(wan, e).named_parameters()}
    tuner = Tuner(wan, encoder, settings, reference)
    assert {n.split(".")[0] for n in tuner.layers} == {"transformer", "transformer_2"}
    high = {n: p.detach().clone() for n, p in wan.high_noise.named_parameters() if ADAPTER_NAME in n}
    assert high and tuner.step().loss is not None
    assert any(not torch.equal(p, high[n]) for n, p in wan.high_noise.named_parameters() if n in high)  # it learned
    for e in ("high_noise", "denoiser"):
        for n, p in getattr(wan, e).named_parameters():
            if ADAPTER_NAME not in n:
                assert torch.equal(p, frozen[f"{e}.{n.replace('.base_layer', '')}"]), (e, n)
    state = adapter_state_dict(wan.adapted)
    assert {k.split(".")[0] for k in state} == {"transformer", "transformer_2"}

    randomize_lora_b(wan.adapted)
    g = resolve("tiny-wan")[1].generate
    g = type(g)(**{**g.__dict__, "seed": 3, "steps": 4, "guidance_scale": 5.0, "negative_prompt": "blurry"})
    prompt = "sks person, surfing at sunset"
    with torch.no_grad():
        lat = initial_latents(wan, g.frames, g.height, g.width, torch.Generator().manual_seed(3))
        cond, uncond = wan.encode_prompt([prompt]), wan.encode_prompt([g.negative_prompt])
        runs = {}
        for adapted in (None, 3):  # the gate open at every step / only below the boundary (the last 3 of 4)
            seen = []
            sample(wan, cond, uncond, lat, g.steps, 5.0, adapter_steps=adapted, on_step=lambda i, x, seen=seen: seen.append(x))
            runs[adapted] = seen
        base = []
        with adapter_disabled(wan.adapted):
            sample(wan, cond, uncond, lat, g.steps, 5.0, on_step=lambda i, x: base.append(x))
    assert (runs[None][0] - base[0]).abs().max() > 1e-3  # the high-noise expert's adapter acts in its step
    assert torch.equal(runs[3][0], base[0])  # ... unless the gate opens below the boundary
    ours = render_latents(wan, prompt, g)
    assert (ours - runs[None][-1]).abs().max() < 1e-4  # generation uses both, as tuning does
    set_adapter_scale(wan.adapted, 1.0)
    assert (render_latents(wan, prompt, g, adapter_steps=3) - runs[3][-1]).abs().max() < 1e-4


def test_decoding_the_frames_a_loss_reads_matches_decoding_the_whole_clip(wan):
    lat = initial_latents(wan, 13, 64, 64, torch.Generator().manual_seed(1))  # 4 latent frames
    with torch.no_grad():
        whole = wan.decode(lat)
        some = wan.decode_frames(lat, [0, 3, 6])  # only latent frames 0..2 are decoded
    assert whole.shape == (1, 13, 3, 64, 64) and some.shape == (1, 3, 3, 64, 64)
    assert (some - whole[:, [0, 3, 6]]).abs().max() < 1e-5


def test_diffusers_and_comfy_exports_load_into_wanpipeline_and_render_pv_latents(pv_home, tmp_path):
    """Both files, read by diffusers' own `load_lora_weights` into a fresh WanPipeline (the comfy
    file through diffusers' own converter of native Wan keys), render pv's latents within 1e-4."""
    from diffusers import WanPipeline
    from pv_wan.backbone import build_tiny_components
    from safetensors import safe_open

    from pvcli.api import make_context
    from pvcli.engine.prompts import with_identity
    from pvcli.jobs.generate import IdentityRenderer, identity_settings

    for fmt in ("diffusers", "comfy"):
        r = run("export", "w", "--format", fmt, "-o", tmp_path / f"{fmt}.safetensors", "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["format"] == fmt
    with safe_open(str(tmp_path / "comfy.safetensors"), "pt") as fh:
        keys, header = list(fh.keys()), fh.metadata()
    assert "diffusion_model.blocks.0.cross_attn.q.lora_A.weight" in keys  # ComfyUI's native Wan names
    assert "diffusion_model.blocks.1.ffn.2.alpha" in keys and not any("attn1" in k or "self_attn" in k for k in keys)
    assert header["ss_network_alpha"] == "8.0" and header["pv.export_format"] == "comfy"

    ctx = make_context()
    renderer = IdentityRenderer(ctx, "w", identity_settings(ctx, "w"))
    g = renderer.settings.generate
    prompt = with_identity("surfing", renderer.phrase)
    ours = render_latents(renderer.backbone, prompt, g)
    c = build_tiny_components()
    for k in ("transformer", "vae", "text_encoder"):
        c[k].eval()  # as from_pretrained leaves them (UMT5 has dropout)
    pipe = WanPipeline(**{k: c[k] for k in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")})
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        return pipe(prompt=prompt, negative_prompt=g.negative_prompt, height=g.height, width=g.width,
                    num_frames=g.frames, num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
                    max_sequence_length=32, generator=torch.Generator().manual_seed(g.seed), output_type="latent").frames

    base = theirs()
    assert (ours - base).abs().max() > 1e-2  # the adapter changes the clip
    for fmt in ("diffusers", "comfy"):
        pipe.load_lora_weights(str(tmp_path), weight_name=f"{fmt}.safetensors", adapter_name=fmt)
        pipe.set_adapters([fmt])
        assert (theirs() - ours).abs().max() < 1e-4, fmt
        pipe.delete_adapters(fmt)
    r = run("export", "w", "--format", "kohya", "-o", tmp_path / "k.safetensors")
    assert r.exit_code == 1 and "--format kohya writes UNet LoRA keys" in r.stderr  # refused, not wrong
    assert "export it with --format diffusers or --format comfy" in r.stderr  # what this identity can be


@pytest.mark.parametrize("profile,params,placement", [
    ("wan2.1-1.3b", 1419.0, {"attention": (120, 5.90), "spatial": (180, 15.97)}),
    ("wan2.1-14b", 14288.5, {"attention": (160, 26.21), "spatial": (240, 50.46)}),  # and each Wan 2.2 A14B expert
    ("wan2.2-5b", 4999.8, {"attention": (120, 11.80), "spatial": (180, 28.51)}),
])
def test_real_size_adapter_placement_from_the_real_configs(profile, params, placement):
    """The real transformers, built without weights: parameter counts, and where a rank-16 adapter
    goes (layers, millions of parameters) for each target set; never on attn1."""
    import re

    from pv_wan.backbone import TARGETS
    from pv_wan.configs import real_size_transformer

    model = real_size_transformer(profile)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == params
    for targets, (count, millions) in placement.items():
        layers = {n: m for n, m in model.named_modules() if re.fullmatch(TARGETS[targets], n)}
        assert len(layers) == count and not any("attn1" in n for n in layers)
        assert round(sum(16 * (m.in_features + m.out_features) for m in layers.values()) / 1e6, 2) == millions


def test_a_fixed_clip_gets_closer_to_the_reference_every_step(wan, encoder, reference, wan_settings):
    """Same noise and prompt every step: the ID loss moves the Wan clip towards the reference
    (measured -0.061 -> -0.014 in 6 steps at lr 5e-3)."""
    sims = fixed_clip_similarities(wan, encoder, reference, wan_settings)
    assert sum(b > a for a, b in zip(sims[:-1], sims[1:], strict=True)) >= 4, sims
    assert sims[-1] - sims[0] > 0.02, sims


# --------------------------------------------------------------------------- --control through VACE


@pytest.fixture(scope="module")
def moves(tmp_path_factory, astronaut):
    """A 12-frame driving clip (the astronaut sliding sideways) for --control."""
    import cv2
    import numpy as np

    from pvcli.images import load_image
    from pvcli.video import write_mp4

    img = cv2.resize(load_image(astronaut), (96, 96))
    path = tmp_path_factory.mktemp("vace") / "moves.mp4"
    write_mp4(np.stack([np.roll(img, 4 * k, axis=1) for k in range(12)]), path, 8)
    return path


def test_control_on_wan_runs_through_vace_with_the_identity(moves, pv_home, tmp_path):
    """`--control canny=clip.mp4` on tiny-wan: a 4k+1-frame clip shaped by the maps; scale 0 is the
    T2V clip exactly (VACE adds hint x 0); the identity acts in the VACE transformer; inputs VACE
    cannot take are one line."""
    import numpy as np

    from pvcli.video import read_frames

    clips = {}
    for name, extra in (("vace", ("--control", f"canny={moves}")), ("t2v", ()),
                        ("zero", ("--control", f"canny={moves}", "--control-scale", "0")),
                        ("base", ("--control", f"canny={moves}", "--no-adapter"))):
        r = run("generate", "w", "dancing", *extra, "-o", tmp_path / name, "--json")  # PNG frames: lossless
        assert r.exit_code == 0, r.stderr
        clips[name] = read_frames(tmp_path / name).astype(int)
        if name == "vace":
            rec = json.loads(r.stdout)
            assert rec["controls"] == [{"type": "canny", "source": str(moves), "raw": False, "scale": 1.0, "start": 0.0,
                                        "end": 1.0}]
            assert rec["control_model"] == "tiny(seed=0)" and rec["frames"] == 9
    assert clips["vace"].shape == (9, 64, 64, 3)  # the 12-frame clip resampled to the profile's 4k+1
    assert np.abs(clips["vace"] - clips["t2v"]).max() > 20  # the control shapes the clip
    assert np.array_equal(clips["zero"], clips["t2v"])  # conditioning_scale 0: the T2V model's clip, exactly
    assert np.abs(clips["vace"] - clips["base"]).max() > 2  # the identity acts through VACE's shared blocks

    for extra, says in ((("--control", f"canny={moves}", "--control-raw", f"pose={moves}"),
                         "Wan VACE takes one control video, got 2 (canny, pose)"),
                        (("--control", f"canny={moves}", "--control-model", "canny=lllyasviel/x"),
                         "--control-model canny=...: the wan-tiny backbone brings its own control model"),
                        (("--control", f"canny={moves}", "--video", moves), "--video and --control together")):
        r = run("generate", "w", "dancing", *extra, "-o", tmp_path / "bad.mp4")
        assert r.exit_code == 1 and says in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.count("Error") == 1 and not r.stdout
        assert not (tmp_path / "bad.mp4").exists()


def _control_plan(renderer, g, moves, **options):
    from pvcli.jobs.generate import AddOn

    return renderer.plan(g, [AddOn("controlnet", {"type": "canny", "source": str(moves), **options})])


def test_vace_path_is_wanvacepipeline_with_the_exported_lora_and_gating_keeps_early_steps_base(moves, pv_home,
                                                                                                tmp_path):
    """pv's VACE path equals diffusers' own WanVACEPipeline (a VACE transformer whose base carries the
    tiny T2V weights, the identity loaded by `load_lora_weights` from `pv export --format
    diffusers`) within 1e-4 at CFG 5; late-step gating leaves the first steps the base model's bit
    for bit; --control-start 0.5 leaves the first half uncontrolled (the T2V steps) exactly."""
    from diffusers import WanVACEPipeline
    from pv_wan.backbone import build_tiny_components
    from pv_wan.vace import tiny_vace

    from pvcli.api import make_context
    from pvcli.engine.prompts import with_identity
    from pvcli.jobs.generate import IdentityRenderer, identity_settings

    r = run("export", "w", "--format", "diffusers", "-o", tmp_path / "w.safetensors")
    assert r.exit_code == 0, r.stderr
    ctx = make_context()
    renderer = IdentityRenderer(ctx, "w", identity_settings(ctx, "w"))
    bb = renderer.backbone
    g = renderer.settings.generate
    g = type(g)(**{**g.__dict__, "guidance_scale": 5.0, "negative_prompt": "blurry", "seed": 2})
    prompt = with_identity("dancing", renderer.phrase)
    plan = _control_plan(renderer, g, moves, scale=0.8)
    ours = render_latents(bb, prompt, g, plan=plan)
    assert bb.vace_pipeline().transformer.blocks is bb.denoiser.blocks  # one set of base blocks, adapter inside

    c = build_tiny_components()
    for k in ("transformer", "vae", "text_encoder"):
        c[k].eval()
    pipe = WanVACEPipeline(transformer=tiny_vace(c["transformer"], c["vae"], seed=0),
                           **{k: c[k] for k in ("vae", "text_encoder", "tokenizer", "scheduler")})
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tmp_path), weight_name="w.safetensors", adapter_name="w")
    theirs = pipe(prompt=prompt, negative_prompt=g.negative_prompt, video=plan.controls[0].frames[None],
                  conditioning_scale=0.8, height=g.height, width=g.width, num_frames=g.frames,
                  num_inference_steps=g.steps, guidance_scale=g.guidance_scale, max_sequence_length=32,
                  generator=torch.Generator().manual_seed(g.seed), output_type="latent").frames
    assert ours.shape == (1, 16, 3, 8, 8) and (ours - theirs).abs().max() < 1e-4

    def steps(**kw):
        seen = []
        render_latents(bb, prompt, g, plan=kw.pop("plan", plan), on_step=lambda i, x: seen.append(x.clone()), **kw)
        return seen

    gated, base = steps(adapter_steps=2), steps(adapter_scale=0.0)
    assert all(torch.equal(gated[i], base[i]) for i in range(2)) and (gated[-1] - base[-1]).abs().max() > 1e-3
    late, t2v = steps(plan=_control_plan(renderer, g, moves, start=0.5)), steps(plan=None)
    assert all(torch.equal(late[i], t2v[i]) for i in range(2)) and (late[-1] - t2v[-1]).abs().max() > 1e-2


def test_a_vace_checkpoint_loads_only_if_its_base_is_the_backbones_transformer(tmp_path, wan_settings):
    """A VACE checkpoint folder (diffusers layout, sharded) loads its control branch around the
    backbone's transformer and renders what the in-process one does; one built on another
    transformer is refused in one line, before any clip."""
    from pv_wan.backbone import build_tiny_components, make_tiny_wan
    from pv_wan.vace import tiny_vace

    from pvcli.contracts import ControlInput, GenerationPlan
    from pvcli.errors import PVError

    for seed in (0, 1):
        c = build_tiny_components(seed=seed)
        tiny_vace(c["transformer"], c["vae"]).save_pretrained(tmp_path / f"vace{seed}" / "transformer",
                                                              max_shard_size="100KB")
    assert len(list((tmp_path / "vace0" / "transformer").glob("*.safetensors"))) > 1
    g = wan_settings.generate
    maps = (torch.rand(9, 3, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.8).float()

    def clip(options):
        plan = GenerationPlan(g.frames, g.height, g.width, controls=[ControlInput(None, maps, 1.0, label="canny")])
        return render_latents(make_tiny_wan(options), "dancing", g, plan=plan)

    assert torch.equal(clip({"vace_model": str(tmp_path / "vace0")}), clip({}))
    with pytest.raises(PVError, match=r"not built on this backbone's transformer \(tiny-wan\(seed=0\)\): \d+ of \d+ "
                                      r"base tensors differ"):
        clip({"vace_model": str(tmp_path / "vace1")})
    with pytest.raises(PVError, match="Wan VACE model not found"):
        clip({"vace_model": str(tmp_path / "nothing")})


@pytest.mark.parametrize("profile,total,branch", [("wan2.1-1.3b", 2154.0, 735.0), ("wan2.1-14b", 17337.6, 3049.1)])
def test_real_size_vace_adds_only_its_control_branch(profile, total, branch):
    """The real VACE transformers, built without weights: pv shares their base with the T2V
    transformer, so --control costs only the branch (millions of parameters), which the identity
    adapter never touches (its targets match base blocks only)."""
    import re

    from pv_wan.backbone import TARGETS
    from pv_wan.configs import real_size_transformer, real_size_vace

    vace, t2v = real_size_vace(profile), real_size_transformer(profile)
    params = dict(vace.named_parameters())
    assert round(sum(p.numel() for p in params.values()) / 1e6, 1) == total
    assert round(sum(p.numel() for n, p in params.items() if n.startswith("vace_")) / 1e6, 1) == branch
    assert {n for n in params if not n.startswith("vace_")} == {n for n, _ in t2v.named_parameters()}
    for targets in TARGETS.values():
        assert not any(re.fullmatch(targets, n) for n, _ in vace.named_modules() if n.startswith("vace_"))


def test_a_supervised_window_bounds_what_the_causal_decoder_decodes(encoder, reference, wan_settings, monkeypatch):
    """tune.supervised_window=5 on a 13-frame clip: the losses read frames 0-4 only, so the causal VAE
    decodes 2 latent frames under gradient instead of up to all 4; bad windows are one line."""
    from pv_wan.backbone import WanBackbone, make_tiny_wan

    from pvcli.errors import PVError
    from pvcli.settings import from_dict, parse_set

    decoded = []
    real = WanBackbone.decode

    def decode(self, latents):
        decoded.append(latents.shape[2])
        return real(self, latents)

    monkeypatch.setattr(WanBackbone, "decode", decode)
    s = from_dict(wan_settings.to_dict(), [parse_set(["tune.frames=13", "tune.supervised_window=5"])])
    tuner = Tuner(make_tiny_wan(), encoder, s, reference)
    for _ in range(3):
        assert tuner.step().frames == 4
    assert decoded == [2, 2, 2]  # frames 0..4 are latent frames 0 and 1 of 4
    for sets, says in ((["tune.supervised_window=20"], "cannot exceed tune.frames (9)"),
                       (["tune.supervised_window=3"], "smaller than the 4 frames drawn from it")):
        with pytest.raises(PVError, match=re.escape(says)):
            from_dict(wan_settings.to_dict(), [parse_set(sets)])


@pytest.mark.parametrize("kind", ["euler", "unipc"])
def test_flow_shift_acts_on_a_model_folders_own_scheduler(kind, tmp_path):
    """backbone.options.flow_shift on a Wan model folder (diffusers layout, saved from the tiny
    components) whose scheduler is FlowMatchEuler (it calls the shift `shift`) or UniPC (`flow_shift`):
    the loaded backbone samples the shifted schedule and records that shift, instead of the folder's."""
    from diffusers import WanPipeline
    from pv_wan.backbone import build_tiny_components, flow_scheduler, make_wan

    from pvcli.engine.sampling import schedule_levels

    c = build_tiny_components(scheduler=kind)
    WanPipeline(**{k: c[k] for k in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}).save_pretrained(
        tmp_path / "model")
    shipped = make_wan({"model": str(tmp_path / "model")}, device="cpu")
    shifted = make_wan({"model": str(tmp_path / "model"), "flow_shift": 7.0}, device="cpu")
    assert type(shifted.scheduler) is type(c["scheduler"])
    assert (shipped.describe()["flow_shift"], shifted.describe()["flow_shift"]) == ("3", "7")
    levels = schedule_levels(shifted.scheduler, 8)
    assert levels == pytest.approx(schedule_levels(flow_scheduler(kind, 7.0), 8), abs=1e-6)
    assert levels[4] - schedule_levels(shipped.scheduler, 8)[4] > 0.1  # a shift of 7 keeps more noise mid-schedule


def _tiny_ti2v(scheduler: str = "unipc"):
    """Wan 2.2 TI2V-5B's layout, tiny: its 16x VAE as the real config has it (48 latent channels,
    2x2 patches folded into 12 channels, residual up blocks; pv_wan.configs.VAES) at small widths with
    latent statistics of its own, a 48-channel tiny transformer, and expand_timesteps (its pipeline's)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from pv_wan.backbone import WanBackbone, build_tiny_components
    from pv_wan.configs import VAES

    c = build_tiny_components(scheduler=scheduler)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKLWan(**{**VAES["wan2.2-5b"], "base_dim": 16, "decoder_base_dim": 24,
                                  "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
                                  "latents_mean": (0.1 * torch.randn(48)).tolist(),
                                  "latents_std": (0.5 + torch.rand(48)).tolist()})
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=48, out_channels=48,
            text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32)
    return WanBackbone("wan-tiny", transformer, vae, c["text_encoder"], c["tokenizer"], c["scheduler"], {}, "cpu",
                       torch.float32, max_sequence_length=32, expand_timesteps=True)


def test_the_wan22_16x_vae_decodes_a_prefix_and_a_window_as_the_whole_clip():
    """On Wan 2.2's 16x VAE (patches, residual up blocks): the frames a loss reads, decoded from the
    latent prefix (plain and through pv's checkpointed per-frame decoder), are diffusers' decode of
    the whole clip, sliced; decode_window's pixels `window_margin` in from its edge are the whole frame's."""
    bb = _tiny_ti2v()
    assert (bb.vae_scale_factor, bb.latent_channels) == (16, 48)
    c = bb.vae.config
    lat = initial_latents(bb, 13, 64, 64, torch.Generator().manual_seed(1))  # 4 latent frames of 4 x 4
    z = lat * torch.tensor(c.latents_std).view(1, 48, 1, 1, 1) + torch.tensor(c.latents_mean).view(1, 48, 1, 1, 1)
    with torch.no_grad():
        whole = (bb.vae.decode(z, return_dict=False)[0].permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)
        some = bb.decode_frames(lat, [0, 3, 6])  # latent frames 0..2 only
    assert whole.shape == (1, 13, 3, 64, 64) and whole.std() > 0.05
    assert (some - whole[:, [0, 3, 6]]).abs().max() < 1e-6
    bb.enable_decoder_checkpointing()
    checked = bb.decode_frames(lat.clone().requires_grad_(), [0, 3, 6])  # under grad: pv's decoder
    assert checked.requires_grad and (checked.detach() - whole[:, [0, 3, 6]]).abs().max() < 1e-5
    bb.decoder_checkpointing = False
    s, r = bb.vae_scale_factor, bb.window_margin
    lat = torch.randn(1, 48, 2, 4, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = bb.decode_frames(lat, [0, 3])
        window = bb.decode_window(lat, [0, 3], (0, 4, 3, 16))  # one edge inside the frame, at x = 3
    assert window.shape == (1, 2, 3, 4 * s, 13 * s)
    assert (window[..., (r * s):] - frames[..., (3 + r) * s:]).abs().max() < 1e-5
    assert (window[..., :s] - frames[..., 3 * s:4 * s]).abs().max() > 1e-3  # the edge itself is not exact


def test_the_5b_denoises_with_a_timestep_per_token_as_wanpipeline():
    """Wan 2.2 TI2V-5B (expand_timesteps): pv's sampler gives the transformer one timestep per latent
    patch, as WanPipeline does, and so renders WanPipeline's latents bit for bit from the same noise
    (a single timestep takes the transformer's other path: off by ~1e-6)."""
    bb = _tiny_ti2v()
    seen = []
    bb.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].shape), with_kwargs=True)
    lat = initial_latents(bb, 9, 64, 64, torch.Generator().manual_seed(1))  # 3 latent frames of 4 x 4
    cond = bb.encode_prompt(["sks person, surfing"])
    with torch.no_grad():
        ours = sample(bb, cond, None, lat, 4, 1.0).latents
        theirs = bb.pipeline()(prompt_embeds=cond, height=64, width=64, num_frames=9, num_inference_steps=4,
                               guidance_scale=1.0, latents=lat.clone(), output_type="latent").frames
    assert seen[:4] == [(1, 3 * 2 * 2)] * 4 and seen[4:] == seen[:4]  # 3 frames of 2 x 2 patches: pv's, then theirs
    assert torch.equal(ours, theirs)
