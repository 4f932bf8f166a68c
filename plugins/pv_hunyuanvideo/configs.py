"""The real HunyuanVideo transformer's config (diffusers' HunyuanVideoTransformer3DModel arguments
of hunyuanvideo-community/HunyuanVideo: 24 heads of 128 = 3072 wide, 20 double-stream and 40
single-stream blocks, 2 token-refiner layers, 2x2 patches, 16 latent channels, guidance embedding,
LLaMA states of 4096 and a CLIP-L pooled vector of 768; these are also diffusers' defaults for the
class), for real-size measurements without weights: a model built from it on the meta device has
the real layers, names and parameter count (12821.0M)."""

from __future__ import annotations

TRANSFORMERS = {
    "hunyuanvideo": dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                         num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                         qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                         rope_theta=256.0, rope_axes_dim=(16, 56, 56)),
}


def real_size_transformer(profile: str = "hunyuanvideo"):
    """The profile's transformer with no weights (meta device): its real layers and sizes."""
    from accelerate import init_empty_weights
    from diffusers import HunyuanVideoTransformer3DModel

    with init_empty_weights():
        return HunyuanVideoTransformer3DModel(**TRANSFORMERS[profile])
