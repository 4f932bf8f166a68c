"""The HunyuanVideo backbone at real size on the meta device, for pv's memory trace (`pv tune
--dry-run`, `tune.memory`): the shipped transformer config (configs.py), diffusers' defaults for
AutoencoderKLHunyuanVideo (the real VAE's config), llava-llama-3-8b's LlamaModel and CLIP-L's text
model, around the real HunyuanVideoBackbone. No weights, no download."""

from __future__ import annotations

from pv_animatediff.backbone import quiet_libraries, store_frozen_weights

from pvcli.contracts import RealSizeModel
from pvcli.errors import PVError

MODELS = {"hunyuanvideo-community/HunyuanVideo": "hunyuanvideo"}
TEMPLATE_TOKENS = 95  # the prompt template's system part, encoded with the prompt and cropped after
CLIP_TOKENS = 77


def _model(bb, llama, clip, tokens: int, notes: list[str]) -> RealSizeModel:
    import torch

    meta = torch.device("meta")
    text_dim = bb.denoiser.config.text_embed_dim
    pooled_dim = bb.denoiser.config.pooled_projection_dim

    def encode():
        llama(input_ids=torch.zeros(1, tokens + TEMPLATE_TOKENS, dtype=torch.long, device=meta),
              output_hidden_states=True)
        clip(input_ids=torch.zeros(1, CLIP_TOKENS, dtype=torch.long, device=meta))

    def conditioning(batch: int):
        return {"prompt_embeds": torch.empty(batch, tokens, text_dim, dtype=bb.dtype, device=meta),
                "attention_mask": torch.empty(batch, tokens, dtype=bb.dtype, device=meta),
                "pooled_projections": torch.empty(batch, pooled_dim, dtype=bb.dtype, device=meta)}

    return RealSizeModel(backbone=bb, text_encoders={"text_encoder": llama, "text_encoder_2": clip}, encode=encode,
                         conditioning=conditioning, blocks=["transformer_blocks", "single_transformer_blocks"],
                         notes=notes)


def real_size(options: dict | None = None) -> RealSizeModel:
    """`hunyuanvideo`'s backbone options -> the model at real size on meta (bf16 transformer and text
    encoders, fp32 VAE, as make_hunyuanvideo runs them on CUDA)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from pvcli.settings import validate_options

    from .backbone import HunyuanFlowScheduler, HunyuanVideoBackbone, HunyuanVideoOptions
    from .configs import TRANSFORMERS

    quiet_libraries()
    opts = validate_options(HunyuanVideoOptions, options or {}, "backbone.options")
    key = MODELS.get(opts.model)
    if key is None:
        raise PVError(f"no shipped config for HunyuanVideo model {opts.model!r}: the memory trace knows "
                      f"{', '.join(MODELS)}", "use the hunyuanvideo profile's model, or give tune.memory a GiB number")
    with init_empty_weights():
        transformer = HunyuanVideoTransformer3DModel(**TRANSFORMERS[key])
        vae = AutoencoderKLHunyuanVideo()
        llama = LlamaModel(LlamaConfig(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8))
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, projection_dim=768))
    bb = store_frozen_weights(HunyuanVideoBackbone(
        "hunyuanvideo", transformer, vae, llama, None, clip, None, HunyuanFlowScheduler(), {"base_model": opts.model},
        "meta", torch.bfloat16, {}, max_sequence_length=opts.max_sequence_length), opts.weights)
    return _model(bb, llama, clip, opts.max_sequence_length, [])


def tiny_real_size(options: dict | None = None) -> RealSizeModel:
    """`hunyuanvideo-tiny` on meta: its in-process configs, as make_tiny_hunyuanvideo builds them."""
    import torch

    from pvcli.settings import validate_options

    from .backbone import HunyuanVideoBackbone, TinyHunyuanOptions, build_tiny_components

    opts = validate_options(TinyHunyuanOptions, options or {}, "backbone.options")
    c = build_tiny_components(opts.seed, opts.shift)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        c[name] = c[name].to(torch.device("meta"))
    dtype = torch.float32 if opts.dtype == "float32" else torch.bfloat16
    bb = store_frozen_weights(HunyuanVideoBackbone(
        "hunyuanvideo-tiny", c["transformer"], c["vae"], c["text_encoder"], None, c["text_encoder_2"], None,
        c["scheduler"], {"base_model": "tiny-hunyuanvideo"}, "meta", dtype, c["prompt_template"], max_sequence_length=32,
        random_weights=True), opts.weights)
    return _model(bb, bb.text_encoder, bb.text_encoder_2, 32, [])
