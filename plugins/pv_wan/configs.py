"""The real Wan 2.1 transformers' configs (diffusers' WanTransformer3DModel arguments of
Wan-AI/Wan2.1-T2V-1.3B-Diffusers and -14B-Diffusers), for real-size measurements without weights:
a model built from them on the meta device has the real layers, names and parameter counts
(1419.0M and 14288.5M)."""

from __future__ import annotations

_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
               freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
TRANSFORMERS = {
    "wan2.1-1.3b": dict(_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "wan2.1-14b": dict(_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
    # Wan 2.2: TI2V-5B (48 latent channels from its 16x VAE); A14B's two experts each have the 14B shape
    "wan2.2-5b": dict(_COMMON, num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
    "wan2.2-a14b": dict(_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40),
}


def real_size_transformer(profile: str):
    """The profile's transformer with no weights (meta device): its real layers and sizes."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        return WanTransformer3DModel(**TRANSFORMERS[profile])
