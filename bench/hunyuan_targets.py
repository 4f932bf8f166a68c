"""Where the identity adapter goes on HunyuanVideo: which target set keeps motion best at equal ID
gain, measured on tiny-hunyuan exactly as bench/wan_targets.py measures tiny-wan (its run_set:
pv's Tuner on one fixed clip until the ID similarity has risen by `--gain`, then adapted and base
clips from the same noise for held-out seeds and prompts; python bench/hunyuan_targets.py, a few
minutes on 2 cores).

Sets: pv's `attention` (double-stream to_v, to_out.0, add_k_proj, add_v_proj) and `spatial`
(adds the image feed-forward and the single-stream proj_out), which never touch the video tokens'
queries and keys, and, for comparison only, `all-attention` (every attention projection of both
block kinds, the queries and keys that set how frames mix included; pv does not offer it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from wan_targets import markdown, run_set  # noqa: E402

ALL_ATTENTION = (r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
                 r"|single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)")


def backbone(targets: str):
    from pv_hunyuanvideo.backbone import make_tiny_hunyuanvideo

    bb = make_tiny_hunyuanvideo()
    if targets == "all-attention":  # measurement only: lift the frame-mixing guard for this one instance
        bb.target_sets = {**bb.target_sets, "all-attention": ALL_ATTENTION}
        bb.mixing = "no-such-module"
    return bb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gain", type=float, default=0.02, help="the ID similarity gain every set is tuned to")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="*", default=[1001, 1002, 1003])
    ap.add_argument("--sets", nargs="*", default=["attention", "spatial", "all-attention"])
    ap.add_argument("--out", default=str(Path(__file__).with_name("hunyuan_targets.json")))
    args = ap.parse_args()
    from common import astronaut_photo

    from pvcli.engine.face_crops import embed_crops, mean_embedding, reference_faces
    from pvcli.plugins import build_plugin_manager

    enc = build_plugin_manager().create("encoders", "facenet", device="cpu")
    refs = reference_faces(enc, [astronaut_photo()])
    reference = mean_embedding(embed_crops(enc, [r.crop for r in refs]))
    rows = []
    for targets in args.sets:
        row = run_set(targets, args.gain, args.max_steps, enc, reference, args.seeds, profile="tiny-hunyuan",
                      make=backbone)
        row["max_steps"] = args.max_steps
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    Path(args.out).write_text(json.dumps({"gain": args.gain, "rows": rows}, indent=2) + "\n")
    print(markdown(rows, args.gain))


if __name__ == "__main__":
    main()
