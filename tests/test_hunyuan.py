"""The HunyuanVideo family (dual/single-stream diffusion transformer, flow matching, embedded
guidance, LLaMA + CLIP conditioning) as a plugin: the whole method runs on the tiny HunyuanVideo
built in-process, through the same engine and CLI as the other families. What is
HunyuanVideo-specific is checked here: the video tokens' queries and keys stay frozen, pv's sampler
is HunyuanVideoPipeline's (embedded guidance, its sigmas), late-step gating, 4k+1 frames, the
non-causal VAE statistics, exports in diffusers and original keys, real-size placement."""

import json
import re

import pytest
import torch
from conftest import HARD_TUNE, copy_home, random_adapter, run, tune_home, use_home

from pvcli.engine.adapter import ADAPTER_NAME, adapter_disabled, adapter_state_dict, add_adapter, set_adapter_scale
from pvcli.engine.generate import render_latents
from pvcli.engine.sampling import adapted_steps, initial_latents, sample
from pvcli.engine.tune import Tuner
from pvcli.settings import resolve


@pytest.fixture
def hy():
    from pv_hunyuanvideo.backbone import make_tiny_hunyuanvideo

    return make_tiny_hunyuanvideo()


@pytest.fixture(scope="module")
def hy_settings():
    return resolve("tiny-hunyuan")[1]


@pytest.fixture(scope="module")
def hy_home(tmp_path_factory, astronaut):
    """A PV_HOME holding `h`, tuned once per module on tiny-hunyuan (conftest's HARD_TUNE), and the record
    `pv tune --json` printed. Tests only read it; they write under their tmp_path."""
    home = tmp_path_factory.mktemp("hy_home")
    return home, tune_home(home, astronaut, "h", "tiny-hunyuan", *HARD_TUNE)


@pytest.fixture
def pv_home(hy_home, monkeypatch):
    """This module's tests run on the shared `h` identity's home."""
    return use_home(monkeypatch, hy_home[0])


