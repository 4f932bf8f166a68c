"""The Wan backbone at real size on the meta device, for pv's memory trace (`pv tune --dry-run`,
`tune.memory`): the shipped configs (configs.py) of the model `backbone.options.model` names, the
real WanBackbone around them (its predict_noise, decode_frames and checkpointing are what the trace
runs), UMT5-XXL's encoder for prompt encoding. No weights, no download."""

from __future__ import annotations

from pv_animatediff.backbone import quiet_libraries, store_frozen_weights

from pvcli.contracts import RealSizeModel
from pvcli.errors import PVError

# the hub ids pv's profiles name -> configs.py's keys
MODELS = {"Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan2.1-1.3b", "Wan-AI/Wan2.1-T2V-14B-Diffusers": "wan2.1-14b",
          "Wan-AI/Wan2.2-TI2V-5B-Diffusers": "wan2.2-5b", "Wan-AI/Wan2.2-T2V-A14B-Diffusers": "wan2.2-a14b"}
TEXT_TOKENS = 512  # WanPipeline's max_sequence_length
BOUNDARY = 0.875  # Wan 2.2 A14B's boundary_ratio


def umt5_xxl():
    """UMT5-XXL's encoder (what Wan's pipelines load as text_encoder), meta."""
    from accelerate import init_empty_weights
    from transformers import UMT5Config, UMT5EncoderModel

    with init_empty_weights():
        model = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                            num_heads=64, feed_forward_proj="gated-gelu"))
    model.encoder.embed_tokens = model.shared  # one tensor in the checkpoint
    return model


def _model(backbone, tokens: int) -> RealSizeModel:
    """The trace's view of a meta WanBackbone: UMT5 at `tokens`, the blocks, the resident idle expert."""
    import torch

    meta = torch.device("meta")

    def encode():
        ids = torch.zeros(1, tokens, dtype=torch.long, device=meta)
        backbone.text_encoder(input_ids=ids)  # no padding: every token counts

    def conditioning(batch: int):
        return torch.empty(batch, tokens, backbone.denoiser.config.text_dim, dtype=backbone.dtype, device=meta)

    resident = backbone.high_noise is not None and not backbone.swap_experts
    return RealSizeModel(backbone=backbone, text_encoders={"text_encoder": backbone.text_encoder}, encode=encode,
                         conditioning=conditioning, blocks=["blocks"],
                         experts={"high_noise": backbone.high_noise} if resident else {},
                         notes=["the idle expert waits on the host (swap_experts)"] if backbone.swap_experts and
                         backbone.high_noise is not None else [])


def real_size(options: dict | None = None) -> RealSizeModel:
    """`wan`'s backbone options -> the model at real size on meta, built as make_wan builds it on CUDA
    (bf16 transformer(s) and UMT5, fp32 VAE, backbone.options.weights applied); with swap_experts
    (A14B's default) the idle expert waits on the host and is left out of the trace."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from pvcli.settings import validate_options

    from .backbone import EXPERTS, WanBackbone, WanOptions
    from .configs import TRANSFORMERS, VAES

    quiet_libraries()
    opts = validate_options(WanOptions, options or {}, "backbone.options")
    key = MODELS.get(opts.model)
    if key is None:
        raise PVError(f"no shipped config for Wan model {opts.model!r}: the memory trace knows {', '.join(MODELS)}",
                      "use a profile with one of those, or leave tune.memory to a GiB number you checked on the card")
    with init_empty_weights():
        transformer = WanTransformer3DModel(**TRANSFORMERS[key])
        second = WanTransformer3DModel(**TRANSFORMERS[key]) if key == "wan2.2-a14b" else None
        vae = AutoencoderKLWan(**VAES.get(key, {}))
    if len(vae.config.latents_mean) != vae.config.z_dim:  # configs.py leaves the 5B's statistics out: sizes only
        vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    experts = {"transformer_2": second, "boundary_ratio": BOUNDARY} if second is not None else {}
    bb = store_frozen_weights(WanBackbone(
        "wan", transformer, vae, umt5_xxl(), None, FlowMatchEulerDiscreteScheduler(), {"base_model": opts.model}, "meta",
        torch.bfloat16, max_sequence_length=TEXT_TOKENS, expand_timesteps=key == "wan2.2-5b",
        swap_experts=opts.swap_experts, adapter_experts=opts.adapter_experts, **experts), opts.weights, EXPERTS)
    return _model(bb, TEXT_TOKENS)


def tiny_real_size(options: dict | None = None) -> RealSizeModel:
    """`wan-tiny` on meta: its in-process configs, as make_tiny_wan builds them."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pvcli.settings import validate_options

    from .backbone import EXPERTS, TinyWanOptions, WanBackbone, build_tiny_components

    opts = validate_options(TinyWanOptions, options or {}, "backbone.options")
    c = build_tiny_components(opts.seed, opts.shift, opts.experts)
    meta = torch.device("meta")
    for name in ("transformer", "transformer_2", "vae", "text_encoder"):
        if name in c:
            c[name] = c[name].to(meta)
    dtype = torch.float32 if opts.dtype == "float32" else torch.bfloat16
    experts = {"transformer_2": c["transformer_2"], "boundary_ratio": opts.boundary_ratio} if opts.experts == 2 else {}
    bb = store_frozen_weights(WanBackbone(
        "wan-tiny", c["transformer"], c["vae"], c["text_encoder"], None, FlowMatchEulerDiscreteScheduler(),
        {"base_model": "tiny-wan"}, "meta", dtype, max_sequence_length=32, random_weights=True,
        swap_experts=opts.swap_experts, adapter_experts=opts.adapter_experts, **experts), opts.weights, EXPERTS)
    return _model(bb, 32)
