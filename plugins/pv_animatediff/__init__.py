"""Built-in backbones: `animatediff` (diffusers AnimateDiff on a Stable Diffusion 1.5 base, real
weights from the hub, the HF cache, local folders or single-file checkpoints) and
`animatediff-tiny` (the same architecture built in-process from small configs with a fixed
seed and random weights: the offline default for quick starts and tests)."""

from __future__ import annotations

from pvcli import hookimpl


@hookimpl
def register_backbones(register):
    from .backbone import make_animatediff, make_tiny

    register("animatediff", make_animatediff, description="AnimateDiff (SD 1.5 + motion adapter), real weights")
    register("animatediff-tiny", make_tiny, description="tiny AnimateDiff built in-process, random weights (offline)")
