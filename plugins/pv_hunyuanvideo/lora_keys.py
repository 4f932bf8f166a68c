"""HunyuanVideo LoRA files in the original HunyuanVideo layout (Tencent's repo names, which
musubi-tuner and diffusion-pipe write and ComfyUI maps): `diffusion_model.double_blocks.N.
img_attn_qkv.lora_A.weight`. diffusers reads the same file through its own converter
(`_convert_hunyuan_video_lora_to_diffusers`, chosen when a key holds `img_attn_qkv`), which is how
the export is tested.

The original model fuses projections that diffusers keeps apart: a double-stream block's image
q, k, v are one `img_attn_qkv` (text: `txt_attn_qkv`), a single-stream block's q, k, v and MLP
input are one `linear1`. A fused LoRA has one lora_A shared by the pieces (diffusers' converter
copies it to each) and a lora_B stacked along the output in piece order. pv's adapter has its
own A per piece, so the fused A stacks them (rank = the sum of the pieces' ranks) and the fused B
is block-diagonal: piece j's rows hold its B in piece j's columns and zeros elsewhere, so every
piece gets back exactly B_j A_j, and a piece the adapter leaves alone gets zero rows, an exact
no-op. With pv's targets (backbone.py) that means `txt_attn_qkv` with zero q rows (the adapter
is on the text keys and values) and, under `spatial`, `linear1` with zero q, k, v rows and
proj_mlp's B on the MLP rows: the fused delta is proj_mlp's delta on its rows and zero elsewhere.
(diffusers' converter splits linear1 at the 3072-wide model's sizes, so it reads such a file of the
real model, as zero-B LoRAs on to_q/to_k/to_v and the adapter on proj_mlp; it cannot split a
linear1 of another width, the tiny model's. It also recognises the format by an img_attn_qkv key
alone, which pv's adapter never has: such a file gets one all-zero rank-1 img_attn_qkv entry.) Ranks then differ between modules, so the scale
alpha/rank is multiplied into lora_B and no `.alpha` is written (readers then apply scale 1)."""

from __future__ import annotations

import re

import torch

from pvcli.errors import PVError

PREFIX = "diffusion_model."
# diffusers module (after the block index) -> (original module, fused piece or None)
_DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0), "attn.to_k": ("img_attn_qkv", 1), "attn.to_v": ("img_attn_qkv", 2),
    "attn.add_q_proj": ("txt_attn_qkv", 0), "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", None), "attn.to_add_out": ("txt_attn_proj", None),
    "ff.net.0.proj": ("img_mlp.fc1", None), "ff.net.2": ("img_mlp.fc2", None),
    "ff_context.net.0.proj": ("txt_mlp.fc1", None), "ff_context.net.2": ("txt_mlp.fc2", None),
}
_SINGLE = {"attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1), "attn.to_v": ("linear1", 2),
           "proj_mlp": ("linear1", 3), "proj_out": ("linear2", None)}


def original_module(module: str) -> tuple[str, int | None]:
    """`transformer_blocks.3.attn.to_v` -> (`diffusion_model.double_blocks.3.img_attn_qkv`, 2)."""
    m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", module)
    table = None if m is None else (_DOUBLE if m.group(1) == "transformer_blocks" else _SINGLE)
    if table is None or m.group(3) not in table:
        raise PVError(f"no original HunyuanVideo name for adapted layer {module!r}", "export with --format diffusers")
    name, piece = table[m.group(3)]
    kind = "double_blocks" if m.group(1) == "transformer_blocks" else "single_blocks"
    return f"{PREFIX}{kind}.{m.group(2)}.{name}", piece


def comfy_lora(state: dict, meta: dict) -> tuple[dict, dict]:
    """(tensors, header) of a pv HunyuanVideo adapter (peft keys on the transformer) in the
    original HunyuanVideo keys, fused where the original model fuses."""
    alpha = float(meta["alpha"])
    pieces: dict[str, dict] = {}  # original module -> {piece: (A, B scaled)}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = state[key.replace(".lora_A.", ".lora_B.")]
        native, piece = original_module(module)
        pieces.setdefault(native, {})[piece] = (a.float(), b.float() * (alpha / a.shape[0]))
    tensors = {}
    for native, parts in pieces.items():
        if None in parts:
            a, b = parts[None]
        else:
            a, b = _fused(native, parts)
        tensors[f"{native}.lora_A.weight"] = a.contiguous()
        tensors[f"{native}.lora_B.weight"] = b.contiguous()
    marker = f"{PREFIX}double_blocks.0.img_attn_qkv"
    if pieces and not any(".img_attn_qkv." in k for k in tensors):
        # diffusers recognises an original-key HunyuanVideo LoRA by an img_attn_qkv key alone
        # (HunyuanVideoLoraLoaderMixin.lora_state_dict), and pv's adapter never touches the video
        # q, k, v: one all-zero rank-1 entry (an exact no-op in every reader) makes the file readable
        width = _width(pieces)
        tensors[f"{marker}.lora_A.weight"] = torch.zeros(1, width)
        tensors[f"{marker}.lora_B.weight"] = torch.zeros(3 * width, 1)
    header = {"ss_network_module": "networks.lora", "ss_base_model_version": meta.get("base_model_version", "hunyuan-video"),
              "modelspec.architecture": f"{meta.get('architecture', 'hunyuan-video')}/lora",
              "pv.lora_scale": "alpha/rank multiplied into lora_B; no .alpha keys (apply at scale 1)"}
    return tensors, header


def _width(pieces: dict) -> int:
    """The model width, from any adapted module: the output of the output projections (fc2,
    linear2, *_attn_proj) and the input of the others."""
    native, parts = next(iter(pieces.items()))
    a, b = next(iter(parts.values()))
    return b.shape[0] if native.endswith(("fc2", "linear2", "_attn_proj")) else a.shape[1]


def _fused(native: str, parts: dict) -> tuple:
    """Stacked A and block-diagonal B of a fused module's adapted pieces (absent pieces: zero rows)."""
    sizes = _piece_sizes(native, parts)
    rank = sum(a.shape[0] for a, _ in parts.values())
    a_all = torch.cat([parts[p][0] for p in sorted(parts)])
    b_all = torch.zeros(sum(sizes), rank, dtype=a_all.dtype)
    col = 0
    for p in sorted(parts):
        a, b = parts[p]
        row = sum(sizes[:p])
        b_all[row:row + sizes[p], col:col + a.shape[0]] = b
        col += a.shape[0]
    return a_all, b_all


def _piece_sizes(native: str, parts: dict) -> list[int]:
    """Output sizes of a fused module's pieces: q, k, v are the model width (every piece's input,
    lora_A's columns); linear1's fourth piece is the MLP input (4x the width unless adapted, when
    its B says)."""
    width = next(iter(parts.values()))[0].shape[1]
    sizes = [width, width, width]
    if native.endswith("linear1"):
        sizes.append(parts[3][1].shape[0] if 3 in parts else 4 * width)  # HunyuanVideo's mlp_ratio
    return sizes
