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
from pvcli.errors import PVError

DEFAULT_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"  # backbone.options.model when a profile names none
# --control's VACE model for each T2V model it was built on (vace.py builds it around the T2V transformer)
VACE_MODELS = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "Wan-AI/Wan2.1-VACE-1.3B-diffusers",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": "Wan-AI/Wan2.1-VACE-14B-diffusers",
}
WAN21 = "use a Wan 2.1 profile (wan2.1-1.3b, wan2.1-14b)"


def no_video(kind: str) -> PVError:
    # diffusers' WanVideoToVideoPipeline has no transformer_2 (A14B's low-noise expert, where the
    # identity lives) and no 16x VAE / expand_timesteps (TI2V-5B): it would run the wrong model
    return PVError(f"--video is not available on Wan 2.2 ({kind}): diffusers' Wan video-to-video pipeline "
                   "drives only Wan 2.1's single transformer and VAE", f"{WAN21} for --video")


def no_control_on_experts(base: str) -> PVError:
    return PVError(f"--control is not available on {base} (two experts)", f"{WAN21} for --control")


def no_vace(base: str) -> PVError:
    return PVError(f"--control: no VACE model is known for {base}",
                   "set backbone.options.vace_model to the VACE model built on it (a diffusers folder or hub id)")


def one_control(count: int, labels: str = "") -> PVError:
    return PVError(f"Wan VACE takes one control video, got {count}{f' ({labels})' if labels else ''}",
                   "give one --control")


VIDEO_WITH_CONTROL = PVError("--video and --control together are not available on Wan (VACE's control video is the "
                             "only clip it takes)", "use one of them")


def no_lora_on_experts(source: str = "") -> PVError:
    # diffusers' loader would put it on `transformer` (the high-noise expert), outside the modules
    # whose LoRA weights pv sets (lora_modules): its :WEIGHT would be ignored
    return PVError(f"--lora{' ' + source if source else ''}: style LoRAs on Wan 2.2 A14B's two experts are not supported yet",
                   "use a Wan 2.1 or Wan 2.2 TI2V-5B profile with --lora")


def check_vace_path(ref: str) -> None:
    """A VACE model given as a local path is a folder (a diffusers layout), checked before any model loads."""
    from pathlib import Path

    from pvcli.hub import looks_like_path

    path = Path(ref).expanduser()
    if path.exists() and not path.is_dir():
        raise PVError(f"backbone.options.vace_model {ref}: is a file, not a VACE model's diffusers folder",
                      "point it at the folder (with transformer/) or a hub id")
    if not path.exists() and looks_like_path(ref):
        raise PVError(f"backbone.options.vace_model {ref}: not found",
                      "check the path, or point --set backbone.options.vace_model=PATH at a local copy")


def _refuse(info: dict, asked: list[tuple[str, dict]], vace_model: str) -> None:
    """What this Wan model (as the identity recorded it) cannot take, before it loads: the same
    refusals as the backbone's own once loaded."""
    base = info.get("base_model") or info.get("backbone", "this Wan model")
    two_experts = bool(info.get("expert")) or info.get("architecture") == "wan2.2-a14b"
    kind = "A14B, two experts" if two_experts else "TI2V-5B" if info.get("architecture") == "wan2.2-ti2v-5b" else ""
    kinds = [k for k, _ in asked]
    controls = [o.get("type") or "control" for k, o in asked if k == "controlnet"]
    if "video" in kinds and kind:
        raise no_video(kind)
    if controls and two_experts:
        raise no_control_on_experts(base)
    if controls and not vace_model:
        raise no_vace(base)
    if controls and vace_model != "tiny":
        check_vace_path(vace_model)
    if len(controls) > 1:
        raise one_control(len(controls), ", ".join(controls))
    if controls and "video" in kinds:
        raise VIDEO_WITH_CONTROL
    for k, o in asked:
        if k == "lora" and two_experts:
            raise no_lora_on_experts(str(o.get("source", "")))


def refuse_wan(info: dict, options: dict, asked: list[tuple[str, dict]]) -> None:
    _refuse(info, asked, options.get("vace_model") or VACE_MODELS.get(options.get("model") or DEFAULT_MODEL, ""))


def refuse_wan_tiny(info: dict, options: dict, asked: list[tuple[str, dict]]) -> None:
    _refuse(info, asked, options.get("vace_model", "tiny"))


def wan(**kwargs):
    from .backbone import make_wan, with_speed_options

    return with_speed_options(make_wan(**kwargs), kwargs.get("options"))


def wan_tiny(**kwargs):
    from .backbone import make_tiny_wan, with_speed_options

    return with_speed_options(make_tiny_wan(**kwargs), kwargs.get("options"))


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
             size_multiple=size_multiple, refuse=refuse_wan, memory=real_size)
    register("wan-tiny", wan_tiny, description="tiny Wan built in-process, random weights (offline)",
             frames=check_frames, lora_formats=LORA_FORMATS, accepts=ACCEPTS, workflows=WORKFLOWS,
             size_multiple=tiny_size_multiple, refuse=refuse_wan_tiny, memory=tiny_real_size)
