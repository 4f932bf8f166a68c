"""HunyuanVideo at real size without weights: the memory of one tuning step, estimated from CPU
measurements the way bench/wan_size.py does it for Wan (its saved-activation counter and output
layout; python bench/hunyuan_size.py, a few minutes and ~8 GB RAM on 2 cores).

The 13B transformer does not fit a CPU measurement in fp32 (51 GB), and it need not: its blocks
are repeated, so the bytes autograd keeps are measured on transformers of the real width (24 heads
of 128, the real embedders and token refiner) with 1 or 2 double-stream and 1 or 2 single-stream
blocks, and the per-block costs scale to the real 20 + 40 blocks. Per video token, at two token
counts (the growth between them says whether it is linear in tokens), with and without gradient
checkpointing; the adapter on the profile's target set at rank 16. The real VAE (diffusers'
defaults for AutoencoderKLHunyuanVideo are its config) is measured per decoded latent frame at 64
and 128 px: its GroupNorms span the clip, so the loss decodes every frame of the clip. FaceNet per
crop. Scaled to the profile's tuning step (embedded guidance: one transformer pass, no CFG batch)
in bf16 (transformer, text encoders) and fp32 (VAE, face network, adapter state with AdamW). An
estimate, not a GPU measurement: no allocator workspace, no fragmentation."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from wan_size import _mb, measured, sizes_main, with_weights  # noqa: E402  (the same saved-activation counter and command line)

TEXT_TOKENS = 256  # max_sequence_length of the LLaMA states


def text_encoder_params() -> dict:
    """llava-llama-3-8b's LlamaModel (text_encoder) and CLIP ViT-L/14's text model (text_encoder_2),
    counted on the meta device from their configs."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    with init_empty_weights():
        llama = LlamaModel(LlamaConfig(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8))
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, projection_dim=768))
    return {"llama_params_m": round(sum(p.numel() for p in llama.parameters()) / 1e6, 1),
            "clip_params_m": round(sum(p.numel() for p in clip.parameters()) / 1e6, 1)}


