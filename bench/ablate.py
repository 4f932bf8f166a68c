"""Ablations of the method's switches on the tiny backbone with the real FaceNet (evidence of
mechanics, not the paper's numbers). For each setting: tune N steps, then report held-out ID
similarity before/after, a motion statistic (mean Farneback optical-flow magnitude between
consecutive frames of generated clips, px/frame) and seconds per step.

    python bench/ablate.py --steps 30
    python bench/ablate.py --profile tiny-wan --only "tiny profile" "random adapted"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import astronaut_photo

VARIANTS = {
    "tiny profile (gating 1.0, aug on, SCR off)": [],
    # 4 DDIM steps' last quarter is only t=0, which returns its input: pv refuses it, so 8 steps here
    "gating 0.25 (last quarter of 8 steps)": ["adapter.active_fraction=0.25", "tune.num_inference_steps=8",
                                              "generate.steps=8"],
    "augmentation off (one prompt)": ["tune.augment=false"],
    "SCR on (clip-tiny, weight 1)": ["tune.scr_weight=1.0", "tune.scorer=clip-tiny"],
    # the ID loss on the predicted clean sample of a random step inside the gate, not the final sample
    "supervise a random adapted step": ["tune.supervise_at=random"],
}
SEEDS = [1001, 1002, 1003]


def flow_magnitude(frames) -> float:
    import cv2
    import numpy as np

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for a, b in zip(grey[:-1], grey[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        mags.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return float(np.mean(mags))


def run(name: str, sets: list[str], steps: int, photo: Path, reg, profile: str = "tiny") -> dict:
    import torch

    from pvcli.engine.face_crops import reference_faces
    from pvcli.engine.generate import generate_frames
    from pvcli.engine.sampling import adapted_steps
    from pvcli.engine.tune import Tuner
    from pvcli.settings import parse_set, resolve

    torch.manual_seed(0)
    _, s = resolve(profile, [parse_set([f"tune.steps={steps}", *sets])])
    bb = reg.create("backbones", s.backbone.name, options=s.backbone.options, device="cpu")
    enc = reg.create("encoders", s.encoder.name, options=s.encoder.options, device="cpu")
    scorer = reg.create("scorers", s.tune.scorer, options=s.tune.scorer_options) if s.tune.scr_weight > 0 else None
    tuner = Tuner(bb, enc, s, reference_faces(enc, [photo]), scorer=scorer)
    before = tuner.held_out_similarity(SEEDS, adapter=False)
    times = [tuner.step().seconds for _ in range(steps)]
    after = tuner.held_out_similarity(SEEDS)
    n = adapted_steps(s.generate.steps, s.adapter.active_fraction)
    motion = []
    for seed in SEEDS:
        s.generate.seed = seed
        motion.append(flow_magnitude(generate_frames(bb, tuner.prompts.prompts[0], s.generate, adapter_steps=n).numpy()))
    return {"setting": name, "held_out_before": round(before, 4), "held_out_after": round(after, 4),
            "gain": round(after - before, 4), "motion_px": round(statistics.mean(motion), 4),
            "s_per_step": round(statistics.median(times), 2)}


def setup():
    """(a reference photo, the plugin registry)."""

    from pvcli.plugins import build_plugin_manager

    return astronaut_photo(), build_plugin_manager()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--only", nargs="*", help="substrings of setting names to run")
    ap.add_argument("--profile", default="tiny", help="the tiny profile to tune (tiny, tiny-wan, tiny-hunyuan)")
    args = ap.parse_args()
    photo, reg = setup()
    rows = []
    for name, sets in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        rows.append(run(name, sets, args.steps, photo, reg, args.profile))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{args.profile}, {args.steps} steps")
    print("| setting | held-out ID sim before | after | gain | motion (px/frame) | s/step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['held_out_before']} | {r['held_out_after']} | {r['gain']:+} | "
              f"{r['motion_px']} | {r['s_per_step']} |")


if __name__ == "__main__":
    main()