def test_tiny_hunyuan_tunes_and_generates_through_the_cli(hy_home, astronaut, pv_home, tmp_path):
    info = hy_home[1]
    # 2 double-stream blocks x (add_k_proj, add_v_proj, ff x2) + 2 single-stream proj_mlp
    assert info["backbone"] == "hunyuanvideo-tiny" and info["steps"] == 2 and info["adapter_layers"] == 10
    out = tmp_path / "h.mp4"
    r = run("generate", "h", "surfing", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    from pvcli.video import read_frames

    assert read_frames(out).shape == (9, 64, 64, 3)
    r = run("generate", "h", "surfing", "--frames", "16", "-o", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "HunyuanVideo renders 4k+1 frames" in r.stderr and "use 13 or 17" in r.stderr
    assert "Traceback" not in r.stderr and "loading backbone" not in r.stderr and not (tmp_path / "x.mp4").exists()
    r = run("tune", astronaut, "--name", "v", "--profile", "tiny-hunyuan", "--set", "tune.frames=8")
    assert r.exit_code == 1 and "tune.frames 8: HunyuanVideo renders 4k+1 frames" in r.stderr
    assert "loading backbone" not in r.stderr and not (pv_home / "runs" / "v").exists()
    for flag, value, says in (("--control", f"canny={astronaut}", "--control is not available on the hunyuanvideo-tiny"),
                              ("--video", astronaut, "--video is not available on the hunyuanvideo-tiny")):
        r = run("generate", "h", "surfing", flag, value, "-o", tmp_path / "c.mp4")
        assert r.exit_code == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert sum("not available" in line for line in r.stderr.splitlines()) == 1 and not (tmp_path / "c.mp4").exists()
        assert "loading backbone" not in r.stderr  # refused from the registration, before the model loads


def test_tuning_leaves_queries_keys_text_encoders_and_vae_bit_identical(hy, encoder, reference, hy_settings):
    protected = hy.protected_modules()
    assert {"text_encoder", "text_encoder_2", "vae"} <= set(protected)
    assert "transformer_blocks.0.attn.to_q" in protected and "single_transformer_blocks.1.attn.to_k" in protected
    # the video tokens' self-attention whole: values and output too (single-stream: proj_out holds the output)
    assert {"transformer_blocks.1.attn.to_v", "transformer_blocks.0.attn.to_out.0", "single_transformer_blocks.0.attn.to_v",
            "single_transformer_blocks.1.proj_out"} <= set(protected)
    frozen = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in protected.items()}
    tuner = Tuner(hy, encoder, hy_settings, reference)
    kinds = {n.split(".", 2)[2] for n in tuner.layers}
    assert kinds == {"attn.add_k_proj", "attn.add_v_proj", "ff.net.0.proj", "ff.net.2", "proj_mlp"}
    before = adapter_state_dict(hy.denoiser)
    held = [p for group in tuner.optimizer.param_groups for p in group["params"]]  # the adapter, nothing else
    assert {id(p) for p in held} == {id(p) for n, p in hy.denoiser.named_parameters() if ADAPTER_NAME in n}
    assert tuner.step().loss is not None
    after = adapter_state_dict(hy.denoiser)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the adapter learned
    for name, module in protected.items():
        now = module.state_dict()
        assert all(torch.equal(now[k], frozen[name][k]) for k in now), name
    assert not any(p.requires_grad for n, p in hy.denoiser.named_parameters() if ADAPTER_NAME not in n)
    from pv_hunyuanvideo.backbone import make_tiny_hunyuanvideo

    from pvcli.errors import PVError

    for layer in (r"transformer_blocks\.\d+\.attn\.to_q", r"transformer_blocks\.\d+\.attn\.to_v",
                  r"transformer_blocks\.\d+\.attn\.to_out\.0", r"single_transformer_blocks\.\d+\.proj_out"):
        fresh = make_tiny_hunyuanvideo()
        fresh.target_sets = {**fresh.target_sets, "attention": layer}
        with pytest.raises(PVError, match="would touch protected modules"):  # a target set can never reach them
            add_adapter(fresh, "attention", 4, 4)


def test_pv_sampler_is_hunyuanvideopipeline_and_gating_leaves_early_steps_base(hy, hy_settings):
    """diffusers' HunyuanVideoPipeline (embedded guidance, its own sigmas, pv's step-callback
    gating) gives pv's own sampler's latents; gating keeps the first steps the base model's, bit
    for bit; the guidance scale acts as an input and the negative prompt is never used."""
    random_adapter(hy)
    g = hy_settings.generate
    g = type(g)(**{**g.__dict__, "seed": 3, "negative_prompt": "blurry", "steps": 6})
    prompt, steps, adapted = "sks person, surfing at sunset", g.steps, adapted_steps(g.steps, 0.5)
    ours = render_latents(hy, prompt, g, adapter_steps=adapted)
    set_adapter_scale(hy.denoiser, 1.0)
    seen, base_seen = [], []
    with torch.no_grad():
        lat = initial_latents(hy, g.frames, g.height, g.width, torch.Generator().manual_seed(3))
        cond, uncond = hy.encode_prompt([prompt]), hy.encode_prompt([g.negative_prompt])
        mine = sample(hy, cond, uncond, lat, steps, g.guidance_scale, adapter_steps=adapted,
                      on_step=lambda i, x: seen.append(x.clone())).latents
        with adapter_disabled(hy.denoiser):
            sample(hy, cond, uncond, lat, steps, g.guidance_scale, on_step=lambda i, x: base_seen.append(x.clone()))
        no_neg = sample(hy, cond, None, lat, steps, g.guidance_scale, adapter_steps=adapted).latents
        weak = sample(hy, cond, uncond, lat, steps, 1.0, adapter_steps=adapted).latents
    assert ours.shape == (1, 4, 3, 8, 8)  # 9 frames -> 3 latent frames; 64 px -> 8
    assert (ours - mine).abs().max() < 1e-4
    assert torch.equal(mine, no_neg) and (mine - weak).abs().max() > 1e-3
    for i in range(steps - adapted):
        assert torch.equal(seen[i], base_seen[i]), i
    assert (seen[-1] - base_seen[-1]).abs().max() > 1e-3


def test_the_vae_statistics_span_the_clip_so_the_loss_decodes_it_whole(hy):
    lat = initial_latents(hy, 13, 64, 64, torch.Generator().manual_seed(1))  # 4 latent frames
    with torch.no_grad():
        whole = hy.decode(lat)
        some = hy.decode_frames(lat, [0, 3, 6])
        prefix = hy.decode(lat[:, :, :3])  # the frames up to 8: causal convolutions alone would agree
    assert whole.shape == (1, 13, 3, 64, 64) and some.shape == (1, 3, 3, 64, 64)
    assert torch.equal(some, whole[:, [0, 3, 6]])
    assert (prefix - whole[:, :9]).abs().max() > 1e-2  # GroupNorm over all frames: no prefix shortcut
    # the oracle: HunyuanVideoPipeline's own decode path (scaling, VAE, postprocessing) on the same
    # latents, handed to it as its last step's result; frames in [0, 1], (B, F, 3, H, W)
    with torch.no_grad():
        theirs = hy.pipeline()(prompt="x", height=64, width=64, num_frames=13, num_inference_steps=1,
                               callback_on_step_end=lambda p, i, t, kw: {"latents": lat.clone()}, output_type="pt",
                               prompt_template=hy.prompt_template, max_sequence_length=hy.max_sequence_length).frames
    assert (some - theirs[:, [0, 3, 6]]).abs().max() < 1e-6 and (whole - theirs).abs().max() < 1e-6


def test_diffusers_and_comfy_exports_load_into_hunyuanvideopipeline_and_render_pv_latents(pv_home, tmp_path):
    """Both files, read by diffusers' own `load_lora_weights` into a fresh HunyuanVideoPipeline (the
    comfy file through diffusers' converter of original HunyuanVideo keys, its fused linear1 split
    at the tiny width: tiny_width_original_lora), render pv's latents within 1e-4; the exported file
    is also a style LoRA pv loads (`--lora`) and renders the identity."""
    from diffusers import HunyuanVideoPipeline
    from pv_hunyuanvideo.backbone import build_tiny_components
    from safetensors import safe_open

    from pvcli.api import make_context
    from pvcli.engine.prompts import with_identity
    from pvcli.jobs.generate import IdentityRenderer, identity_settings

    for fmt in ("diffusers", "comfy"):
        r = run("export", "h", "--format", fmt, "-o", tmp_path / f"{fmt}.safetensors", "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["format"] == fmt
    with safe_open(str(tmp_path / "comfy.safetensors"), "pt") as fh:
        keys, header = set(fh.keys()), fh.metadata()
    assert "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight" in keys  # original HunyuanVideo names
    assert {"diffusion_model.double_blocks.1.txt_attn_qkv.lora_B.weight", "diffusion_model.double_blocks.0.img_mlp.fc2.lora_A.weight",
            "diffusion_model.single_blocks.1.linear1.lora_B.weight"} <= keys  # proj_mlp, in the fused linear1
    assert not any(".alpha" in k for k in keys) and header["pv.export_format"] == "comfy"

    ctx = make_context()
    renderer = IdentityRenderer(ctx, "h", identity_settings(ctx, "h"))
    g = renderer.settings.generate
    prompt = with_identity("surfing", renderer.phrase)
    ours = render_latents(renderer.backbone, prompt, g)
    c = build_tiny_components()
    pipe = HunyuanVideoPipeline(**{k: c[k] for k in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                     "tokenizer_2", "scheduler")})
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        return pipe(prompt=prompt, height=g.height, width=g.width, num_frames=g.frames, num_inference_steps=g.steps,
                    guidance_scale=g.guidance_scale, prompt_template=c["prompt_template"], max_sequence_length=32,
                    generator=torch.Generator().manual_seed(g.seed), output_type="latent").frames

    base = theirs()
    assert (ours - base).abs().max() > 1e-2  # the adapter changes the clip
    files = {"diffusers": str(tmp_path / "diffusers.safetensors"),
             "comfy": tiny_width_original_lora(tmp_path / "comfy.safetensors", renderer.backbone.denoiser)}
    for fmt in ("diffusers", "comfy"):
        pipe.load_lora_weights(files[fmt], adapter_name=fmt)
        pipe.set_adapters([fmt])
        assert (theirs() - ours).abs().max() < 1e-4, fmt
        pipe.delete_adapters(fmt)

    from pvcli.video import read_frames

    clips = {}
    for name, extra in (("identity", ()), ("lora", ("--no-adapter", "--lora", tmp_path / "diffusers.safetensors"))):
        r = run("generate", "h", "surfing", *extra, "-o", tmp_path / f"{name}.mp4")
        assert r.exit_code == 0, r.stderr
        clips[name] = read_frames(tmp_path / f"{name}.mp4").astype(int)
    assert abs(clips["identity"] - clips["lora"]).max() <= 2  # the style LoRA is the identity, through diffusers' loader
    r = run("generate", "h", "surfing", "--lora", not_a_lora(tmp_path), "-o", tmp_path / "bad.mp4")
    assert r.exit_code == 1 and "--lora" in r.stderr and "Traceback" not in r.stderr


def test_an_identity_tuned_on_the_old_targets_loads_on_its_own_layers_and_generates(hy, hy_home, tmp_path, monkeypatch):
    """Identities tuned before the adapter left the video values and outputs (double-stream to_v,
    to_out.0, single-stream proj_out) load on the layers they were tuned on and render with them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pvcli.api import make_context
    from pvcli.engine.adapter import lora_layers
    from pvcli.identity_files import ADAPTER_FILE, tensor_hash
    from pvcli.jobs.generate import IdentityRenderer, identity_settings

    old = (r"transformer_blocks\.\d+\.attn\.(to_v|to_out\.0|add_k_proj|add_v_proj)"
           r"|transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)|single_transformer_blocks\.\d+\.proj_out")
    home = copy_home(hy_home[0], tmp_path / "home")
    use_home(monkeypatch, home)
    path = home / "identities" / "h" / ADAPTER_FILE
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, m in hy.denoiser.named_modules():
        if re.fullmatch(old, name):
            state[f"{name}.lora_A.weight"] = torch.randn(4, m.in_features, generator=g) * 0.3
            state[f"{name}.lora_B.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.3
    lora = {**json.loads(meta["lora_adapter_metadata"]), "target_modules": old}
    save_file(state, str(path), metadata={**meta, "tensors_sha256": tensor_hash(state),
                                          "lora_adapter_metadata": json.dumps(lora)})
    ctx = make_context()
    renderer = IdentityRenderer(ctx, "h", identity_settings(ctx, "h"))
    layers = {n for n, _ in lora_layers(renderer.backbone.denoiser)}
    assert layers == {k.split(".lora_")[0] for k in state} and "single_transformer_blocks.1.proj_out" in layers
    g_settings = renderer.settings.generate
    with torch.no_grad():
        ours = render_latents(renderer.backbone, "sks person surfing", g_settings)
        base = render_latents(renderer.backbone, "sks person surfing", g_settings, adapter_scale=0.0)
    assert (ours - base).abs().max() > 1e-2  # the old adapter acts
    r = run("generate", "h", "surfing", "-o", tmp_path / "old.mp4")
    assert r.exit_code == 0 and (tmp_path / "old.mp4").exists(), r.stderr


def tiny_width_original_lora(path, transformer) -> dict:
    """diffusers' reading of an original-key HunyuanVideo LoRA file, at the tiny model's width:
    its converter (`_convert_hunyuan_video_lora_to_diffusers`) splits a single-stream block's fused
    linear1 at the real model's 3072 rows per q, k, v, so the tiny model's linear1 is split here the
    same way at its own width (lora_A shared, lora_B's rows q, k, v, then the MLP's) and the rest goes
    through diffusers' converter as it is."""
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers
    from safetensors.torch import load_file

    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    state = load_file(str(path))
    fused = {k: state.pop(k) for k in list(state) if ".linear1." in k}
    out = _convert_hunyuan_video_lora_to_diffusers(state)
    for key, value in fused.items():
        block, kind = key.removeprefix("diffusion_model.single_blocks.").split(".linear1.")
        pieces = [value] * 4 if kind.startswith("lora_A") else value.split([width] * 3 + [value.shape[0] - 3 * width])
        for name, piece in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), pieces, strict=True):
            out[f"transformer.single_transformer_blocks.{block}.{name}.{kind}"] = piece
    return out


