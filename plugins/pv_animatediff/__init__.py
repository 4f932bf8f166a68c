"""Built-in backbones: `animatediff` (diffusers AnimateDiff on a Stable Diffusion 1.5 base, real
weights from the hub, the HF cache, local folders or single-file checkpoints) and
`animatediff-tiny` (the same architecture built in-process from small configs with a fixed
seed and random weights: the offline default for quick starts and tests).

Registration only names factories; torch and diffusers are imported when one is called."""

from __future__ import annotations

from pvcli import hookimpl


def animatediff(**kwargs):
    from .backbone import make_animatediff

    return make_animatediff(**kwargs)


def animatediff_tiny(**kwargs):
    from .backbone import make_tiny

    return make_tiny(**kwargs)


# ControlNet, video-to-video and style LoRAs through diffusers' AnimateDiff pipelines
ACCEPTS = frozenset({"controlnet", "video", "lora"})


@hookimpl
def register_backbones(register):
    register("animatediff", animatediff, description="AnimateDiff (SD 1.5 + motion adapter), real weights",
             accepts=ACCEPTS)
    register("animatediff-tiny", animatediff_tiny,
             description="tiny AnimateDiff built in-process, random weights (offline)", accepts=ACCEPTS)
