"""Several identities in one clip (latent region mode) against one identity: the generation time of a
clip with N identities in regions over the time of the same clip with one, on the tiny families.
The mode runs the base pass plus one pass per identity whose gate is open, so with every step adapted
(the tiny profiles' gating, active_fraction 1) N identities cost about N + 1 passes where one costs 1,
and with the paper's last-quarter gate about 0.75 + 0.25 (N + 1) passes. Run by hand
(`python bench/multi_identity.py`); prints one JSON line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import time

FAMILIES = {"tiny": ("pv_animatediff.backbone", "make_tiny"), "tiny-wan": ("pv_wan.backbone", "make_tiny_wan"),
            "tiny-hunyuan": ("pv_hunyuanvideo.backbone", "make_tiny_hunyuanvideo")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=1.0, help="the identities' gate: active in this last fraction")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from pvcli.engine.adapter import ADAPTER_NAME, add_adapter
    from pvcli.engine.face_assignment import layout_regions
    from pvcli.engine.generate import gate_switch, render_latents
    from pvcli.engine.regions import Person, RegionMixer
    from pvcli.engine.sampling import adapted_steps
    from pvcli.settings import resolve

    out = {"identities": args.identities, "steps": args.steps, "active_fraction": args.fraction,
           "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "families": {}}
    for profile, (module, factory) in FAMILIES.items():
        bb = getattr(importlib.import_module(module), factory)()
        names = [ADAPTER_NAME, *(f"pv_person{k + 1}" for k in range(args.identities))]
        for name in names:
            add_adapter(bb, "attention", 4, 4, adapter_name=name)
        g = dataclasses.replace(resolve(profile)[1].generate, steps=args.steps, seed=0)
        adapted = adapted_steps(args.steps, args.fraction)
        people = [Person(n, 1.0, gate_switch(args.steps, adapted)) for n in names[1:]]
        boxes = layout_regions(args.identities)
        times = {"one": [], "group": []}
        for _ in range(args.repeats):
            for label in times:
                start = time.perf_counter()
                if label == "one":
                    render_latents(bb, "sks person waving", g, adapter_steps=adapted)
                else:
                    render_latents(bb, "sks person waving", g, regions=RegionMixer(bb, people, boxes, {}))
                times[label].append(time.perf_counter() - start)
        one, group = statistics.median(times["one"]), statistics.median(times["group"])
        out["families"][profile] = {"one_s": round(one, 3), "group_s": round(group, 3), "ratio": round(group / one, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
