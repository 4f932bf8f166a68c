"""The `controlnet` conditioner: control maps from a video, a folder of frames or one image
(resampled to the clip's frames and size), through a preprocessor or given ready, into a
ControlNet model (hub id, folder, single file, or `tiny`: built in-process from the backbone's
UNet config with random weights, for offline use and tests).

A backbone whose `accepts` has "control_maps" instead brings its own control model (Wan: VACE,
built around its transformer): this conditioner then hands it only the maps
(`ControlInput.model` None), with their scale and start/end, and `--control-model` is refused."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pvcli.contracts import Backbone, Conditioner, ControlInput, GenerationPlan
from pvcli.errors import PVError
from pvcli.hub import load_pretrained
from pvcli.settings import validate_options

from .preprocess import PREPROCESSORS

# Defaults per base family (Backbone.describe()["base_model_version"]); profiles and --control-model override.
DEFAULT_MODELS = {
    "sd_v1": {"canny": "lllyasviel/control_v11p_sd15_canny", "depth": "lllyasviel/control_v11f1p_sd15_depth",
              "pose": "lllyasviel/control_v11p_sd15_openpose", "lineart": "lllyasviel/control_v11p_sd15_lineart"},
}
# loaded ControlNets, per backbone (many clips, one load): two backbones never share one (a tiny
# ControlNet is shaped after its backbone), and a backbone's go when it goes
_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def own_control_model(kind: str, backbone: str) -> PVError:
    return PVError(f"--control-model {kind}=...: the {backbone} backbone brings its own control model",
                   "drop --control-model (its backbone options name the control model)")


@dataclass
class ControlNetOptions:
    type: str = "canny"  # preprocessor: canny, depth, pose, lineart (the map kind when raw)
    source: str = ""  # a video, a folder of frames or one image
    raw: bool = False  # the source already holds control maps
    model: str = ""  # ControlNet: hub id, folder, single file or "tiny"; default: models[type]
    models: dict = field(default_factory=dict)  # per-type ControlNets (profiles set these)
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    low_threshold: int = 100  # canny
    high_threshold: int = 200
    depth_model: str = ""
    pose_model: str = ""
    lineart_model: str = ""
    seed: int = 0  # the tiny ControlNet's weights


class ControlNetConditioner(Conditioner):
    name = "controlnet"

    def __init__(self, opts: ControlNetOptions, device: str | None):
        self.opts, self.device = opts, device

    @property
    def flag(self) -> str:
        """How the source was given, for errors: --control canny= / --control-raw canny=."""
        return f"--control{'-raw' if self.opts.raw else ''} {self.opts.type}="

    def check(self, target: dict | None = None) -> None:
        """Before any model loads: the source is a readable video, folder of frames or image, and
        a ControlNet given as a local path exists and is a model."""
        from pvcli.video import probe_source

        o = self.opts
        accepts = (target or {}).get("accepts")
        if accepts is not None and not accepts & {"controlnet", "control_maps"}:
            raise no_control(target["backbone"])
        if accepts is not None and "controlnet" not in accepts and o.model:  # its own control model
            raise own_control_model(o.type, target.get("backbone", "this"))
        if not o.source:
            raise PVError("a ControlNet needs a source", "e.g. --control canny=clip.mp4")
        probe_source(o.source, self.flag)
        ref = o.model or o.models.get(o.type) or DEFAULT_MODELS.get((target or {}).get("base_model_version", ""),
                                                                   {}).get(o.type)
        if ref and ref != "tiny":
            check_model_path(ref, o.type)

    def apply(self, backbone: Backbone, plan: GenerationPlan) -> None:
        own_model = "control_maps" in backbone.accepts  # the backbone drives its own control model
        if "controlnet" not in backbone.accepts and not own_model:
            raise no_control(backbone.name)
        from pvcli.video import read_source, resample

        o = self.opts
        if not o.source:
            raise PVError("a ControlNet needs a source", "e.g. --control canny=clip.mp4")
        if own_model and o.model:
            raise own_control_model(o.type, backbone.name)
        frames = resample(read_source(o.source, self.flag), plan.frames, plan.height, plan.width)
        maps = frames if o.raw else self._preprocess(frames)
        tensor = torch.from_numpy(maps).permute(0, 3, 1, 2).float() / 255
        if own_model:  # maps only: the backbone's pipeline_call runs them through its control model
            plan.controls.append(ControlInput(None, tensor, o.scale, o.start, o.end, label=o.type))
            plan.record.setdefault("controls", []).append(
                {"type": o.type, "source": o.source, "raw": o.raw, "scale": o.scale, "start": o.start, "end": o.end})
            return
        ref = self._model_ref(backbone)
        plan.controls.append(ControlInput(load_controlnet(ref, backbone, o.seed, o.type), tensor, o.scale, o.start, o.end,
                                          label=o.type))
        plan.record.setdefault("controls", []).append(
            {"type": o.type, "source": o.source, "raw": o.raw, "model": ref, "scale": o.scale, "start": o.start,
             "end": o.end})

    def _preprocess(self, frames):
        o = self.opts
        if o.type == "canny":
            return PREPROCESSORS["canny"](frames, o.low_threshold, o.high_threshold)
        model = getattr(o, f"{o.type}_model", "")
        return PREPROCESSORS[o.type](frames, model) if model else PREPROCESSORS[o.type](frames)

    def _model_ref(self, backbone: Backbone) -> str:
        o = self.opts
        family = backbone.describe().get("base_model_version", "")
        ref = o.model or o.models.get(o.type) or DEFAULT_MODELS.get(family, {}).get(o.type)
        if not ref:
            raise PVError(f"no ControlNet model for {o.type!r} on backbone {backbone.name!r}",
                          f"pass --control-model {o.type}=HUB_ID_OR_PATH")
        return ref


def make_controlnet(options: dict | None = None, device: str | None = None) -> ControlNetConditioner:
    opts = validate_options(ControlNetOptions, options or {}, "controlnet")
    if not _valid_type(opts.type, opts.raw):
        raise PVError(f"unknown control type {opts.type!r}", f"choose {', '.join(PREPROCESSORS)} "
                      "(any name works with --control-raw)")
    if not 0 <= opts.start < opts.end <= 1:
        raise PVError(f"control start/end must satisfy 0 <= start < end <= 1, got {opts.start}/{opts.end}")
    if opts.scale < 0:
        raise PVError(f"--control-scale must be >= 0, got {opts.scale}")
    return ControlNetConditioner(opts, device)


def _valid_type(kind: str, raw: bool) -> bool:
    return raw or kind in PREPROCESSORS


def no_control(backbone: str) -> PVError:
    return PVError(f"--control is not available on the {backbone} backbone: it has no ControlNet pipeline "
                   "(it takes no control maps)", "generate without --control, or with a profile of a family that has "
                   "ControlNets (pv profiles)")


def check_model_path(ref: str, kind: str) -> None:
    """A ControlNet given as a local path (never a hub id): a single .safetensors/.ckpt file or a
    diffusers folder with its config.json."""
    from .lora_file import PICKLE_SUFFIXES, is_local, read_header

    if not is_local(ref):
        return
    path = Path(ref).expanduser()
    what = f"--control-model {kind}={ref}"
    if not path.exists():
        raise PVError(f"{what}: not found", "check the path; a ControlNet on the Hugging Face hub is given as owner/name")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PVError(f"{what} is a folder without config.json, not a diffusers ControlNet",
                          "give a diffusers ControlNet folder or a single .safetensors file")
        return
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        read_header(path, what, hint="give a diffusers ControlNet folder or a single .safetensors file")
    elif suffix not in PICKLE_SUFFIXES:
        raise PVError(f"{what} is not a ControlNet model file ({suffix or 'no suffix'})",
                      "give a diffusers ControlNet folder or a single .safetensors file")
    elif path.stat().st_size == 0:
        raise PVError(f"{what} is an empty file (0 bytes)", "download it again")


def load_controlnet(ref: str, backbone: Backbone, seed: int = 0, kind: str = "control"):
    """The ControlNet `ref` on the backbone's device and dtype, loaded once per backbone (and again
    if a local model's files change)."""
    param = next(backbone.unet.parameters())
    loaded = _LOADED.setdefault(backbone, {})
    key = (_source_key(ref), seed if ref == "tiny" else None, str(param.device), param.dtype)
    if key not in loaded:
        if ref == "tiny":
            model = tiny_controlnet(backbone, seed)
        else:
            from diffusers import ControlNetModel

            single = ref.lower().endswith((".safetensors", ".ckpt", ".pt", ".bin"))
            loader = ControlNetModel.from_single_file if single else ControlNetModel.from_pretrained
            model = load_pretrained(f"generate.conditioners.controlnet.models.{kind}", ref, loader,
                                    what=f"ControlNet ({kind})", torch_dtype=param.dtype,
                                    offline_hint=f"pass --control-model {kind}=PATH, or use the tiny profile's "
                                                 "`tiny` ControlNet offline")
        loaded[key] = model.to(param.device, param.dtype).eval().requires_grad_(False)
    return loaded[key]


