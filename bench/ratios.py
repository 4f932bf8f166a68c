"""Performance ratios for BENCHMARKS.md, each measured side by side in one run:

- a tuning step / a plain generation of the same clip (frames, size, steps, guidance; no grad),
  with where a step's time goes;
- activation memory kept for backward (torch's saved-tensor accounting): pv's grad tail vs naive
  backprop through every denoising step, its growth with frames and resolution, with and without
  gradient checkpointing;
- pv eval frames/s vs calling the face models directly;
- CLI start-up: `pv --help` vs `python -c "import typer"`.

    python bench/ratios.py --configs tiny mid       # writes bench/ratios.json, prints markdown
    python bench/ratios.py --real                   # + SD 1.5-size step on CPU and the GPU estimate
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from common import astronaut_photo

CONFIGS = {  # name -> (profile, --set overrides)
    "tiny": ("tiny", []),
    # a 4x wider UNet at 128 px with the real profile's adapter (attention layers, gated to the
    # last quarter of the steps), so the UNet dominates as it does at full size
    "mid": ("tiny", ["backbone.options.width=128", "tune.frames=8", "tune.height=128", "tune.width=128",
                     "tune.num_inference_steps=8", "generate.frames=8", "generate.height=128", "generate.width=128",
                     "generate.steps=8", "adapter.targets=attention", "adapter.active_fraction=0.25"]),
}
# the Wan family: the tiny profile, and a mid-size Wan (8 blocks of 8 heads x 32, FFN 1024) at
# 128 px with the real profiles' adapter (cross-attention, gated to the last quarter)
MID_WAN = ["tune.frames=9", "tune.height=128", "tune.width=128", "tune.num_inference_steps=8", "generate.frames=9",
           "generate.height=128", "generate.width=128", "generate.steps=8", "adapter.targets=attention",
           "adapter.active_fraction=0.25"]
CONFIGS.update({"tiny-wan": ("tiny-wan", []), "mid-wan": ("tiny-wan", MID_WAN)})
# what `tune.trajectory_pool` saves once its pairs are warm (configs whose adapter is gated)
POOLED = {"mid": ["tune.trajectory_pool=1"]}


def mid_wan_backbone():
    """tiny-wan's VAE, text encoder and scheduler around a mid-size Wan transformer (random, seed 0)."""
    import torch
    from diffusers import WanTransformer3DModel
    from pv_wan.backbone import WanBackbone, build_tiny_components

    c = build_tiny_components()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=1024, num_layers=8, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32)
    return WanBackbone("wan-tiny", transformer, c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"],
                       {"base_model": "mid-wan(seed=0)"}, "cpu", torch.float32, max_sequence_length=32,
                       random_weights=True)


class Phases:
    """Wall time per phase of a tuning step, by wrapping the backbone's and encoder's methods."""

    def __init__(self):
        self.t = defaultdict(float)

    def wrap(self, obj, attr: str, label):
        import torch

        original = getattr(obj, attr)

        def timed(*a, **kw):
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                name = label(torch.is_grad_enabled()) if callable(label) else label
                self.t[name] += time.perf_counter() - start

        setattr(obj, attr, timed)


def build(config: str, sets: list[str] = ()):
    import torch

    from pvcli.engine.face_crops import reference_faces
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import parse_set, resolve

    profile, base = CONFIGS[config]
    _, s = resolve(profile, [parse_set([*base, *sets])])
    reg = build_plugin_manager()
    torch.manual_seed(0)
    if config == "mid-wan":
        bb = mid_wan_backbone()
    else:
        bb = reg.create("backbones", s.backbone.name, options=s.backbone.options, device="cpu")
    enc = reg.create("encoders", s.encoder.name, options=s.encoder.options, device="cpu")
    return bb, enc, s, reference_faces(enc, [astronaut_photo()])


