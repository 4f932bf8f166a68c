"""Wan 2.1 at real size without weights: the memory of one tuning step, estimated from CPU
measurements the way BENCHMARKS.md does it for AnimateDiff.

The real Wan2.1-T2V-1.3B transformer and the real Wan VAE are built from their configs with
random weights (fp32, CPU). The bytes autograd keeps for backward (pv.engine.memory) are measured
per component at small sizes, with and without gradient checkpointing:
- the transformer with the identity adapter (the profile's target set, rank 16), per video token,
  at two token counts (the growth between them says whether it is linear in tokens);
- the VAE decoder, per decoded pixel frame, at 64 and 128 px (scaled to the tuning size by the
  measured growth);
- the face network (FaceNet), per crop.
They are then scaled to the profile's tuning step (wan2.1-1.3b: 17 frames = 5 latent frames at
320x576, CFG, 1 grad step, 4 supervised frames; the causal decoder decodes every frame up to the
last supervised one, so up to all 17) in bf16 (transformer, text encoder) and fp32 (VAE, face
network, adapter state). An estimate, not a GPU measurement: no allocator workspace, no
fragmentation. Run: python bench/wan_size.py [--profile wan2.1-1.3b] (about 5 GB RAM, minutes)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

GB = 2**30


def _mb(fn) -> float:
    from pvcli.engine.memory import saved_activations

    with saved_activations() as saved:
        fn()
    return saved["bytes"] / 2**20


def text_encoder_params(profile: str) -> int:
    """UMT5-XXL's encoder (what Wan's pipelines load as text_encoder), counted on the meta device."""
    from accelerate import init_empty_weights
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     feed_forward_proj="gated-gelu")
    with init_empty_weights():
        model = UMT5EncoderModel(cfg)
    # the token embedding is one tensor in the checkpoint (shared = encoder.embed_tokens), two on meta
    return sum(p.numel() for n, p in model.named_parameters() if n != "encoder.embed_tokens.weight")


def measure(profile: str, targets: str, rank: int = 16) -> dict:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from peft import LoraConfig
    from pv_wan.backbone import TARGETS
    from pv_wan.configs import TRANSFORMERS, VAES

    from pvcli.plugins import build_plugin_manager

    torch.manual_seed(0)
    cfg = TRANSFORMERS[profile]
    # fp32 where it fits this machine's RAM (its activations are halved for bf16), else bf16 as is
    big = cfg["num_attention_heads"] * cfg["attention_head_dim"] > 1536
    dtype = torch.bfloat16 if big else torch.float32
    out: dict = {"profile": profile, "targets": targets, "rank": rank, "transformer_measured_in": str(dtype)[6:]}
    start = time.perf_counter()
    transformer = WanTransformer3DModel(**cfg).to(dtype).eval().requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS[targets],
                                       init_lora_weights="gaussian"))
    out["build_s"] = round(time.perf_counter() - start, 1)
    out["transformer_params_m"] = round(sum(p.numel() for n, p in transformer.named_parameters()
                                            if "lora_" not in n) / 1e6, 1)
    out["adapter_params_m"] = round(sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n) / 1e6, 2)
    text = torch.randn(1, 512, transformer.config.text_dim, dtype=dtype)
    channels = transformer.config.in_channels
    mb: dict = {}
    for ckpt in (False, True):
        if ckpt:
            transformer.enable_gradient_checkpointing()
        transformer.train()  # checkpointing acts in training mode
        for frames, side in ((1, 16), (2, 16), (2, 32)):  # latent frames x latent side: 64, 128, 512 tokens
            lat = torch.randn(1, channels, frames, side, side, dtype=dtype)
            tokens = frames * (side // 2) ** 2

            def fwd(lat=lat):
                return transformer(hidden_states=lat, timestep=torch.tensor([500]), encoder_hidden_states=text,
                                   return_dict=False)[0]
            mb[("transformer", tokens, ckpt)] = _mb(fwd)
    transformer = None
    vae = AutoencoderKLWan(**VAES.get(profile, {})).eval().requires_grad_(False)  # defaults: the Wan 2.1 VAE
    out["vae_params_m"] = round(sum(p.numel() for p in vae.parameters()) / 1e6, 1)
    spatial = int(getattr(vae.config, "scale_factor_spatial", 8) or 8)
    out["vae_scale_factor"] = spatial
    for ckpt in (False, True):
        if ckpt:
            if not getattr(vae, "_supports_gradient_checkpointing", False):
                break
            vae.enable_gradient_checkpointing()
        vae.train()
        for px in (64, 128):
            for lat_frames in (1, 2):  # 1 and 5 pixel frames
                lat = torch.randn(1, vae.config.z_dim, lat_frames, px // spatial, px // spatial, requires_grad=True)
                mb[("vae", px, lat_frames, ckpt)] = _mb(lambda lat=lat: vae.decode(lat, return_dict=False)[0])
    vae = None
    enc = build_plugin_manager().create("encoders", "facenet", device="cpu")
    crops = torch.rand(4, 3, enc.input_size, enc.input_size, requires_grad=True)
    out["face_network_mb_per_crop"] = round(_mb(lambda: enc.embed(crops)) / 4, 1)
    out["text_encoder_params_m"] = round(text_encoder_params(profile) / 1e6, 1)
    out["measured_mb_fp32"] = {" ".join(str(x) for x in k): round(v, 1) for k, v in mb.items()}
    return out


def measured(m: dict) -> dict:
    """measured_mb_fp32 back to (part, size, [frames,] checkpointing) keys."""
    mb = {}
    for key, value in m["measured_mb_fp32"].items():
        parts = key.split()
        mb[(parts[0], *(int(x) for x in parts[1:-1]), parts[-1] == "True")] = value
    return mb


def estimate(m: dict, frames: int, height: int, width: int, guidance: bool, grad_steps: int, supervised_last: int) -> dict:
    """Scale the measured per-token / per-frame bytes to one tuning step of the profile."""
    mb = measured(m)
    latent_frames = (frames - 1) // 4 + 1
    cell = 2 * m.get("vae_scale_factor", 8)  # pixels per token side: the VAE's factor x the 2x2 patch
    tokens = latent_frames * (height // cell) * (width // cell)
    half = 0.5 if m.get("transformer_measured_in", "float32") == "float32" else 1.0  # to bf16
    batch = 2 if guidance else 1
    decoded = 1 + 4 * ((supervised_last - 1) // 4 + 1) if supervised_last else 1  # the causal prefix, pixel frames
    est = {"tokens": tokens, "decoded_frames": decoded}
    for ckpt in (False, True):
        per_token = (mb[("transformer", 512, ckpt)] - mb[("transformer", 128, ckpt)]) / (512 - 128)  # MB, fp32
        growth = math.log(mb[("transformer", 512, ckpt)] / mb[("transformer", 128, ckpt)], 4)
        transformer_gb = per_token * tokens * batch * grad_steps * half / 1024
        key = ckpt if ("vae", 128, 2, ckpt) in mb else False
        # per extra latent frame (4 pixel frames) at 128 px, scaled to the tuning size by the 64 -> 128 px growth
        v64 = mb[("vae", 64, 2, key)] - mb[("vae", 64, 1, key)]
        v128 = mb[("vae", 128, 2, key)] - mb[("vae", 128, 1, key)]
        first128 = mb[("vae", 128, 1, key)]
        ev = math.log(v128 / v64, 4)
        scale = ((height * width) / (128 * 128)) ** ev
        vae_gb = (first128 + v128 * (decoded - 1) / 4) * scale / 1024  # fp32
        face_gb = 4 * m["face_network_mb_per_crop"] / 1024
        est["with_checkpointing" if ckpt else "without_checkpointing"] = {
            "transformer_growth_exponent": round(growth, 2), "transformer_activations_gb": round(transformer_gb, 2),
            "vae_decoder_growth_exponent": round(ev, 2), "vae_decoder_activations_gb": round(vae_gb, 2),
            "vae_checkpointed": key, "face_network_gb": round(face_gb, 2)}
    return with_weights(est, m, m["text_encoder_params_m"])


def with_weights(est: dict, m: dict, text_encoder_params_m: float) -> dict:
    """The weights beside the activations, and the totals with and without the text encoder(s) on the
    GPU: transformer and text encoders bf16, VAE fp32, the adapter fp32 with its grads and AdamW's two
    moments."""
    weights = {"transformer_bf16_gb": m["transformer_params_m"] * 1e6 * 2 / GB,
               "text_encoder_bf16_gb": text_encoder_params_m * 1e6 * 2 / GB,
               "vae_fp32_gb": m["vae_params_m"] * 1e6 * 4 / GB,
               "adapter_fp32_with_grads_and_adamw_gb": m["adapter_params_m"] * 1e6 * 16 / GB}
    est["weights"] = {k: round(v, 2) for k, v in weights.items()}
    for k in ("without_checkpointing", "with_checkpointing"):
        act = sum(v for n, v in est[k].items() if n.endswith("_gb"))
        est[k]["total_gb"] = round(sum(weights.values()) + act, 1)
        est[k]["total_without_text_encoder_gb"] = round(sum(weights.values()) - weights["text_encoder_bf16_gb"] + act, 1)
    return est


def markdown(est: dict, text_encoder: str = "UMT5 text encoder") -> str:
    """One estimate as BENCHMARKS.md's table (both families' size scripts print it)."""
    w = est["weights"]
    rows = [f"| | transformer + VAE + adapter state | {text_encoder} | transformer activations | VAE decoder "
            f"| face network | total | total, {text_encoder} off the GPU |", "|---|---|---|---|---|---|---|---|"]
    base = w["transformer_bf16_gb"] + w["vae_fp32_gb"] + w["adapter_fp32_with_grads_and_adamw_gb"]
    for k, label in (("without_checkpointing", "without checkpointing"),
                     ("with_checkpointing", "`tune.gradient_checkpointing=true`")):
        e = est[k]
        rows.append(f"| {label} | {base:.1f} GB | {w['text_encoder_bf16_gb']:.1f} GB | {e['transformer_activations_gb']:.1f} GB "
                    f"| {e['vae_decoder_activations_gb']:.1f} GB | {e['face_network_gb']:.1f} GB | **~{e['total_gb']:.1f} GB** "
                    f"| ~{e['total_without_text_encoder_gb']:.1f} GB |")
    return "\n".join(rows)


def sizes_main(profile: str, out_name: str, sizes: list[str], measure_fn, estimate_fn, reuse_fn=None,
               text_encoder: str = "UMT5 text encoder", cfg: bool = True) -> None:
    """The command line both size scripts share: measure (or --reuse the saved measurements), then
    estimate the profile's own tuning size and --sizes, write --out, print the tables.
    measure_fn(profile, settings) -> measurements; estimate_fn(m, frames, height, width, settings)."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    ap.add_argument("--profile", default=profile)
    ap.add_argument("--out", default=str(Path(__file__).with_name(out_name)))
    ap.add_argument("--reuse", action="store_true", help="recompute the estimates from --out's measurements")
    ap.add_argument("--sizes", nargs="*", default=sizes,
                    help="tuning sizes FRAMESxHEIGHTxWIDTH to estimate (the profile's own first)")
    ap.add_argument("--supervised-window", type=int, default=None,
                    help="tune.supervised_window for the estimates (default: the profile's)")
    args = ap.parse_args()
    from pvcli.settings import resolve

    window = [] if args.supervised_window is None else [{"tune": {"supervised_window": args.supervised_window}}]
    _, s = resolve(args.profile, window)
    t = s.tune
    if args.reuse:
        m = {k: v for k, v in json.loads(Path(args.out).read_text()).items() if not k.startswith("estimate")}
        if reuse_fn is not None:
            reuse_fn(m, args.profile)
    else:
        m = measure_fn(args.profile, s)
    estimates = {}
    for size in dict.fromkeys([f"{t.frames}x{t.height}x{t.width}", *args.sizes]):
        f, h, w = (int(x) for x in size.split("x"))
        estimates[size] = estimate_fn(m, f, h, w, s)
    step = {"frames": t.frames, "height": t.height, "width": t.width, "grad_steps": t.grad_steps,
            "supervised_frames": t.supervised_frames, "supervised_window": t.supervised_window}
    if cfg:  # a family with classifier-free guidance runs the denoiser on a batch of 2
        step["cfg"] = t.guidance_scale > 1
    result = {"profile": args.profile, **m, "tuning_step": step, "estimates_bf16": estimates}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), file=sys.stderr)
    for size, est in estimates.items():
        print(f"\n{size} (frames x height x width):\n" + markdown(est, text_encoder))


def main() -> None:
    def reuse(m, profile):
        m["text_encoder_params_m"] = round(text_encoder_params(profile) / 1e6, 1)

    sizes_main("wan2.1-1.3b", "wan_size.json", ["17x320x576", "9x320x576", "5x320x576", "5x256x448"],
               lambda profile, s: measure(profile, s.adapter.targets),
               # worst case for the causal decoder: the last frame it may supervise is supervised
               lambda m, f, h, w, s: estimate(m, f, h, w, s.tune.guidance_scale > 1, s.tune.grad_steps,
                                              min(f, s.tune.supervised_window or f) - 1),
               reuse)


if __name__ == "__main__":
    main()
