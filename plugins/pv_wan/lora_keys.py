"""Wan LoRA files in the layout ComfyUI's native Wan loader reads (also the original Wan repo's
and most Wan trainers' key names): `diffusion_model.blocks.N.cross_attn.q.lora_A.weight`, with a
`.alpha` per module. diffusers reads the same file through its own converter
(`_convert_non_diffusers_wan_lora_to_diffusers`), which is how the export is tested.

diffusers names -> native names: attn1 -> self_attn, attn2 -> cross_attn, to_q/to_k/to_v/to_out.0
-> q/k/v/o, ffn.net.0.proj -> ffn.0, ffn.net.2 -> ffn.2."""

from __future__ import annotations

import re

PREFIX = "diffusion_model."
_RENAMES = [
    (r"\.attn1\.", ".self_attn."), (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q$", ".q"), (r"\.to_k$", ".k"), (r"\.to_v$", ".v"), (r"\.to_out\.0$", ".o"),
    (r"\.ffn\.net\.0\.proj$", ".ffn.0"), (r"\.ffn\.net\.2$", ".ffn.2"),
]


def native_module(module: str) -> str:
    """`blocks.3.attn2.to_q` -> `diffusion_model.blocks.3.cross_attn.q`."""
    for pattern, repl in _RENAMES:
        module = re.sub(pattern, repl, module)
    return PREFIX + module


def comfy_lora(state: dict, meta: dict) -> tuple[dict, dict]:
    """(tensors, header) of a pv Wan adapter (peft keys on the transformer) in native Wan keys."""
    import torch

    alpha = torch.tensor(float(meta["alpha"]))
    tensors = {}
    for key, value in state.items():
        module, _, tail = key.partition(".lora_")  # "blocks.0.attn2.to_q", "A.weight"
        native = native_module(module)
        tensors[f"{native}.lora_{tail}"] = value.contiguous()
        tensors[f"{native}.alpha"] = alpha.clone()
    header = {"ss_network_module": "networks.lora_wan",
              "ss_base_model_version": meta.get("base_model_version", "wan2.1"),
              "modelspec.architecture": f"{meta.get('architecture', 'wan2.1-t2v')}/lora"}
    return tensors, header
