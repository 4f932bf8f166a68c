"""Write diffusers SD components as an original-layout (LDM) single-file checkpoint, the way
community checkpoints come: the test's own converter (the inverse of what `from_single_file` reads),
so the single-file path is exercised offline on a tiny model."""

from __future__ import annotations

RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
          ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def unet_to_ldm(unet) -> dict:
    cfg = unet.config
    n, layers = len(cfg.block_out_channels), cfg.layers_per_block
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
                "mid_block.attentions.0.": "middle_block.1.", "mid_block.resnets.0.": "middle_block.0.",
                "mid_block.resnets.1.": "middle_block.2."}
    for i in range(n):
        down_attn = cfg.down_block_types[i].startswith("CrossAttn")
        up_attn = cfg.up_block_types[i].startswith("CrossAttn")
        for j in range(layers):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.0."
            if down_attn:
                prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(layers + 1) * i + j + 1}.1."
        for j in range(layers + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(layers + 1) * i + j}.0."
            if up_attn:
                prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(layers + 1) * i + j}.1."
        if i < n - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op."
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(layers + 1) * i + layers}.{2 if up_attn else 1}."
    out = {}
    for key, value in unet.state_dict().items():
        old, new, rest = _prefix(key, prefixes)
        if ".resnets." in old:
            for a, b in RESNET:
                if rest.startswith(b + "."):
                    rest = a + rest[len(b):]
        out["model.diffusion_model." + new + rest] = value
    return out


def vae_to_ldm(vae) -> dict:
    n = len(vae.config.block_out_channels)
    layers = vae.config.layers_per_block
    prefixes = {"encoder.mid_block.attentions.0.": "encoder.mid.attn_1.", "decoder.mid_block.attentions.0.": "decoder.mid.attn_1.",
                "encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        for i in range(2):
            prefixes[f"{part}.mid_block.resnets.{i}."] = f"{part}.mid.block_{i + 1}."
    for i in range(n):
        for j in range(layers):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        for j in range(layers + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        if i < n - 1:
            prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
            prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    out = {}
    for key, value in vae.state_dict().items():
        new = "".join(_prefix(key, prefixes)[1:]).replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in new:
            for a, b in VAE_ATTN:
                new = new.replace(f".attn_1.{b}", f".attn_1.{a}")
            if new.endswith("weight") and value.dim() == 2:
                value = value[:, :, None, None]  # the original VAE attention is 1x1 convolutions
        out["first_stage_model." + new] = value
    return out


def text_encoder_to_ldm(text_encoder) -> dict:
    # original checkpoints hold the Hugging Face CLIP keys under `text_model.` (newer transformers flatten it)
    return {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in text_encoder.state_dict().items()}


def _prefix(key: str, prefixes: dict) -> tuple[str, str, str]:
    """(the diffusers prefix matched, its original name, the rest of the key)."""
    for old in sorted(prefixes, key=len, reverse=True):
        if key.startswith(old):
            return old, prefixes[old], key[len(old):]
    return "", "", key