def step_vs_generation(config: str, repeats: int = 3, sets: list[str] = (), label: str = "") -> dict:
    import dataclasses

    from pvcli.engine.generate import generate_frames
    from pvcli.engine.tune import Tuner

    bb, enc, s, refs = build(config, sets)
    tuner = Tuner(bb, enc, s, refs)
    t = s.tune
    g = dataclasses.replace(s.generate, frames=t.frames, height=t.height, width=t.width, steps=t.num_inference_steps,
                            guidance_scale=t.guidance_scale, negative_prompt="")
    prompt = tuner.prompts.prompts[0]
    tuner.step(), generate_frames(bb, prompt, g)  # warm-up
    phases = Phases()
    net = "UNet" if bb.component == "unet" else "transformer"
    phases.wrap(bb, "predict_noise", lambda grad: f"{net}, grad tail" if grad else f"{net}, no-grad steps")
    phases.wrap(bb, "decode", "VAE decode (supervised frames)")
    phases.wrap(enc, "detect", "face detection")
    phases.wrap(enc, "embed", "face embedding forward")
    phases.wrap(tuner.optimizer, "step", "optimizer")
    steps, gens = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        generate_frames(bb, prompt, g)
        gens.append(time.perf_counter() - start)
        phases.t.clear()
        steps.append(tuner.step().seconds)
    step, gen = statistics.median(steps), statistics.median(gens)
    known = dict(phases.t)  # of the last step
    known["backward + the rest"] = max(0.0, steps[-1] - sum(known.values()))
    return {"config": config + label, "frames": t.frames, "size": t.height, "steps": t.num_inference_steps,
            "grad_steps": t.grad_steps, "supervised_frames": t.supervised_frames, "tune_step_s": round(step, 3),
            "generation_s": round(gen, 3), "ratio": round(step / gen, 2),
            "breakdown_s": {k: round(v, 3) for k, v in sorted(known.items(), key=lambda kv: -kv[1])}}


