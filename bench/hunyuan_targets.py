"""Where the identity adapter goes on HunyuanVideo: which target set keeps motion best at equal ID
gain, measured on tiny-hunyuan exactly as bench/wan_targets.py measures tiny-wan (its run_set:
pv's Tuner on one fixed clip until the ID similarity has risen by `--gain`, then adapted and base
clips from the same noise for held-out seeds and prompts; python bench/hunyuan_targets.py, a few
minutes on 2 cores).

Sets: pv's `attention` (the double-stream text keys and values, add_k_proj and add_v_proj) and
`spatial` (adds the image feed-forward and the single-stream proj_mlp), which never touch the video
tokens' self-attention, and, for comparison only, `all-attention` (every attention projection of
both block kinds, the queries and keys that set how frames mix included; pv does not offer it).
The tiny model's frames are uncorrelated random weights: its "motion" cannot decide placement.
`--sets attention --out FILE` runs one set."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from wan_targets import comparison_sets, main  # noqa: E402  (the same measurement and command line)

ALL_ATTENTION = (r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
                 r"|single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)")


def backbone(targets: str):
    from pv_hunyuanvideo.backbone import make_tiny_hunyuanvideo

    return comparison_sets(make_tiny_hunyuanvideo(), targets, ALL_ATTENTION, "mixing")


if __name__ == "__main__":
    main("tiny-hunyuan", backbone, "hunyuan_targets.json")
