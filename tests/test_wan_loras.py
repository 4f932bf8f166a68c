"""Style LoRAs on Wan in the formats people have (diffusers, ComfyUI/original Wan keys, musubi-tuner),
read by diffusers' own Wan loader beside the identity adapter; what Wan cannot render is one line."""

import json

import numpy as np
import pytest
import torch
from conftest import NO_HELD_OUT, randomize_lora_b, run, tune_home, use_home

STYLE = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"


@pytest.fixture(scope="module")
def style_loras(tmp_path_factory):
    """One random style LoRA on every block's attention and feed-forward (as style trainers train),
    rank 4 with alpha 8, written in the three layouts."""
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from pv_wan.backbone import build_tiny_components
    from pv_wan.lora_keys import native_module
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("wan-loras")
    transformer = build_tiny_components()["transformer"]
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=STYLE, init_lora_weights="gaussian"))
    randomize_lora_b(transformer, seed=5)
    state = get_peft_model_state_dict(transformer)
    # diffusers' own file keeps rank and alpha in its header; the other two carry alpha per module
    WanPipeline.save_lora_weights(d / "diffusers", transformer_lora_layers=state, transformer_lora_adapter_metadata={
        "r": 4, "lora_alpha": 8, "target_modules": sorted({k.split(".lora_")[0] for k in state})})
    native, musubi = {}, {}
    for key, value in state.items():
        module, _, tail = key.partition(".lora_")  # blocks.0.attn2.to_q, A.weight
        name = native_module(module)
        native[f"{name}.lora_{tail}"] = value.contiguous()
        native[f"{name}.alpha"] = torch.tensor(8.0)
        flat = "lora_unet_" + name.removeprefix("diffusion_model.").replace(".", "_")
        musubi[f"{flat}.lora_{'down' if tail.startswith('A') else 'up'}.weight"] = value.contiguous()
        musubi[f"{flat}.alpha"] = torch.tensor(8.0)
    save_file(native, str(d / "comfy.safetensors"))
    save_file(musubi, str(d / "musubi.safetensors"))
    (d / "not_a_lora.safetensors").write_bytes(b"nope")
    unet = "lora_unet_down_blocks_0_attentions_0_proj_in"  # an SD 1.5 (UNet) LoRA: not for this model
    save_file({f"{unet}.lora_down.weight": torch.randn(4, 32), f"{unet}.lora_up.weight": torch.randn(32, 4)},
              str(d / "unet_lora.safetensors"))
    return {"unet": d / "unet_lora.safetensors", "diffusers": d / "diffusers" / "pytorch_lora_weights.safetensors", "comfy": d / "comfy.safetensors",
            "musubi": d / "musubi.safetensors", "bad": d / "not_a_lora.safetensors"}


@pytest.fixture(scope="module")
def wan_home(tmp_path_factory, astronaut):
    home = tmp_path_factory.mktemp("wan-lora-home")
    tune_home(home, astronaut, "w", "tiny-wan", *NO_HELD_OUT, "--steps", "1")
    return home


def test_style_loras_in_every_wan_layout_stack_with_the_identity(wan_home, style_loras, monkeypatch, tmp_path):
    from pvcli.video import read_frames

    use_home(monkeypatch, wan_home)

    def gen(*args):
        out = tmp_path / f"c{len(list(tmp_path.iterdir()))}.mp4"
        r = run("generate", "w", "dancing", "-o", out, "--seed", "2", "--json", *args)
        assert r.exit_code == 0, r.stderr
        return read_frames(out).astype(int), json.loads(r.stdout)

    base, _ = gen()
    zero, _ = gen("--lora", f"{style_loras['diffusers']}:0")
    assert np.array_equal(zero, base)  # weight 0 is the clip without it
    styled = {}
    for fmt in ("diffusers", "comfy", "musubi"):
        styled[fmt], rec = gen("--lora", f"{style_loras[fmt]}:0.8")
        assert rec["loras"] == [{"source": str(style_loras[fmt]), "weight": 0.8}]
    assert np.abs(styled["diffusers"] - base).max() > 10  # the style acts
    # the same LoRA in three layouts, each read by diffusers' own Wan loader: the same clip
    assert np.abs(styled["comfy"] - styled["diffusers"]).max() <= 1
    assert np.abs(styled["musubi"] - styled["diffusers"]).max() <= 1
    no_identity, _ = gen("--lora", f"{style_loras['diffusers']}:0.8", "--no-adapter")
    assert not np.array_equal(no_identity, styled["diffusers"])  # the identity still acts beside the style


def test_what_wan_cannot_render_is_one_line(wan_home, style_loras, monkeypatch, tmp_path):
    use_home(monkeypatch, wan_home)
    r = run("generate", "w", "dancing", "--lora", style_loras["bad"], "-o", tmp_path / "a.mp4")
    assert r.exit_code == 1 and "is not a safetensors file" in r.stderr
    r = run("generate", "w", "dancing", "--lora", style_loras["unet"], "-o", tmp_path / "a.mp4")
    assert r.exit_code == 1 and "not a LoRA this Wan model can load" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = run("generate", "w", "dancing", "--frames", "129", "-o", tmp_path / "b.mp4")  # past the 3D RoPE's reach
    assert r.exit_code == 1 and "exceeds this backbone's limit of 125 frames" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "b.mp4").exists()
