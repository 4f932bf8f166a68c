"""Every key `pv export --format comfy` writes names a weight of the original model, with its shape.

The oracle is not pv's mapping run backwards: each exported module `X` (lora_A, lora_B, .alpha)
becomes a one-weight original checkpoint {X.weight: (lora_B rows, lora_A columns)}, diffusers'
single-file converter of that family's original checkpoints (convert_wan_transformer_to_diffusers,
convert_hunyuan_video_transformer_to_diffusers) renames and splits it, and every weight it yields
must be a parameter of the real-size diffusers transformer (built from the real configs on the meta
device) with exactly that shape. A misnamed module lands on no parameter; a wrong lora_B height or
lora_A width splits into the wrong shapes. Adapters are rank 1 on every layer of each target set
(the export's keys do not depend on the values); no tune, no weights."""

from __future__ import annotations

import re

import pytest
import torch

PREFIX = "diffusion_model."  # ComfyUI's prefix of the original names in a LoRA file
# the HunyuanVideo target sets of identities tuned before the adapter left the video value/output
_OLD_ATT = r"transformer_blocks\.\d+\.attn\.(to_v|to_out\.0|add_k_proj|add_v_proj)"
HUNYUAN_BEFORE = {"attention (before)": _OLD_ATT,
                  "spatial (before)": rf"{_OLD_ATT}|transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)"
                                      r"|single_transformer_blocks\.\d+\.proj_out"}


def adapter_state(model, pattern: str) -> dict[str, torch.Tensor]:
    """A rank-1 peft adapter state (pv's keys) on every layer of `pattern`, random values."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, m in model.named_modules():
        if re.fullmatch(pattern, name):
            state[f"{name}.lora_A.weight"] = torch.randn(1, m.in_features, generator=g)
            state[f"{name}.lora_B.weight"] = torch.randn(m.out_features, 1, generator=g)
    assert state, pattern
    return state


def check_against_original(tensors: dict, convert, model) -> int:
    """Each exported module is an original weight the converter maps onto the model's parameters."""
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    modules: dict[str, dict] = {}
    for key, value in tensors.items():
        assert key.startswith(PREFIX), key
        m = re.fullmatch(r"(.+)\.(lora_A\.weight|lora_B\.weight|alpha)", key[len(PREFIX):])
        assert m, key
        modules.setdefault(m.group(1), {})[m.group(2)] = value
    for module, parts in modules.items():
        a, b = parts["lora_A.weight"], parts["lora_B.weight"]
        assert f"{module}.weight" not in params, module  # a diffusers name, not the original model's
        assert a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[1], module
        converted = convert({f"{module}.weight": torch.empty(b.shape[0], a.shape[1], device="meta")})
        shapes = {k: tuple(v.shape) for k, v in converted.items()}
        assert shapes and all(params.get(k) == s for k, s in shapes.items()), (module, shapes)
    return len(modules)


def _wan():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from pv_wan.backbone import TARGETS
    from pv_wan.configs import real_size_transformer
    from pv_wan.lora_keys import comfy_lora

    return real_size_transformer, TARGETS, comfy_lora, convert_wan_transformer_to_diffusers


def _hunyuan():
    from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers
    from pv_hunyuanvideo.backbone import TARGETS
    from pv_hunyuanvideo.configs import real_size_transformer
    from pv_hunyuanvideo.lora_keys import comfy_lora

    return real_size_transformer, {**TARGETS, **HUNYUAN_BEFORE}, comfy_lora, convert_hunyuan_video_transformer_to_diffusers


# Wan 2.2 A14B's experts have the 14B's shape and names
@pytest.mark.parametrize("family,profile,modules", [
    (_wan, "wan2.1-1.3b", {"attention": 120, "spatial": 180}),
    (_wan, "wan2.1-14b", {"attention": 160, "spatial": 240}),
    (_wan, "wan2.2-5b", {"attention": 120, "spatial": 180}),
    # original modules: fused ones count once; the zero img_attn_qkv entry diffusers needs is one more
    (_hunyuan, "hunyuanvideo", {"attention": 21, "spatial": 101, "attention (before)": 60, "spatial (before)": 140}),
])
def test_every_exported_key_names_an_original_weight_of_the_real_model(family, profile, modules):
    real_size_transformer, targets, comfy_lora, convert = family()
    model = real_size_transformer(profile)
    for name, pattern in targets.items():
        tensors, _ = comfy_lora(adapter_state(model, pattern), {"alpha": "1"})
        assert check_against_original(tensors, convert, model) == modules[name], name
    # the oracle refuses what is not the original model's: a diffusers name, a wrong width
    layer = next(n for n, _ in model.named_modules() if re.fullmatch(targets["attention"], n))
    weight = dict(model.named_parameters())[f"{layer}.weight"]
    with pytest.raises(AssertionError):
        check_against_original({f"{PREFIX}{layer}.lora_A.weight": torch.zeros(1, weight.shape[1]),
                                f"{PREFIX}{layer}.lora_B.weight": torch.zeros(weight.shape[0], 1)}, convert, model)
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    with pytest.raises(AssertionError):
        check_against_original({**tensors, key: torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 16)},
                               convert, model)


def test_the_single_stream_mlp_input_exports_exactly_on_linear1_and_diffusers_splits_it_back():
    """proj_mlp's adapter becomes a linear1 LoRA whose delta is proj_mlp's on the MLP rows and zero on
    q, k, v (exactly, at the tiny width); at the real 3072 width diffusers' own LoRA converter splits
    it back into proj_mlp's adapter (scaled) and zero lora_B on to_q/to_k/to_v: a no-op there."""
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers
    from pv_hunyuanvideo.lora_keys import comfy_lora

    g = torch.Generator().manual_seed(1)
    for width, rank in ((64, 8), (3072, 4)):
        a, b = torch.randn(rank, width, generator=g), torch.randn(4 * width, rank, generator=g)
        state = {"single_transformer_blocks.0.proj_mlp.lora_A.weight": a,
                 "single_transformer_blocks.0.proj_mlp.lora_B.weight": b}
        tensors, _ = comfy_lora(state, {"alpha": str(rank / 2)})  # scale 0.5
        la, lb = (tensors[f"{PREFIX}single_blocks.0.linear1.lora_{x}.weight"] for x in "AB")
        delta = lb @ la
        assert delta.shape == (7 * width, width)
        assert torch.equal(delta[:3 * width], torch.zeros(3 * width, width))
        assert torch.allclose(delta[3 * width:], 0.5 * b @ a, atol=1e-5)
        if width == 3072:
            back = _convert_hunyuan_video_lora_to_diffusers(dict(tensors))
            pre = "transformer.single_transformer_blocks.0."
            assert torch.equal(back[f"{pre}proj_mlp.lora_A.weight"], a)
            assert torch.allclose(back[f"{pre}proj_mlp.lora_B.weight"], 0.5 * b)
            for piece in ("to_q", "to_k", "to_v"):
                assert not back[f"{pre}attn.{piece}.lora_B.weight"].any()
            # the zero img_attn_qkv entry that makes diffusers take the file for an original one
            assert not back["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"].any()