def activation_memory(config: str, variants: dict[str, list[str]]) -> list[dict]:
    from pvcli.engine.memory import saved_activations
    from pvcli.engine.tune import Tuner

    rows = []
    for label, sets in variants.items():
        bb, enc, s, refs = build(config, sets)
        tuner = Tuner(bb, enc, s, refs)
        with saved_activations() as saved:
            tuner.step()
        rows.append({"config": config, "variant": label, "frames": s.tune.frames, "size": s.tune.height,
                     "grad_steps": s.tune.grad_steps, "checkpointing": s.tune.gradient_checkpointing,
                     "activations_mb": round(saved["bytes"] / 2**20, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)
        bb = enc = tuner = None
    return rows


def eval_fps(frames: int = 16) -> dict:
    """pv eval's face scoring (engine.metrics.face_similarity) vs the face models called directly
    (detect, cv2 align, one batched embed) on the same 16 frames (pv eval samples up to 16 per clip)."""
    import cv2
    import numpy as np
    import skimage.data
    import torch

    from pvcli.engine import metrics as ev
    from pvcli.plugins import build_plugin_manager

    enc = build_plugin_manager().create("encoders", "facenet", device="cpu")
    clip = np.stack([cv2.resize(skimage.data.astronaut(), (256, 256))] * frames)
    reference = torch.nn.functional.normalize(torch.randn(enc.dim), dim=0)

    @torch.no_grad()
    def direct():
        crops = []
        for f in clip:
            faces = enc.detect(f)
            if faces:
                crops.append(cv2.warpAffine(f, enc.align_matrix(faces[0]), (enc.input_size, enc.input_size)))
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
        return enc.embed(batch) @ reference

    def pv_path():
        return ev.face_similarity(clip, enc, reference, "skip")

    out = {"frames": frames}
    for name, fn in (("direct", direct), ("pv", pv_path)):
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[f"{name}_fps"] = round(frames / statistics.median(times), 1)
    out["ratio"] = round(out["pv_fps"] / out["direct_fps"], 2)
    return out


def cli_startup(repeats: int = 5) -> dict:
    def timed(cmd):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    pv = timed([sys.executable, "-m", "pvcli", "--help"])
    typer = timed([sys.executable, "-c", "import typer"])
    # the floor for a typer CLI with rich help: a one-command app's --help (loads typer.rich_utils too)
    app = "import typer\napp = typer.Typer()\n@app.command()\ndef hello(name: str = ''):\n    pass\n" \
          "@app.command()\ndef bye():\n    pass\napp()\n"
    minimal = timed([sys.executable, "-c", app, "--help"])
    return {"pv_help_s": round(pv, 3), "import_typer_s": round(typer, 3), "ratio": round(pv / typer, 2),
            "minimal_typer_app_help_s": round(minimal, 3), "ratio_to_minimal_app": round(pv / minimal, 2)}


def real_size() -> dict:
    """SD 1.5 + AnimateDiff v1-5 at full size (random weights, CPU): where the adapter lands, one
    tuning step at 64 px, and the activations kept for backward per component (UNet per frame and
    grad step, VAE decoder per supervised frame, face network per crop) at 64 and 128 px, with and
    without gradient checkpointing; extrapolated to a 512x512x16 step on a GPU (an estimate)."""
    import math

    import torch
    from pv_animatediff.reference_size import build_sd15_random

    from pvcli.engine.face_crops import reference_faces
    from pvcli.engine.memory import saved_activations
    from pvcli.engine.tune import Tuner
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import parse_set, resolve

    enc = build_plugin_manager().create("encoders", "facenet", device="cpu")
    refs = reference_faces(enc, [astronaut_photo()])
    out: dict = {}
    start = time.perf_counter()
    bb = build_sd15_random()
    out["build_s"] = round(time.perf_counter() - start, 1)
    out["unet_params_m"] = round(sum(p.numel() for p in bb.unet.parameters()) / 1e6, 1)
    out["text_encoder_params_m"] = round(sum(p.numel() for p in bb.text_encoder.parameters()) / 1e6, 1)
    out["vae_params_m"] = round(sum(p.numel() for p in bb.vae.parameters()) / 1e6, 1)
    _, s = resolve("animatediff", [parse_set([
        "tune.frames=2", "tune.height=64", "tune.width=64", "tune.num_inference_steps=2", "tune.grad_steps=1",
        "tune.supervised_frames=2", "tune.guidance_scale=1", "adapter.active_fraction=1"])])
    tuner = Tuner(bb, enc, s, refs)
    out["attention_lora_layers"] = len(tuner.layers)
    out["lora_in_motion_modules"] = sum("motion_modules" in n for n in tuner.layers)
    out["adapter_params_m"] = round(sum(p.numel() for p in tuner.params) / 1e6, 2)
    out["step_2x64x64_s"] = round(tuner.step().seconds, 1)

    cond = bb.encode_prompt(["sks person"])
    mb = {}

    def kept(fn) -> float:
        with saved_activations() as saved:
            fn()
        return saved["bytes"] / 2**20

    for ckpt in (False, True):
        if ckpt:
            bb.enable_gradient_checkpointing()
        bb.unet.train()
        for px in (64, 128):
            for frames in (1, 2):
                lat = torch.randn(1, 4, frames, px // 8, px // 8)
                mb[("unet", px, frames, ckpt)] = kept(lambda lat=lat: bb.predict_noise(lat, torch.tensor(500), cond))
            lat = torch.randn(1, 4, 1, px // 8, px // 8, requires_grad=True)
            mb[("vae", px, 1, ckpt)] = kept(lambda lat=lat: bb.decode(lat))
    crops = torch.rand(4, 3, enc.input_size, enc.input_size, requires_grad=True)
    face_mb = kept(lambda: enc.embed(crops)) / 4
    tuner = bb = None

    def per_frame(part, px, ckpt):  # MB per extra frame (UNet) or per frame (decoder), fp32
        if part == "unet":
            return mb[("unet", px, 2, ckpt)] - mb[("unet", px, 1, ckpt)]
        return mb[("vae", px, 1, ckpt)]

    est = {}
    for ckpt in (False, True):
        u64, u128 = per_frame("unet", 64, ckpt), per_frame("unet", 128, ckpt)
        v64, v128 = per_frame("vae", 64, ckpt), per_frame("vae", 128, ckpt)
        eu, ev = math.log(u128 / u64, 4), math.log(v128 / v64, 4)  # growth per 4x pixels, as an exponent
        u512, v512 = u128 * 16 ** eu, v128 * 16 ** ev  # 512 px = 16x the pixels of 128 px
        # the default profile: 16 frames, CFG (batch 2 in the UNet), 2 grad steps, 4 supervised frames;
        # the UNet runs in fp16 (half of the fp32 bytes measured), the VAE and the face network in fp32
        unet_gb = 16 * 2 * 2 * u512 / 2 / 1024
        vae_gb = 4 * v512 / 1024
        face_gb = 4 * face_mb / 1024
        est[ckpt] = {"unet_exponent": round(eu, 2), "vae_exponent": round(ev, 2), "unet_activations_gb": round(unet_gb, 2),
                     "vae_decoder_activations_gb": round(vae_gb, 2), "face_network_gb": round(face_gb, 2)}
    params = out["unet_params_m"] * 2 + out["text_encoder_params_m"] * 2 + out["vae_params_m"] * 4  # MB: fp16, fp16, fp32
    weights_gb = (params + out["adapter_params_m"] * 4 * 4) / 1024  # + the adapter, its grads and AdamW's two moments
    out["measured_mb_fp32"] = {f"{k[0]} {k[1]}px {k[2]}f{' ckpt' if k[3] else ''}": round(v, 1) for k, v in mb.items()}
    out["face_network_mb_per_crop"] = round(face_mb, 1)
    out["estimate_512x512x16_fp16"] = {
        "weights_gb": round(weights_gb, 2),
        "without_checkpointing": {**est[False], "total_gb": round(weights_gb + sum(
            v for k, v in est[False].items() if k.endswith("gb")), 1)},
        "with_checkpointing": {**est[True], "total_gb": round(weights_gb + sum(
            v for k, v in est[True].items() if k.endswith("gb")), 1)},
        "note": "estimate, not a GPU measurement: activations kept for backward (torch saved-tensor accounting) "
                "measured per component on CPU at 64 and 128 px and scaled to 512 px by the measured growth; "
                "the default profile's step (16 frames, CFG, 2 grad steps, 4 supervised frames), UNet fp16, VAE "
                "and face network fp32; excludes the allocator's workspace and fragmentation"}
    return out


def markdown(r: dict) -> str:
    lines = ["| config | frames x size, steps | tuning step | generation | ratio | largest phases (s) |", "|---|---|---|---|---|---|"]
    for x in r.get("step_vs_generation", []):
        top = ", ".join(f"{k} {v}" for k, v in list(x["breakdown_s"].items())[:4])
        lines.append(f"| {x['config']} | {x['frames']}x{x['size']}, {x['steps']} | {x['tune_step_s']} s | "
                     f"{x['generation_s']} s | {x['ratio']} | {top} |")
    lines += ["", "| config | variant | activations kept for backward (MB) |", "|---|---|---|"]
    for x in r.get("memory", []):
        lines.append(f"| {x['config']} | {x['variant']} | {x['activations_mb']} |")
    if "eval" in r:
        e = r["eval"]
        lines += ["", f"pv eval path {e['pv_fps']} frames/s vs direct face-model calls {e['direct_fps']} (ratio {e['ratio']})"]
    if "startup" in r:
        c = r["startup"]
        lines += [f"`pv --help` {c['pv_help_s']} s vs `python -c 'import typer'` {c['import_typer_s']} s (ratio {c['ratio']}), "
                  f"vs a two-command typer app's --help {c.get('minimal_typer_app_help_s')} s "
                  f"(ratio {c.get('ratio_to_minimal_app')})"]
    return "\n".join(lines)


MEMORY_BASE = {"tiny": [], "mid": ["tune.frames=4", "tune.supervised_frames=2"]}  # mid at 8 frames needs >24 GB naive


def memory_variants(config: str) -> dict[str, list[str]]:
    steps = {"tiny": 4, "mid": 8}[config]
    frames, size = (4, 64) if config == "tiny" else (4, 128)
    base = MEMORY_BASE[config]
    return {
        "pv: grad tail of 2 steps": base,
        f"naive: backprop through all {steps} steps": [*base, f"tune.grad_steps={steps}", "adapter.active_fraction=1"],
        "pv + gradient checkpointing (UNet, motion modules, VAE decoder)": [*base, "tune.gradient_checkpointing=true"],
        f"pv, 2x frames ({frames * 2})": [*base, f"tune.frames={frames * 2}"],
        f"pv, 2x resolution ({size * 2} px)": [*base, f"tune.height={size * 2}", f"tune.width={size * 2}"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=["tiny", "mid"])
    ap.add_argument("--parts", nargs="*", default=["steps", "memory", "eval", "startup"],
                    help="any of steps, memory, eval, startup (results merge into --out)")
    ap.add_argument("--real", action="store_true", help="also the SD 1.5-size step (needs ~12 GB RAM, minutes)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("ratios.json")))
    args = ap.parse_args()
    out = Path(args.out)
    r: dict = json.loads(out.read_text()) if out.is_file() else {}

    def save(key, value):  # each part lands as soon as it is measured
        r[key] = value
        out.write_text(json.dumps(r, indent=2) + "\n")
        print(json.dumps(value), file=sys.stderr)

    if "steps" in args.parts:
        rows = []
        for config in args.configs:
            rows.append(step_vs_generation(config))
            if config in POOLED:
                rows.append(step_vs_generation(config, sets=POOLED[config], label=" + warm trajectory_pool"))
            save("step_vs_generation", rows)
    if "memory" in args.parts:
        rows = []
        for config in args.configs:
            rows += activation_memory(config, memory_variants(config))
            save("memory", rows)
    if "eval" in args.parts:
        save("eval", eval_fps())
    if "startup" in args.parts:
        save("startup", cli_startup())
    if args.real:
        save("real_size", real_size())
    print(markdown(r))


if __name__ == "__main__":
    main()
