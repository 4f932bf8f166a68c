"""Few-step samplers on the tiny backbone: which late-step gating fraction and grad tail still
learn the identity with 4 steps (held-out ID similarity gain in N tuning steps), and how a
tuning step's cost falls with the sampling step count.

    python bench/fewstep.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from ablate import run, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.25, 0.5, 1.0])
    ap.add_argument("--grad-steps", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--schedulers", nargs="*", default=["euler-trailing", "lcm"])
    args = ap.parse_args()
    photo, reg = setup()
    rows = []
    for sched in args.schedulers:
        for frac in args.fractions:
            for gs in args.grad_steps:
                sets = [f"backbone.options.scheduler={sched}", f"adapter.active_fraction={frac}", f"tune.grad_steps={gs}"]
                row = run(f"{sched}, 4 steps, gating {frac}, grad steps {gs}", sets, args.steps, photo, reg,
                          profile="tiny-lightning")
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    print("| setting | held-out ID sim before | after | gain | s/step |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['held_out_before']} | {r['held_out_after']} | {r['gain']:+} | {r['s_per_step']} |")
    cost = step_cost(photo, reg)
    print("\n| sampling steps | s/tuning step (grad steps 2) |\n|---|---|")
    for n, sec in cost.items():
        print(f"| {n} | {sec} |")


def step_cost(photo, reg, counts=(2, 4, 8, 16), repeats: int = 4) -> dict[int, float]:
    """Median seconds per tuning step against the number of sampling steps (euler-trailing)."""
    import torch

    from pvcli.engine.face_crops import reference_faces
    from pvcli.engine.tune import Tuner
    from pvcli.settings import parse_set, resolve

    out = {}
    for n in counts:
        torch.manual_seed(0)
        _, s = resolve("tiny-lightning", [parse_set([f"tune.num_inference_steps={n}"])])
        bb = reg.create("backbones", s.backbone.name, options=s.backbone.options, device="cpu")
        enc = reg.create("encoders", s.encoder.name, options=s.encoder.options, device="cpu")
        tuner = Tuner(bb, enc, s, reference_faces(enc, [photo]))
        tuner.step()  # warm-up
        out[n] = round(statistics.median(tuner.step().seconds for _ in range(repeats)), 3)
    return out


if __name__ == "__main__":
    main()
