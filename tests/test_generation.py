"""Generation on diffusers' pipelines: the same frames as pv's own sampler, and the add-ons
(ControlNet, style LoRA) through `pv generate` on the tiny backbone, offline."""

import json

import numpy as np
import pytest
import torch
from conftest import random_adapter, randomize_lora_b, run

from pvcli.engine.adapter import adapter_disabled, set_adapter_scale
from pvcli.engine.generate import render_latents
from pvcli.engine.sampling import initial_latents, sample
from pvcli.video import read_frames, read_metadata

ATTENTION = r".*attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"


@pytest.mark.parametrize("scale,adapter_steps", [(1.0, None), (0.0, None), (1.0, 2), (0.6, 3)])
def test_pipeline_path_gives_pv_sampler_frames(tiny, tiny_settings, scale, adapter_steps):
    """Adapter on, off, gated (last 2 or 3 of 4 steps), scaled: diffusers' pipeline with pv's
    step-callback gating equals pv's own sampler with its gating."""
    random_adapter(tiny)
    g = tiny_settings.generate
    g = type(g)(**{**g.__dict__, "frames": 4, "seed": 3})
    prompt = "sks person, surfing at sunset"
    ours = tiny.decode(render_latents(tiny, prompt, g, adapter_steps=adapter_steps, adapter_scale=scale))

    set_adapter_scale(tiny.unet, scale)
    with torch.no_grad():
        lat = initial_latents(tiny, 4, 64, 64, torch.Generator().manual_seed(3))
        reference = tiny.decode(sample(tiny, tiny.encode_prompt([prompt]), None, lat, 4, 1.0,
                                       adapter_steps=adapter_steps).latents)
        with adapter_disabled(tiny.unet):
            base = tiny.decode(sample(tiny, tiny.encode_prompt([prompt]), None, lat, 4, 1.0).latents)
    assert (ours - reference).abs().max() < 1e-4
    if scale:
        assert (ours - base).abs().max() > 1e-2  # the adapter really acts in this case


@pytest.fixture(scope="module")
def home(alice_home):
    """An identity tuned hard enough to show beside a style LoRA, and a style LoRA built here."""
    return alice_home


@pytest.fixture(scope="module")
def style_loras(tmp_path_factory):
    """A tiny style LoRA on the image model's spatial attention, saved in diffusers and kohya keys."""
    from diffusers import AnimateDiffPipeline
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from pv_animatediff.backbone import build_tiny_components
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("loras")
    unet = build_tiny_components()["unet2d"]
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=ATTENTION, init_lora_weights="gaussian"))
    randomize_lora_b(unet, seed=7)
    state = get_peft_model_state_dict(unet)
    AnimateDiffPipeline.save_lora_weights(d / "diffusers", unet_lora_layers=state)
    save_file(convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()}), str(d / "style_kohya.safetensors"))
    return d / "diffusers" / "pytorch_lora_weights.safetensors", d / "style_kohya.safetensors"


@pytest.fixture
def gen(home, monkeypatch, tmp_path):
    monkeypatch.setenv("PV_HOME", str(home))
    counter = iter(range(1000))

    def generate(*args):
        out = tmp_path / f"clip{next(counter)}.mp4"
        r = run("generate", "alice", "dancing", "-o", out, "--frames", "4", "--seed", "1", *args)
        assert r.exit_code == 0, r.stderr
        return read_frames(out).astype(np.int16), read_metadata(out)

    return generate


