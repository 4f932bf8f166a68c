"""Several identities in one clip against one identity, on the tiny families, for both region modes:

- time: a clip with N identities in regions over the same clip with one. `latent` runs the base pass
  plus one pass per identity whose gate is open (about N + 1 passes with every step adapted, about
  0.75 + 0.25 (N + 1) with the paper's last-quarter gate); `layer` runs one pass, plus one attention
  call per identity where text-side deltas cannot be masked by position.
- leakage (two identities, random adapters, alice left and bob right): how far region A of the group
  clip lies from alice's own clip, over how far the naive run (both adapters on everywhere) lies
  from it, in latent space; the same for bob's region. 0: no leakage; 1: as bad as both everywhere.
Run by hand (`python bench/multi_identity.py`); prints one JSON line."""

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

    from pvcli.contracts import GenerationPlan
    from pvcli.engine.adapter import ADAPTER_NAME, add_adapter
    from pvcli.engine.face_assignment import layout_regions
    from pvcli.engine.generate import gate_switch, render_latents
    from pvcli.engine.regions import LayerMixer, Person, RegionMixer
    from pvcli.engine.sampling import adapted_steps
    from pvcli.settings import resolve

    out = {"identities": args.identities, "steps": args.steps, "active_fraction": args.fraction,
           "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "families": {}}
    for profile, (module, factory) in FAMILIES.items():
        bb = getattr(importlib.import_module(module), factory)()
        names = [ADAPTER_NAME, *(f"pv_person{k + 1}" for k in range(max(2, args.identities)))]
        for name in names:
            add_adapter(bb, "attention", 4, 4, adapter_name=name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for n, p in bb.denoiser.named_parameters():
                if "lora_B" in n:
                    p.data.normal_(0, 0.3)
        g = dataclasses.replace(resolve(profile)[1].generate, steps=args.steps, seed=0)
        adapted = adapted_steps(args.steps, args.fraction)
        switch = gate_switch(args.steps, adapted)
        people = [Person(n, 1.0, switch) for n in names[1:args.identities + 1]]
        boxes = layout_regions(args.identities)
        prompt = "sks person waving"
        mixers = {"one": None, "latent": RegionMixer, "layer": LayerMixer}
        times = {label: [] for label in mixers}
        for _ in range(args.repeats):
            for label, mixer in mixers.items():
                start = time.perf_counter()
                if mixer is None:
                    render_latents(bb, prompt, g, adapter_steps=adapted)
                else:
                    render_latents(bb, prompt, g, regions=mixer(bb, people, boxes, {}))
                times[label].append(time.perf_counter() - start)
        one = statistics.median(times["one"])
        row = {"one_s": round(one, 3)}
        for mode in ("latent", "layer"):
            row[f"{mode}_s"] = round(statistics.median(times[mode]), 3)
            row[f"{mode}_ratio"] = round(statistics.median(times[mode]) / one, 2)
        # leakage, two identities in halves
        pair, halves = people[:2], layout_regions(2)
        alone = [render_latents(bb, prompt, g, regions=RegionMixer(bb, [p], [(0, 0, 1, 1)], {})) for p in pair]
        naive = render_latents(bb, prompt, g, adapter_steps=adapted, adapter_scale=0.0,
                               plan=GenerationPlan(g.frames, g.height, g.width, loras={p.adapter: 1.0 for p in pair}))
        w = naive.shape[-1] // 2
        sides = [(..., slice(0, w)), (..., slice(w, None))]

        def dist(a, b, side):
            return float((a[side] - b[side]).abs().mean())

        for mode, mixer in (("latent", RegionMixer), ("layer", LayerMixer)):
            clip = render_latents(bb, prompt, g, regions=mixer(bb, pair, halves, {}))
            row[f"{mode}_leakage"] = [round(dist(clip, alone[k], sides[k]) / dist(naive, alone[k], sides[k]), 3)
                                      for k in range(2)]
        out["families"][profile] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
