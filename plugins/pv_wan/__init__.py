"""Built-in backbones of the Wan family (diffusion transformers with flow matching): `wan`
(diffusers' WanPipeline, real weights from the hub, the HF cache or a local folder: Wan 2.1 T2V
1.3B / 14B) and `wan-tiny` (the same architecture built in-process from small configs with a
fixed seed and random weights: offline, CPU, for quick starts and tests). `--control` runs
through Wan VACE (`WanVACEPipeline`, the `vace_model` backbone option), its VACE transformer built
around the backbone's own transformer so the identity adapter acts in it (vace.py).

Registration only names factories; torch and diffusers are imported when one is called."""

from __future__ import annotations

from pvcli import hookimpl
from pvcli.contracts import latent_frame_rule


def wan(**kwargs):
    from .backbone import make_wan

    return make_wan(**kwargs)


def wan_tiny(**kwargs):
    from .backbone import make_tiny_wan

    return make_tiny_wan(**kwargs)


def real_size(options):
    from .memory import real_size

    return real_size(options)


def tiny_real_size(options):
    from .memory import tiny_real_size

    return tiny_real_size(options)


# Wan renders 4k+1 frames (its VAE folds 4 frames into one latent frame)
check_frames = latent_frame_rule(4, "Wan")


def comfy_lora(state, meta):
    from .lora_keys import comfy_lora

    return comfy_lora(state, meta)


# `pv export --format comfy` of a Wan identity: ComfyUI's native Wan keys, not kohya's UNet keys
LORA_FORMATS = {"comfy": comfy_lora}


# video-to-video: WanVideoToVideoPipeline; control maps: its own VACE model
ACCEPTS = frozenset({"lora", "video", "control_maps"})


@hookimpl
def register_backbones(register):
    register("wan", wan, description="Wan 2.1 text-to-video (diffusion transformer, flow matching), real weights",
             frames=check_frames, lora_formats=LORA_FORMATS, accepts=ACCEPTS, memory=real_size)
    register("wan-tiny", wan_tiny, description="tiny Wan built in-process, random weights (offline)",
             frames=check_frames, lora_formats=LORA_FORMATS, accepts=ACCEPTS, memory=tiny_real_size)