@pytest.fixture(scope="module")
def source(tmp_path_factory, astronaut):
    """A short panning clip of a real photo, as a video and as a folder of frames."""
    import cv2

    from pvcli.images import load_image
    from pvcli.video import write_mp4

    d = tmp_path_factory.mktemp("src")
    img = cv2.resize(load_image(astronaut), (160, 160))
    frames = np.stack([img[10:138, 4 * k:128 + 4 * k] for k in range(6)])
    write_mp4(frames, d / "drive.mp4", 8)
    (d / "frames").mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(d / "frames" / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return d


def test_controlnet_changes_the_clip_and_scale_zero_restores_it(gen, source, astronaut):
    base, _ = gen()
    canny, meta = gen("--control", f"canny={source / 'drive.mp4'}")
    assert np.abs(canny - base).max() > 10
    assert meta["controls"] == [{"type": "canny", "source": str(source / "drive.mp4"), "raw": False, "model": "tiny",
                                 "scale": 1.0, "start": 0.0, "end": 1.0}]
    off, _ = gen("--control", f"canny={source / 'drive.mp4'}", "--control-scale", "0")
    assert np.array_equal(off, base)
    image, _ = gen("--control", f"canny={astronaut}")  # one image, repeated over the clip
    assert np.abs(image - canny).max() > 0
    late, _ = gen("--control", f"canny={source / 'drive.mp4'}", "--control-start", "0.5")
    assert not np.array_equal(late, canny) and not np.array_equal(late, base)


def test_several_controlnets_and_ready_maps(gen, source):
    one, _ = gen("--control", f"canny={source / 'drive.mp4'}")
    two, meta = gen("--control", f"canny={source / 'drive.mp4'}", "--control-raw", f"canny={source / 'frames'}",
                    "--control-scale", "1", "--control-scale", "0.5")
    assert not np.array_equal(one, two)
    assert [c["raw"] for c in meta["controls"]] == [False, True] and meta["controls"][1]["scale"] == 0.5
    raw_zero, _ = gen("--control", f"canny={source / 'drive.mp4'}", "--control-raw", f"canny={source / 'frames'}",
                      "--control-scale", "1", "--control-scale", "0")
    assert np.abs(raw_zero - one).max() <= 1  # the second ControlNet at 0 adds nothing


def test_style_lora_stacks_with_the_identity(gen, style_loras):
    diffusers_keys, kohya_keys = style_loras
    base, _ = gen()
    zero, _ = gen("--lora", f"{diffusers_keys}:0")
    assert np.array_equal(zero, base)  # weight 0 reproduces the clip without it
    styled, meta = gen("--lora", f"{diffusers_keys}:0.8")
    assert np.abs(styled - base).max() > 10 and meta["loras"] == [{"source": str(diffusers_keys), "weight": 0.8}]
    styled_no_identity, _ = gen("--lora", f"{diffusers_keys}:0.8", "--no-adapter")
    assert np.abs(styled - styled_no_identity).max() > 10  # the identity still acts beside the style
    kohya, _ = gen("--lora", f"{kohya_keys}:0.8")  # the same LoRA in kohya keys: the same clip
    assert np.abs(kohya - styled).max() <= 1


def test_lora_and_controlnet_compose(gen, style_loras, source):
    both, meta = gen("--lora", str(style_loras[0]), "--control", f"canny={source / 'drive.mp4'}")
    lora_only, _ = gen("--lora", str(style_loras[0]))
    assert np.abs(both - lora_only).max() > 10 and {"loras", "controls"} <= set(meta)


def _error(r):
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


def test_add_on_errors_are_one_line(home, monkeypatch, tmp_path, source, astronaut):
    monkeypatch.setenv("PV_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = ("-o", tmp_path / "x.mp4", "--frames", "4")
    assert "not found" in _error(run("generate", "alice", "x", *out, "--control", f"canny={tmp_path}/nope.mp4"))
    assert "unknown control type 'blur'" in _error(run("generate", "alice", "x", *out, "--control", f"blur={astronaut}"))
    assert "expects TYPE=VALUE" in _error(run("generate", "alice", "x", *out, "--control", str(astronaut)))
    assert "given 2 times for 1 controls" in _error(run("generate", "alice", "x", *out, "--control",
                                                        f"canny={astronaut}", "--control-scale", "1",
                                                        "--control-scale", "2"))
    err = _error(run("generate", "alice", "x", *out, "--control", f"depth={astronaut}"))
    assert "cannot load depth estimator" in err and "--control-raw depth=" in err
    assert "file not found" in _error(run("generate", "alice", "x", *out, "--lora", f"{tmp_path}/missing.safetensors"))
    assert "unknown conditioner 'sparkles'" in _error(run("generate", "alice", "x", *out, "--addon", "sparkles:a=1"))
    assert not (tmp_path / "x.mp4").exists()


def test_any_conditioner_plugin_is_reachable_with_addon(gen, source):
    via_flag, _ = gen("--control", f"canny={source / 'drive.mp4'}", "--control-scale", "0.7")
    via_addon, meta = gen("--addon", f"controlnet:type=canny,source={source / 'drive.mp4'},scale=0.7")
    assert np.array_equal(via_flag, via_addon) and meta["controls"][0]["scale"] == 0.7
    assert json.loads(json.dumps(meta))  # the record stays JSON


def test_loaded_controlnets_belong_to_their_backbone_and_to_the_files_they_came_from(tmp_path, monkeypatch):
    """One backbone loads a ControlNet once; another backbone, a model saved again at the same path,
    or the same relative path in another directory gets its own; a backbone's ControlNets go with it."""
    import gc
    import weakref

    from pv_animatediff.backbone import make_tiny
    from pv_conditioners.controlnet import load_controlnet, tiny_controlnet

    first, second = make_tiny(), make_tiny()
    for seed, folder in ((1, "a"), (2, "b")):
        tiny_controlnet(first, seed).save_pretrained(tmp_path / folder / "cn")

    def weights(model):
        return next(model.parameters()).detach().clone()

    monkeypatch.chdir(tmp_path / "a")
    seed1 = load_controlnet("cn", first)
    assert load_controlnet("cn", first) is seed1  # many clips, one load
    assert torch.equal(weights(seed1), weights(tiny_controlnet(first, 1)))
    monkeypatch.chdir(tmp_path / "b")
    assert torch.equal(weights(load_controlnet("cn", second)), weights(tiny_controlnet(first, 2)))  # not a's "cn"
    assert torch.equal(weights(load_controlnet("cn", first)), weights(tiny_controlnet(first, 2)))
    assert load_controlnet("tiny", first) is not load_controlnet("tiny", second)
    tiny_controlnet(first, 3).save_pretrained(tmp_path / "b" / "cn")  # saved again in place
    assert torch.equal(weights(load_controlnet("cn", first)), weights(tiny_controlnet(first, 3)))

    gone = weakref.ref(load_controlnet("tiny", second))
    del second
    gc.collect()
    assert gone() is None  # not held for the rest of the process
