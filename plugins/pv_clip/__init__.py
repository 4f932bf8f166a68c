"""Built-in frame scorers for the Semantic Consistency Reward: `clip` (a CLIP model through
transformers: `openai/clip-vit-base-patch32` by default, any CLIP or HPSv2-style CLIP checkpoint
by hub id or folder) and `clip-tiny` (built in-process from a small config, random weights)."""

from __future__ import annotations

from pvcli import hookimpl


def clip(**kwargs):
    from .scorer import make_clip

    return make_clip(**kwargs)


def clip_tiny(**kwargs):
    from .scorer import make_clip_tiny

    return make_clip_tiny(**kwargs)


@hookimpl
def register_scorers(register):
    register("clip", clip, description="CLIP image-text score (transformers; real weights)")
    register("clip-tiny", clip_tiny, description="tiny CLIP built in-process, random weights (offline)")