def _source_key(ref: str):
    """What identifies a ControlNet's weights: a hub id or `tiny` as given; a local file or folder
    by its absolute path and its files' sizes and modification times (a relative path names
    another model in another directory, a model saved again at the same path is another model)."""
    from .lora_file import is_local

    if ref == "tiny" or not is_local(ref):
        return ref
    path = Path(ref).expanduser().resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return str(path), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists())


def tiny_controlnet(backbone: Backbone, seed: int = 0):
    """A ControlNet shaped to the backbone's UNet (its config), random weights under `seed`. A
    fresh ControlNet's zero convolutions (and its map embedding's last conv) would make it ignore
    its input, so they are randomised too."""
    from diffusers import ControlNetModel

    cfg = backbone.unet.config
    levels = int(math.log2(backbone.vae_scale_factor)) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ControlNetModel(
            in_channels=cfg.in_channels, block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.cross_attention_dim,
            norm_num_groups=cfg.norm_num_groups, attention_head_dim=cfg.num_attention_heads,
            down_block_types=tuple(t.replace("Motion", "2D") for t in cfg.down_block_types),
            conditioning_embedding_out_channels=tuple(8 * 2**i for i in range(levels)),
        )
        for module in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            torch.nn.init.normal_(module.weight, std=0.2)
        torch.nn.init.normal_(model.controlnet_cond_embedding.conv_out.weight, std=1.0)
    return model
