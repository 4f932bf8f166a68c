"""Wan's causal VAE decoder under gradient: per-frame checkpointing and windowed decoding, which
diffusers' AutoencoderKLWan lacks (0.42.1: `_supports_gradient_checkpointing = False`).

The decoder runs one latent frame at a time and carries a feature cache between frames: every
causal convolution keeps the last frames of its input for the next frame (diffusers' `feat_cache`
/ `feat_idx`, reset by `clear_cache`). Here each latent frame's pass is a function of (that latent
frame, the cache it receives) returning (its pixels, the cache it leaves); the cache is copied
into each call, never mutated, so that

- checkpointed, backward keeps only those boundaries and recomputes one frame's activations at a
  time, seeing what the first pass saw: the gradients are the unchecked decoder's;
- windowed (`crop`), the input convolution and the mid block (its spatial self-attention is
  global) run on the whole latent frame, which is cheap at latent resolution, and only the window
  goes on through the up blocks, where the memory is. Wan's norms are per pixel (RMS over
  channels), so the window's pixels are the whole frame's wherever the up blocks' receptive field
  stays inside it (WINDOW_REACH latent pixels from its edge).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


# latent pixels the up blocks and head see beyond a pixel (3x3 convolutions: num_res_blocks + 1
# resnets of 2 per level, halving in latent pixels at each upsampling): Wan 2.1 and 2.2's decoders
# (num_res_blocks=2, 3 upsamplings) reach 6 + 3 + 1.5 + 0.75 + 1/8 < 12
def window_reach(vae) -> int:
    convs = 2 * (vae.config.num_res_blocks + 1)
    levels = len(vae.config.dim_mult)
    return int(sum(convs / 2**k for k in range(levels)) + 1) + 1


def _cached_conv(conv, x, cache, idx):
    """A causal convolution with the cache protocol of diffusers' WanDecoder3d (the last 2 input frames kept)."""
    i = idx[0]
    keep = x[:, :, -2:].clone()
    if keep.shape[2] < 2 and cache[i] is not None:
        keep = torch.cat([cache[i][:, :, -1:].to(keep.device), keep], dim=2)
    out = conv(x, cache[i])
    cache[i] = keep
    idx[0] += 1
    return out


def _frame(decoder, first: bool, crop):
    def run(x, cache):
        cache, idx = list(cache), [0]
        if crop is None:
            return decoder(x, feat_cache=cache, feat_idx=idx, first_chunk=first), cache
        y0, y1, x0, x1 = crop
        x = _cached_conv(decoder.conv_in, x, cache, idx)
        x = decoder.mid_block(x, feat_cache=cache, feat_idx=idx)[..., y0:y1, x0:x1]
        for block in decoder.up_blocks:
            x = block(x, feat_cache=cache, feat_idx=idx, first_chunk=first)
        x = _cached_conv(decoder.conv_out, decoder.nonlinearity(decoder.norm_out(x)), cache, idx)
        return x, cache

    return run


def decode(vae, z: torch.Tensor, checkpointed: bool = False, crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """`vae.decode(z, return_dict=False)[0]` (no tiling, no slicing): (B, 3, F, H, W) in [-1, 1];
    `checkpointed`: each latent frame's pass checkpointed; `crop` = (y0, y1, x0, x1) in latent pixels:
    only that window's pixels, decoded through the whole frame's mid block."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    x = vae.post_quant_conv(z)
    cache = [None] * vae._cached_conv_counts["decoder"]
    frames = []
    for i in range(x.shape[2]):
        run = _frame(vae.decoder, i == 0, crop)
        if checkpointed and torch.is_grad_enabled():
            out, cache = checkpoint(run, x[:, :, i:i + 1], cache, use_reentrant=False)
        else:
            out, cache = run(x[:, :, i:i + 1], cache)
        frames.append(out)
    out = torch.cat(frames, 2)
    if vae.config.patch_size is not None:
        out = unpatchify(out, patch_size=vae.config.patch_size)
    return out.clamp(-1.0, 1.0)
