"""pv generate vs the raw diffusers pipeline on the same model, seed and settings: the cost of
what pv adds around the pipeline (adapter activation, gating callback, fp32 decode, uint8).
Timings interleave the two and report medians. Run by hand (`python bench/generate.py`) or via
`nox -s bench`; prints one JSON line. Target: ratio <= 1.03."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    import torch
    from pv_animatediff.backbone import make_tiny

    from pvcli.engine.adapter import add_adapter
    from pvcli.engine.generate import generate_frames
    from pvcli.settings import GenerateSettings

    g = GenerateSettings(frames=args.frames, height=args.size, width=args.size, steps=args.steps, guidance_scale=7.5,
                         negative_prompt="", seed=0)
    prompt = "sks person, surfing at sunset"
    result = {"frames": g.frames, "size": g.height, "steps": g.steps, "guidance": g.guidance_scale,
              "repeats": args.repeats, "torch_threads": torch.get_num_threads()}
    for label in ("no_adapter", "identity_adapter"):
        bb = make_tiny()
        if label == "identity_adapter":
            add_adapter(bb, "spatial", 16, 16)
            for name, p in bb.unet.named_parameters():
                if "lora_B" in name:
                    p.data.normal_(0, 0.05)
        pipe = bb.pipeline()

        def raw(pipe=pipe, bb=bb):
            pipe.scheduler = bb.new_scheduler()
            return pipe(prompt, negative_prompt=g.negative_prompt, num_frames=g.frames, height=g.height,
                        width=g.width, num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
                        generator=torch.Generator().manual_seed(g.seed), output_type="pt").frames

        def ours(bb=bb):
            return generate_frames(bb, prompt, g)

        raw(), ours()  # warm-up
        t_raw, t_pv = [], []
        for _ in range(args.repeats):
            for fn, times in ((raw, t_raw), (ours, t_pv)):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        r, p = statistics.median(t_raw), statistics.median(t_pv)
        result[label] = {"raw_pipeline_s": round(r, 3), "pv_generate_s": round(p, 3), "ratio": round(p / r, 3)}
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
