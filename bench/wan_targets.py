"""Where the identity adapter goes on a diffusion transformer: which target set keeps motion best
at equal ID gain, measured on tiny-wan (python bench/wan_targets.py, about a minute on 2 cores).

For each target set the tiny Wan is tuned with pv's own Tuner on one fixed clip (same prompt, noise
and supervised frames every step, lr 5e-3, no warm-up) until the clip's ID similarity has risen by
`--gain` over its start (the same gain for every set), then base and adapted clips are rendered from
the same noise for held-out seeds and prompts and compared:
- motion magnitude: mean |frame[t+1] - frame[t]| of the adapted clip against the base clip's;
- temporal consistency: mean correlation of consecutive frames (1 = static);
- content change: mean |adapted - base| per pixel (how much the adapter changed the clip at all).
Sets: pv's `attention` (cross-attention q,k,v,out) and `spatial` (cross-attention + feed-forward),
which never mix frames, and, for comparison only, `all-attention` (adds attn1, the 3D
self-attention that mixes frames; pv does not offer it, since it is the motion path)."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ALL_ATTENTION = r"blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
PROMPTS = ["{id} walking on a beach", "{id} dancing in a studio", "{id} riding a bicycle"]


def comparison_sets(bb, targets: str, all_attention: str, guard: str):
    """`bb` as it is, or for "all-attention" with the frame-mixing guard (attribute `guard`) lifted on
    this one instance and that set added: a measurement only, never something pv offers."""
    if targets == "all-attention":
        bb.target_sets = {**bb.target_sets, "all-attention": all_attention}
        setattr(bb, guard, "no-such-module")
    return bb


def backbone(targets: str):
    from pv_wan.backbone import make_tiny_wan

    return comparison_sets(make_tiny_wan(), targets, ALL_ATTENTION, "frame_mixing")


def motion_stats(frames) -> tuple[float, float]:
    """(mean |frame[t+1]-frame[t]|, mean correlation of consecutive frames) of (F, 3, H, W) in [0, 1]."""
    import torch

    diff = (frames[1:] - frames[:-1]).abs().mean().item()
    a = frames[:-1].flatten(1)
    b = frames[1:].flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    corr = (torch.nn.functional.cosine_similarity(a, b, dim=1)).mean().item()
    return diff, corr


def run_set(targets: str, gain: float, max_steps: int, encoder, reference, seeds: list[int], profile: str = "tiny-wan",
            make=None) -> dict:
    """One target set on `profile`'s tiny model, built by `make(targets)` (default: tiny Wan)."""
    import torch

    from pvcli.engine.generate import render_latents
    from pvcli.engine.tune import Tuner
    from pvcli.settings import from_dict, resolve

    _, s = resolve(profile)
    offered = targets if targets != "all-attention" else "attention"  # settings accept only pv's own sets
    s = from_dict(s.to_dict(), [{"adapter": {"targets": offered}, "tune": {"lr": 5e-3, "warmup_steps": 0}}])
    object.__setattr__(s.adapter, "targets", targets)
    bb = (make or backbone)(targets)
    tuner = Tuner(bb, encoder, s, reference)
    tuner.prompts.prompts = tuner.prompts.prompts[:1]
    sims, reached = [], None
    for step in range(1, max_steps + 1):
        tuner.noise = torch.Generator().manual_seed(11)
        tuner.frame_rng = random.Random(0)
        sims.append(tuner.step().id_sim)
        # the step's similarity is measured before its update: after step k the adapter has k updates
        if step > 1 and sims[-1] - sims[0] >= gain:
            reached = step - 1
            break
    row = {"targets": targets, "layers": len(tuner.layers), "adapter_params": sum(p.numel() for p in tuner.params),
           "id_sim_start": round(sims[0], 4), "id_sim_at_stop": round(sims[-1], 4), "updates": reached,
           "reached_gain": reached is not None}
    g = s.generate
    diffs, corrs, changes, base_diffs, base_corrs = [], [], [], [], []
    for seed in seeds:
        for prompt in PROMPTS:
            gs = type(g)(**{**g.__dict__, "seed": seed})
            text = prompt.format(id="sks person")
            with torch.no_grad():  # the same noise; adapter scale 0 is the base model exactly
                adapted = bb.decode(render_latents(bb, text, gs))[0]
                base = bb.decode(render_latents(bb, text, gs, adapter_scale=0.0))[0]
            d_a, c_a = motion_stats(adapted)
            d_b, c_b = motion_stats(base)
            diffs.append(d_a / d_b)
            corrs.append(c_a - c_b)
            changes.append((adapted - base).abs().mean().item())
            base_diffs.append(d_b)
            base_corrs.append(c_b)
    n = len(diffs)
    row.update({"motion_ratio": round(sum(diffs) / n, 4), "motion_change_pct": round(100 * sum(abs(x - 1) for x in diffs) / n, 2),
                "consistency_delta": round(sum(corrs) / n, 4), "content_change": round(sum(changes) / n, 4),
                "base_motion": round(sum(base_diffs) / n, 4), "base_consistency": round(sum(base_corrs) / n, 4)})
    return row


def markdown(rows: list[dict], gain: float) -> str:
    lines = [f"| target set | layers | adapter params | updates to +{gain} ID sim | motion (adapted/base) "
             "| mean motion change | consecutive-frame correlation change | content change |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        updates = r["updates"] if r["reached_gain"] else f"not in {r['max_steps']}"
        lines.append(f"| {r['targets']} | {r['layers']} | {r['adapter_params']:,} | {updates} | {r['motion_ratio']:.3f} "
                     f"| {r['motion_change_pct']:.1f}% | {r['consistency_delta']:+.4f} | {r['content_change']:.4f} |")
    return "\n".join(lines)


def main(profile: str = "tiny-wan", make=backbone, out_name: str = "wan_targets.json") -> None:
    """The command line both families' target-set scripts share."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    ap.add_argument("--gain", type=float, default=0.02, help="the ID similarity gain every set is tuned to")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="*", default=[1001, 1002, 1003])
    ap.add_argument("--sets", nargs="*", default=["attention", "spatial", "all-attention"])
    ap.add_argument("--out", default=str(Path(__file__).with_name(out_name)))
    args = ap.parse_args()
    from common import astronaut_photo

    from pvcli.engine.face_crops import embed_crops, mean_embedding, reference_faces
    from pvcli.plugins import build_plugin_manager

    enc = build_plugin_manager().create("encoders", "facenet", device="cpu")
    refs = reference_faces(enc, [astronaut_photo()])
    reference = mean_embedding(embed_crops(enc, [r.crop for r in refs]))
    rows = []
    for targets in args.sets:
        row = run_set(targets, args.gain, args.max_steps, enc, reference, args.seeds, profile=profile, make=make)
        row["max_steps"] = args.max_steps
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    Path(args.out).write_text(json.dumps({"gain": args.gain, "rows": rows}, indent=2) + "\n")
    print(markdown(rows, args.gain))


if __name__ == "__main__":
    main()
