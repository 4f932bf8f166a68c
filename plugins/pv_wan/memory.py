"""The Wan backbone at real size on the meta device, for pv's memory trace (`pv tune --dry-run`,
`tune.memory`): the shipped configs (configs.py) of the model `backbone.options.model` names, the
real WanBackbone around them (its predict_noise, decode_frames and checkpointing are what the trace
runs), UMT5-XXL's encoder for prompt encoding. No weights, no download."""

from __future__ import annotations

from pv_animatediff.backbone import quiet_libraries

from pvcli.contracts import RealSizeModel
from pvcli.engine.memtrace import store_weights
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


def weights_option(options: dict | None) -> tuple[dict, str]:
    """(the options without `weights`, its value): backbone.options.weights, bf16 or fp8."""
    options = dict(options or {})
    weights = str(options.pop("weights", "bf16"))
    if weights not in ("bf16", "fp8"):
        raise PVError(f"backbone.options.weights must be bf16 or fp8, got {weights!r}")
    return options, weights


PER_FRAME_NOTE = ("decoder checkpointing traced per latent frame, as checkpointing runs it (this branch's "
                  "Wan backbone has no decoder checkpointing of its own yet)")


def _checkpoint_per_frame(vae) -> None:
    """The Wan VAE's decode with each latent frame's decoder pass checkpointed (its feature cache
    passed in and out): what decoder checkpointing keeps, for the trace only."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
    from diffusers.models.autoencoders.vae import DecoderOutput
    from torch.utils.checkpoint import checkpoint

    def frame(first: bool):
        def run(x, cache):
            cache = list(cache)
            return vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first), cache
        return run

    def _decode(z, return_dict=True):
        x = vae.post_quant_conv(z)
        cache, outs = [None] * vae._cached_conv_counts["decoder"], []
        for i in range(x.shape[2]):
            out, cache = checkpoint(frame(i == 0), x[:, :, i:i + 1], cache, use_reentrant=False)
            outs.append(out)
        out = torch.cat(outs, 2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return DecoderOutput(sample=out.clamp(-1.0, 1.0))

    vae._decode = _decode


def _model(backbone, text_encoder, tokens: int, experts: dict, notes: list[str]) -> RealSizeModel:
    import torch

    from pvcli.contracts import Backbone

    meta = torch.device("meta")
    if type(backbone).enable_decoder_checkpointing is Backbone.enable_decoder_checkpointing:
        def per_frame():
            _checkpoint_per_frame(backbone.vae)
            notes.append(PER_FRAME_NOTE)
        backbone.enable_decoder_checkpointing = per_frame

    def encode():
        ids = torch.zeros(1, tokens, dtype=torch.long, device=meta)
        text_encoder(input_ids=ids)  # no padding: every token counts

    def conditioning(batch: int):
        return torch.empty(batch, tokens, backbone.denoiser.config.text_dim, dtype=backbone.dtype, device=meta)

    return RealSizeModel(backbone=backbone, text_encoders={"text_encoder": text_encoder}, encode=encode,
                         conditioning=conditioning, blocks=["blocks"], experts=experts, notes=notes)


def real_size(options: dict | None = None) -> RealSizeModel:
    """`wan`'s backbone options -> the model at real size on meta (bf16 transformer and UMT5, fp32 VAE)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from .backbone import WanBackbone, WanOptions
    from .configs import TRANSFORMERS, VAES

    quiet_libraries()
    options, weights = weights_option(options)
    from pvcli.settings import validate_options

    opts = validate_options(WanOptions, options, "backbone.options")
    key = MODELS.get(opts.model)
    if key is None:
        raise PVError(f"no shipped config for Wan model {opts.model!r}: the memory trace knows {', '.join(MODELS)}",
                      "use a profile with one of those, or leave tune.memory to a GiB number you checked on the card")
    with init_empty_weights():
        transformer = WanTransformer3DModel(**TRANSFORMERS[key])
        second = WanTransformer3DModel(**TRANSFORMERS[key]) if key == "wan2.2-a14b" else None
        vae = AutoencoderKLWan(**VAES.get(key, {}))
    text_encoder = umt5_xxl().to(torch.bfloat16)
    experts = {"transformer_2": second, "boundary_ratio": BOUNDARY} if second is not None else {}
    bb = WanBackbone("wan", transformer, vae, text_encoder, None, FlowMatchEulerDiscreteScheduler(), {"base_model": opts.model},
                     "meta", torch.bfloat16, max_sequence_length=TEXT_TOKENS, expand_timesteps=key == "wan2.2-5b",
                     **experts)
    for t in (bb.denoiser, bb.high_noise):  # after the backbone's own cast, as the factory does
        if t is not None:
            store_weights(t, weights)
    return _model(bb, text_encoder, TEXT_TOKENS, {"high_noise": bb.high_noise} if second is not None else {}, [])


def tiny_real_size(options: dict | None = None) -> RealSizeModel:
    """`wan-tiny` on meta: its in-process configs, as make_tiny_wan builds them."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .backbone import TinyWanOptions, WanBackbone, build_tiny_components

    options, weights = weights_option(options)
    from pvcli.settings import validate_options

    opts = validate_options(TinyWanOptions, options, "backbone.options")
    c = build_tiny_components(opts.seed, opts.shift, opts.experts)
    meta = torch.device("meta")
    for name in ("transformer", "transformer_2", "vae", "text_encoder"):
        if name in c:
            c[name] = c[name].to(meta)
    dtype = torch.float32 if opts.dtype == "float32" else torch.bfloat16
    experts = {"transformer_2": c["transformer_2"], "boundary_ratio": opts.boundary_ratio} if opts.experts == 2 else {}
    bb = WanBackbone("wan-tiny", c["transformer"], c["vae"], c["text_encoder"], None, FlowMatchEulerDiscreteScheduler(),
                     {"base_model": "tiny-wan"}, "meta", dtype, max_sequence_length=32, random_weights=True, **experts)
    for t in (bb.denoiser, bb.high_noise):
        if t is not None:
            store_weights(t, weights)
    return _model(bb, c["text_encoder"], 32, {"high_noise": bb.high_noise} if experts else {}, [])
