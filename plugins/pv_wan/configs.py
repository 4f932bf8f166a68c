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


# The VAEs' shapes where they differ from diffusers' AutoencoderKLWan defaults (which are Wan 2.1's):
# Wan 2.2 TI2V-5B's 16x VAE with 48 latent channels (its vae/config.json; latents_mean/std left out:
# a random-weight build for measuring does not need them)
VAES = {
    "wan2.2-5b": dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                      in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                      is_residual=True, temperal_downsample=[False, True, True]),
}


def real_size_transformer(profile: str):
    """The profile's transformer with no weights (meta device): its real layers and sizes."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        return WanTransformer3DModel(**TRANSFORMERS[profile])


# Wan 2.1 VACE (Wan-AI/Wan2.1-VACE-1.3B-diffusers, -14B-diffusers): the T2V transformer's shape plus a
# control branch of one VACE block per listed base block (the original VACE configs: every 2nd of 30
# blocks, every 5th of 40), fed 96 channels (2 x 16 latent channels + the 8x8-folded mask)
VACE_LAYERS = {"wan2.1-1.3b": list(range(0, 30, 2)), "wan2.1-14b": list(range(0, 40, 5))}


def real_size_vace(profile: str):
    """The profile's VACE transformer with no weights (meta device): base + control branch."""
    from accelerate import init_empty_weights
    from diffusers import WanVACETransformer3DModel

    with init_empty_weights():
        return WanVACETransformer3DModel(**TRANSFORMERS[profile], vace_layers=VACE_LAYERS[profile], vace_in_channels=96)