def not_a_lora(tmp_path):
    bad = tmp_path / "not_a_lora.safetensors"
    bad.write_bytes(b"not a safetensors file")
    return bad


@pytest.mark.parametrize("targets,count,millions", [("attention", 40, 3.93), ("spatial", 120, 23.59)])
def test_real_size_adapter_placement_from_the_real_config(targets, count, millions):
    """The real 13B transformer, built without weights: its parameter count, and where a rank-16
    adapter goes (layers, millions of parameters); never on the video tokens' self-attention."""
    import re

    from pv_hunyuanvideo.backbone import MIXING, TARGETS
    from pv_hunyuanvideo.configs import real_size_transformer

    model = real_size_transformer()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 12821.0
    layers = {n: m for n, m in model.named_modules() if re.fullmatch(TARGETS[targets], n)}
    assert not any(re.fullmatch(MIXING, n) for n in layers)
    assert len(layers) == count
    assert round(sum(16 * (m.in_features + m.out_features) for m in layers.values()) / 1e6, 2) == millions


def test_a_fixed_clip_gets_closer_to_the_reference_every_step(hy, encoder, reference, hy_settings):
    """Same noise and prompt every step: the ID loss moves the HunyuanVideo clip towards the
    reference (measured -0.158 -> -0.092 in 6 steps at lr 5e-3)."""
    from conftest import fixed_clip_similarities

    sims = fixed_clip_similarities(hy, encoder, reference, hy_settings, steps=4)
    assert all(b > a for a, b in zip(sims[:-1], sims[1:], strict=True)), sims
    assert sims[-1] - sims[0] > 0.02, sims