def measure(targets: str, rank: int = 16) -> dict:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from peft import LoraConfig
    from pv_hunyuanvideo.backbone import TARGETS
    from pv_hunyuanvideo.configs import TRANSFORMERS, real_size_transformer

    from pvcli.plugins import build_plugin_manager

    torch.manual_seed(0)
    real = real_size_transformer()
    out: dict = {"targets": targets, "rank": rank,
                 "transformer_params_m": round(sum(p.numel() for p in real.parameters()) / 1e6, 1)}
    real.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS[targets]))
    out["adapter_params_m"] = round(sum(p.numel() for n, p in real.named_parameters() if "lora_" in n) / 1e6, 2)
    real = None
    cfg = TRANSFORMERS["hunyuanvideo"]
    mb: dict = {}
    for double, single in ((1, 1), (2, 1), (1, 2)):
        start = time.perf_counter()
        model = HunyuanVideoTransformer3DModel(**{**cfg, "num_layers": double, "num_single_layers": single})
        model.eval().requires_grad_(False)
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS[targets]))
        out[f"build_s {double}+{single}"] = round(time.perf_counter() - start, 1)
        text = torch.randn(1, TEXT_TOKENS, cfg["text_embed_dim"])
        mask = torch.ones(1, TEXT_TOKENS)
        pooled = torch.randn(1, cfg["pooled_projection_dim"])
        for ckpt in (False, True):
            if ckpt:
                model.enable_gradient_checkpointing()
            model.train()  # checkpointing acts in training mode
            for frames, side in ((1, 16), (2, 16)):  # latent frames x latent side: 64 and 128 video tokens
                lat = torch.randn(1, 16, frames, side, side)
                tokens = frames * (side // 2) ** 2

                def fwd(lat=lat, model=model, text=text, mask=mask, pooled=pooled):
                    return model(hidden_states=lat, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                                 encoder_attention_mask=mask, pooled_projections=pooled,
                                 guidance=torch.tensor([6000.0]), return_dict=False)[0]
                mb[("transformer", double, single, tokens, ckpt)] = _mb(fwd)
        model = None
    vae = AutoencoderKLHunyuanVideo().eval().requires_grad_(False)  # diffusers' defaults are the real VAE's config
    out["vae_params_m"] = round(sum(p.numel() for p in vae.parameters()) / 1e6, 1)
    for ckpt in (False, True):  # pv enables the VAE's checkpointing with the transformer's
        if ckpt:
            vae.enable_gradient_checkpointing()
        vae.train()
        for side in (8, 16):  # 64 and 128 px
            for lat_frames in (1, 2):  # 1 and 5 pixel frames
                lat = torch.randn(1, 16, lat_frames, side, side, requires_grad=True)
                mb[("vae", side * 8, lat_frames, ckpt)] = _mb(lambda lat=lat: vae.decode(lat, return_dict=False)[0])
    vae = None
    enc = build_plugin_manager().create("encoders", "facenet", device="cpu")
    crops = torch.rand(4, 3, enc.input_size, enc.input_size, requires_grad=True)
    out["face_network_mb_per_crop"] = round(_mb(lambda: enc.embed(crops)) / 4, 1)
    out.update(text_encoder_params())
    out["measured_mb_fp32"] = {" ".join(str(x) for x in k): round(v, 1) for k, v in mb.items()}
    return out


def estimate(m: dict, frames: int, height: int, width: int, grad_steps: int, blocks=(20, 40)) -> dict:
    """Scale the measured bytes to one tuning step: per block and per token for the transformer,
    per latent frame and pixel area for the VAE decoder (the whole clip)."""
    mb = measured(m)
    latent_frames = (frames - 1) // 4 + 1
    tokens = latent_frames * (height // 16) * (width // 16)  # VAE 8x, patch 2x2
    est = {"tokens": tokens, "decoded_frames": frames}
    for ckpt in (False, True):
        def total(d, s, n, ckpt=ckpt):
            return mb[("transformer", d, s, n, ckpt)]
        per_double = [total(2, 1, n) - total(1, 1, n) for n in (64, 128)]
        per_single = [total(1, 2, n) - total(1, 1, n) for n in (64, 128)]
        rest = [total(1, 1, n) - per_double[i] - per_single[i] for i, n in enumerate((64, 128))]
        full = [rest[i] + blocks[0] * per_double[i] + blocks[1] * per_single[i] for i in range(2)]
        growth = math.log(full[1] / full[0], 2)
        # linear in tokens through the two measured points (attention over a few thousand tokens at
        # these sizes is still dominated by the per-token projections; flash/SDPA keep no n^2 map)
        per_token = (full[1] - full[0]) / 64
        transformer_gb = (full[0] + per_token * (tokens - 64)) * grad_steps / 2 / 1024  # bf16: half the fp32 bytes
        v64 = mb[("vae", 64, 2, ckpt)] - mb[("vae", 64, 1, ckpt)]
        v128 = mb[("vae", 128, 2, ckpt)] - mb[("vae", 128, 1, ckpt)]
        ev = math.log(v128 / v64, 4)
        scale = ((height * width) / (128 * 128)) ** ev
        vae_gb = (mb[("vae", 128, 1, ckpt)] + v128 * (latent_frames - 1)) * scale / 1024  # fp32
        est["with_checkpointing" if ckpt else "without_checkpointing"] = {
            "transformer_growth_exponent": round(growth, 2), "transformer_activations_gb": round(transformer_gb, 2),
            "vae_decoder_growth_exponent": round(ev, 2), "vae_decoder_activations_gb": round(vae_gb, 2),
            "face_network_gb": round(4 * m["face_network_mb_per_crop"] / 1024, 2)}
    return with_weights(est, m, m["llama_params_m"] + m["clip_params_m"])


def main() -> None:
    sizes_main("hunyuanvideo", "hunyuan_size.json", ["17x320x512", "9x320x512", "5x320x512", "5x256x448", "5x256x256"],
               lambda profile, s: measure(s.adapter.targets),
               lambda m, f, h, w, s: estimate(m, f, h, w, s.tune.grad_steps),
               text_encoder="LLaMA + CLIP text encoders", cfg=False)  # embedded guidance: no CFG batch


if __name__ == "__main__":
    main()
