"""Benchmark tuning on the tiny backbone with the real FaceNet: seconds per step, peak RSS, and
held-out ID similarity before/after. Run by hand: `python bench/tune_step.py --steps 40`."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from common import astronaut_photo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--targets", default="spatial", choices=["attention", "spatial"])
    ap.add_argument("--profile", default="tiny")
    args = ap.parse_args()

    import torch

    from pvcli.engine.face_crops import embed_crops, mean_embedding, reference_faces
    from pvcli.engine.tune import Tuner
    from pvcli.jobs.tune import held_out_seeds
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import parse_set, resolve

    torch.manual_seed(0)
    _, s = resolve(args.profile, [parse_set([f"adapter.targets={args.targets}"])])
    reg = build_plugin_manager()
    t0 = time.perf_counter()
    bb = reg.create("backbones", s.backbone.name, options=s.backbone.options, device="cpu")
    enc = reg.create("encoders", s.encoder.name, options=s.encoder.options, device="cpu")
    build = time.perf_counter() - t0
    photo = astronaut_photo()
    ref = mean_embedding(embed_crops(enc, [r.crop for r in reference_faces(enc, [photo])]))
    tuner = Tuner(bb, enc, s, ref)
    before = tuner.held_out_similarity(held_out_seeds(3))
    times = [tuner.step().seconds for _ in range(args.steps)]
    after = tuner.held_out_similarity(held_out_seeds(3))
    result = {
        "profile": args.profile, "targets": args.targets, "steps": args.steps, "torch_threads": torch.get_num_threads(),
        "build_s": round(build, 2), "first_step_s": round(times[0], 2),
        "median_step_s": round(statistics.median(times[1:] or times), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "held_out_id_sim_before": round(before, 4), "held_out_id_sim_after": round(after, 4),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
