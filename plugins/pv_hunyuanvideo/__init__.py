"""Built-in backbones of the HunyuanVideo family (a dual-stream/single-stream diffusion
transformer with flow matching, embedded guidance, a LLaMA + CLIP text side and a 3D VAE that
folds 4 frames into one latent frame): `hunyuanvideo` (diffusers' HunyuanVideoPipeline, real
weights from the hub, the HF cache or a local folder: hunyuanvideo-community/HunyuanVideo) and
`hunyuanvideo-tiny` (the same architecture built in-process from small configs with a fixed seed
and random weights: offline, CPU, for quick starts and tests).

Registration only names factories; torch and diffusers are imported when one is called."""

from __future__ import annotations

from pvcli import hookimpl
from pvcli.contracts import latent_frame_rule


def hunyuanvideo(**kwargs):
    from .backbone import make_hunyuanvideo, with_speed_options

    return with_speed_options(make_hunyuanvideo(**kwargs), kwargs.get("options"))


def hunyuanvideo_tiny(**kwargs):
    from .backbone import make_tiny_hunyuanvideo, with_speed_options

    return with_speed_options(make_tiny_hunyuanvideo(**kwargs), kwargs.get("options"))


def real_size(options):
    from .memory import real_size

    return real_size(options)


def tiny_real_size(options):
    from .memory import tiny_real_size

    return tiny_real_size(options)


# HunyuanVideo renders 4k+1 frames (its VAE folds 4 frames into one latent frame)
check_frames = latent_frame_rule(4, "HunyuanVideo")


def comfy_lora(state, meta):
    from .lora_keys import comfy_lora

    return comfy_lora(state, meta)


def comfy_workflow(meta, settings, lora_name):
    from .workflow import comfy_workflow

    return comfy_workflow(meta, settings, lora_name)


# `pv export --format comfy` of a HunyuanVideo identity: the original HunyuanVideo keys (fused qkv),
# and beside them a ComfyUI workflow that renders pv's clip (the identity's gate)
LORA_FORMATS = {"comfy": comfy_lora}
WORKFLOWS = {"comfy": comfy_workflow}


def size_multiple(options: dict) -> int:
    return 16  # the VAE's 8x spatial factor times the transformer's 2x2 patches


# diffusers has no HunyuanVideo ControlNet or video-to-video pipeline
ACCEPTS = frozenset({"lora"})


@hookimpl
def register_backbones(register):
    register("hunyuanvideo", hunyuanvideo,
             description="HunyuanVideo text-to-video (13B dual/single-stream diffusion transformer), real weights",
             frames=check_frames, lora_formats=LORA_FORMATS, accepts=ACCEPTS,
             workflows=WORKFLOWS, size_multiple=size_multiple, memory=real_size)
    register("hunyuanvideo-tiny", hunyuanvideo_tiny, description="tiny HunyuanVideo built in-process, random weights (offline)",
             frames=check_frames, lora_formats=LORA_FORMATS, accepts=ACCEPTS,
             workflows=WORKFLOWS, size_multiple=size_multiple, memory=tiny_real_size)
