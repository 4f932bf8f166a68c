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
    from .backbone import make_wan, with_speed_options

    return with_speed_options(make_wan(**kwargs), kwargs.get("options"))


def wan_tiny(**kwargs):
    from .backbone import make_tiny_wan, with_speed_options

    return with_speed_options(make_tiny_wan(**kwargs), kwargs.get("options"))


# Wan renders 4k+1 frames (its VAE folds 4 frames into one latent frame)
check_frames = latent_frame_rule(4, "Wan")


def comfy_lora(state, meta):
    from .lora_keys import comfy_lora

    return comfy_lora(state, meta)


def comfy_workflow(meta, settings, lora_name):
    from .workflow import comfy_workflow

    return comfy_workflow(meta, settings, lora_name)


# `pv export --format comfy` of a Wan identity: ComfyUI's native Wan keys, not kohya's UNet keys, and
# beside them a ComfyUI workflow that renders pv's clip (the identity's gate, the A14B experts)
LORA_FORMATS = {"comfy": comfy_lora}
WORKFLOWS = {"comfy": comfy_workflow}


def size_multiple(options: dict) -> int:
    """The pixel multiple of a clip's height and width: the VAE's spatial factor times the 2x2
    patches, 16 on Wan 2.1 (8x VAE), 32 on Wan 2.2 TI2V-5B (16x VAE); a local folder says its own."""
    import json
    from pathlib import Path

    model = str(options.get("model") or "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    config = Path(model).expanduser() / "vae" / "config.json"
    if config.is_file():
        try:
            vae = json.loads(config.read_text())
            return 2 * int(vae.get("scale_factor_spatial") or 2 ** len(vae.get("temperal_downsample", [0, 0, 0])))
        except (OSError, ValueError):
            pass  # an unreadable folder fails to load with its own error
    return 32 if "ti2v-5b" in model.lower() else 16


def tiny_size_multiple(options: dict) -> int:
    return 16  # tiny-wan: an 8x VAE and 2x2 patches


# video-to-video: WanVideoToVideoPipeline; control maps: its own VACE model
ACCEPTS = frozenset({"lora", "video", "control_maps"})


@hookimpl
def register_backbones(register):
    register("wan", wan, description="Wan 2.1 text-to-video (diffusion transformer, flow matching), real weights",
             frames=check_frames, lora_formats=LORA_FORMATS, accepts=ACCEPTS, workflows=WORKFLOWS,
             size_multiple=size_multiple)
    register("wan-tiny", wan_tiny, description="tiny Wan built in-process, random weights (offline)",
             frames=check_frames, lora_formats=LORA_FORMATS, accepts=ACCEPTS, workflows=WORKFLOWS,
             size_multiple=tiny_size_multiple)
