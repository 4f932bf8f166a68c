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
import tempfile
import time
from collections import defaultdict
from pathlib import Path

CONFIGS = {  # name -> (profile, --set overrides)
    "tiny": ("tiny", []),
    "mid": ("tiny", ["backbone.options.width=128", "tune.frames=8", "tune.height=128", "tune.width=128",
                     "tune.num_inference_steps=8", "generate.frames=8", "generate.height=128", "generate.width=128",
                     "generate.steps=8"]),
}


def photo() -> Path:
    import cv2
    import skimage.data

    path = Path(tempfile.mkdtemp()) / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


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

    from pvcli.engine.identity import reference_faces
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import parse_set, resolve

    profile, base = CONFIGS[config]
    _, s = resolve(profile, [parse_set([*base, *sets])])
    reg = build_plugin_manager()
    torch.manual_seed(0)
    bb = reg.create("backbones", s.backbone.name, options=s.backbone.options, device="cpu")
    enc = reg.create("encoders", s.encoder.name, options=s.encoder.options, device="cpu")
    return bb, enc, s, reference_faces(enc, [photo()])


def step_vs_generation(config: str, repeats: int = 3) -> dict:
    import dataclasses

    from pvcli.engine.generate import generate_frames
    from pvcli.engine.tune import Tuner

    bb, enc, s, refs = build(config)
    tuner = Tuner(bb, enc, s, refs)
    t = s.tune
    g = dataclasses.replace(s.generate, frames=t.frames, height=t.height, width=t.width, steps=t.num_inference_steps,
                            guidance_scale=t.guidance_scale, negative_prompt="")
    prompt = tuner.prompts.prompts[0]
    tuner.step(), generate_frames(bb, prompt, g)  # warm-up
    phases = Phases()
    phases.wrap(bb, "predict_noise", lambda grad: "UNet, grad tail" if grad else "UNet, no-grad steps")
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
    return {"config": config, "frames": t.frames, "size": t.height, "steps": t.num_inference_steps,
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
    return rows


def eval_fps(frames: int = 16) -> dict:
    """pv eval's face scoring (engine.evaluate.face_similarity) vs the face models called directly
    (detect, cv2 align, one batched embed) on the same 16 frames (pv eval samples up to 16 per clip)."""
    import cv2
    import numpy as np
    import skimage.data
    import torch

    from pvcli.engine import evaluate as ev
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
    return {"pv_help_s": round(pv, 3), "import_typer_s": round(typer, 3), "ratio": round(pv / typer, 2)}


def real_size() -> dict:
    """One tuning step of SD 1.5 + AnimateDiff v1-5 at full size (random weights) on CPU at small
    sizes; activation memory per frame and pixel, extrapolated to 512x512x16 fp16 on a GPU."""
    from pv_animatediff.reference_size import build_sd15_random

    from pvcli.engine.adapter import add_adapter
    from pvcli.engine.identity import reference_faces
    from pvcli.engine.memory import saved_activations
    from pvcli.engine.tune import Tuner
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import parse_set, resolve

    enc = build_plugin_manager().create("encoders", "facenet", device="cpu")
    refs = reference_faces(enc, [photo()])
    out = {"points": []}
    start = time.perf_counter()
    bb = build_sd15_random()
    out["build_s"] = round(time.perf_counter() - start, 1)
    out["unet_params_m"] = round(sum(p.numel() for p in bb.unet.parameters()) / 1e6, 1)
    names = add_adapter(bb, "attention", 16, 16)
    out["attention_lora_layers"] = len(names)
    out["lora_in_motion_modules"] = sum("motion_modules" in n for n in names)
    bb = None
    for frames, size, ckpt in ((2, 64, False), (4, 64, False), (2, 128, False), (2, 64, True)):
        bb = build_sd15_random()
        sets = [f"tune.frames={frames}", f"tune.height={size}", f"tune.width={size}", "tune.num_inference_steps=2",
                "tune.grad_steps=1", f"tune.supervised_frames={min(frames, 2)}", "tune.guidance_scale=1",
                f"tune.gradient_checkpointing={str(ckpt).lower()}", "adapter.targets=attention",
                "adapter.active_fraction=1"]
        _, s = resolve("animatediff", [parse_set(sets)])
        tuner = Tuner(bb, enc, s, refs)
        with saved_activations() as saved:
            stats = tuner.step()
        out["points"].append({"frames": frames, "size": size, "checkpointing": ckpt, "seconds": round(stats.seconds, 1),
                              "activations_mb": round(saved["bytes"] / 2**20, 1)})
        bb = tuner = None
    p = {(x["frames"], x["size"], x["checkpointing"]): x["activations_mb"] for x in out["points"]}
    per_frame = p[(4, 64, False)] - p[(2, 64, False)]  # MB per extra frame at 64 px
    fixed = p[(2, 64, False)] - 2 * per_frame
    per_frame_128 = (p[(2, 128, False)] - fixed) / 2
    pixel_scale = per_frame_128 / per_frame  # 4x pixels -> this much more per frame
    exponent = __import__("math").log(pixel_scale, 4)
    per_frame_512 = per_frame * (64 ** exponent)  # (512/64)^2 = 64x pixels
    ckpt_ratio = p[(2, 64, True)] / p[(2, 64, False)]
    weights_fp16_gb = (out["unet_params_m"] * 1e6 * 2 + 123e6 * 2 + 84e6 * 4) / 2**30
    est = (max(fixed, 0) + 16 * per_frame_512) / 1024 / 2  # fp16 halves the fp32 activations
    out["estimate_512x512x16_fp16"] = {
        "weights_gb": round(weights_fp16_gb, 2), "activations_gb": round(est, 2),
        "total_gb": round(weights_fp16_gb + est, 2),
        "with_checkpointing_gb": round(weights_fp16_gb + est * ckpt_ratio, 2),
        "pixel_exponent": round(exponent, 2), "checkpointing_ratio": round(ckpt_ratio, 2),
        "note": "estimate: grad tail of 2 steps over 16 frames, 4 supervised frames decoded; activations scale "
                "with frames and with pixels^exponent measured between 64 and 128 px"}
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
        lines += [f"`pv --help` {c['pv_help_s']} s vs `python -c 'import typer'` {c['import_typer_s']} s (ratio {c['ratio']})"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=["tiny", "mid"])
    ap.add_argument("--real", action="store_true", help="also the SD 1.5-size step (needs ~12 GB RAM, minutes)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("ratios.json")))
    args = ap.parse_args()
    r: dict = {"step_vs_generation": [], "memory": []}
    for config in args.configs:
        r["step_vs_generation"].append(step_vs_generation(config))
        print(json.dumps(r["step_vs_generation"][-1]), file=sys.stderr)
        steps = {"tiny": 4, "mid": 8}[config]
        r["memory"] += activation_memory(config, {
            "pv: grad tail of 2 steps": [],
            f"naive: backprop through all {steps} steps": [f"tune.grad_steps={steps}", "adapter.active_fraction=1"],
            "pv + gradient checkpointing": ["tune.gradient_checkpointing=true"],
            "pv, 2x frames": [f"tune.frames={8 if config == 'tiny' else 16}", "tune.supervised_frames=4"],
            "pv, 2x resolution": [f"tune.height={128 if config == 'tiny' else 256}",
                                  f"tune.width={128 if config == 'tiny' else 256}"],
        })
    r["eval"] = eval_fps()
    r["startup"] = cli_startup()
    if args.real:
        r["real_size"] = real_size()
        print(json.dumps(r["real_size"]), file=sys.stderr)
    Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    print(markdown(r))


if __name__ == "__main__":
    main()
