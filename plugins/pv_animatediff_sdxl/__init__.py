"""Built-in backbones of the AnimateDiff-SDXL family: `animatediff-sdxl` (diffusers'
AnimateDiffSDXLPipeline on an SDXL base or community SDXL checkpoint + an SDXL motion adapter,
real weights) and `animatediff-sdxl-tiny` (the same architecture, SDXL-shaped: two text encoders,
pooled embeddings and size/crop time ids, built in-process with random weights, offline).

A plugin of its own, registered through the same entry point group as third-party plugins; it
builds on the SD 1.5 family's loader and backbone. Registration only names factories."""

from __future__ import annotations

from pvcli import hookimpl


def animatediff_sdxl(**kwargs):
    from .backbone import make_animatediff_sdxl

    return make_animatediff_sdxl(**kwargs)


def animatediff_sdxl_tiny(**kwargs):
    from .backbone import make_tiny_sdxl

    return make_tiny_sdxl(**kwargs)


# diffusers has no ControlNet or video-to-video variant of the SDXL AnimateDiff pipeline
ACCEPTS = frozenset({"lora"})


@hookimpl
def register_backbones(register):
    register("animatediff-sdxl", animatediff_sdxl,
             description="AnimateDiff-SDXL (SDXL + SDXL motion adapter), real weights", accepts=ACCEPTS)
    register("animatediff-sdxl-tiny", animatediff_sdxl_tiny,
             description="tiny SDXL-shaped AnimateDiff built in-process, random weights (offline)", accepts=ACCEPTS)
