"""Typed settings and the profile layers: defaults -> profile YAML -> `--set a.b=v` -> flags.

Profiles are sparse YAML overlays. Every value is validated into its typed field (YAML 1.1
reads `1e-4` as a string: it is converted here), unknown keys are rejected with the path
of the offending key. Plugin-specific options (`backbone.options`, `encoder.options`) are
validated by the plugin that receives them.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import PVError


@dataclass
class BackboneSettings:
    name: str = ""  # a registered backbone; profiles set it (the core names no backbone)
    options: dict = field(default_factory=dict)


@dataclass
class EncoderSettings:
    name: str = "facenet"
    options: dict = field(default_factory=dict)


@dataclass
class AdapterSettings:
    targets: Literal["attention", "spatial"] = "attention"
    rank: int = 16
    alpha: float = 16.0
    # late-step gating: the adapter acts only in the last fraction of denoising steps (1.0 = all)
    active_fraction: float = 0.25


@dataclass
class TuneSettings:
    steps: int = 500
    lr: float = 2e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    warmup_steps: int = 10
    seed: int = 0
    frames: int = 16
    height: int = 512
    width: int = 512
    num_inference_steps: int = 25
    grad_steps: int = 2
    guidance_scale: float = 7.5
    # a model of two experts split by noise level: the second (low-noise) expert's
    # guidance scale, diffusers' guidance_scale_2 (guidance_scale is then the high-noise expert's); 0: unset
    guidance_scale_2: float = 0.0
    supervised_frames: int = 4
    # what the ID loss (and SCR) reads: last = the sampler's final sample, what generation decodes;
    # random = the predicted clean sample x0 at a step drawn at random inside the open gate (the
    # trajectory stops there), with gradient through the grad_steps steps ending at it
    supervise_at: Literal["last", "random"] = "last"
    # draw the supervised (and SCR) frames from the clip's first N frames only (0 = the whole
    # clip): with a causal video VAE, which decodes every frame up to the last supervised one under
    # gradient, this bounds the decoder's memory whatever tune.frames is
    supervised_window: int = 0
    # clips sampled (and gradients accumulated) per optimizer step: the effective batch on one
    # device; N processes with --processes multiply it by N
    clips_per_step: int = 1
    # with --processes N: split the frozen denoiser's weights across the N processes (FSDP2), each
    # keeping 1/N and gathering a block's only while it runs; the adapter stays whole on each.
    # Alone it changes nothing. The processes then run the same denoiser calls (the held-out
    # measure and the samples on every process), so it cannot be combined with tune.trajectory_pool
    fsdp: bool = False
    # 0: fresh prompt and noise for every clip (the paper). N > 0: clips draw from N fixed
    # (prompt, noise) pairs and reuse their adapter-free early denoising steps (computed once per
    # pair), so a step costs only the adapted tail once the pool is warm. Needs late-step gating
    # (adapter.active_fraction < 1); fewer distinct clips, so use N in the tens.
    trajectory_pool: int = 0
    no_face: Literal["center", "skip"] = "center"
    token: str = "sks"
    class_word: str = "person"
    augment: bool = True  # simulated prompt augmentation; false = one fixed prompt (ablation)
    prompts_mode: Literal["replace", "extend"] = "replace"  # how --prompts FILE combines with the built-ins
    reference_augment: bool = True  # crop and colour jitter of the reference faces every step
    scr_weight: float = 0.0  # Semantic Consistency Reward weight (0 = off)
    scorer: str = "clip"
    scorer_options: dict = field(default_factory=dict)
    scr_frames: int = 4
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    gradient_checkpointing: bool = False
    # the text encoders leave the accelerator once every tuning prompt is embedded (auto: on any
    # device but the CPU; always: also on the CPU, where it changes nothing but is checked)
    offload_text_encoder: Literal["auto", "always", "never"] = "auto"
    # memory switches (issue 31; the planner, `pv tune --dry-run`, chooses among them):
    # recompute the decoder's activations in backward (a causal video decoder: per latent frame with its feature cache)
    decoder_checkpointing: bool = False
    # the decode under gradient runs under autocast to bfloat16 (the detached decodes stay float32)
    decode_dtype: Literal["float32", "bfloat16"] = "float32"
    # faces: decode the supervised frames without gradient, find the faces, then decode under gradient
    # only the latent window around them (plus face_margin latent pixels; -1: the backbone's own
    # window_margin, its decoder's reach) and crop the faces from it
    face_decode: Literal["full", "faces"] = "full"
    face_margin: int = -1
    # blocks: the denoiser's frozen blocks wait on the host and come to the accelerator one at a time
    offload: Literal["none", "blocks"] = "none"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    sample_every: int = 0
    # clips from unseen seeds whose ID similarity is measured before and after tuning (0 = skip)
    held_out: int = 3
    # experiment tracker for every step's scalars, the samples and the settings (pip install "pv[tracking]")
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    logging_dir: str = ""  # where the tracker's logs go ("" = $PV_HOME/logs)
    # the GPU memory a tuning step must fit: auto (the free memory of the CUDA device it runs on) or a
    # number of GiB; pv turns on the cheapest memory switches whose traced peak fits (engine/memplan.py)
    memory: str = "auto"


@dataclass
class GenerateSettings:
    frames: int = 16
    fps: int = 8
    height: int = 512
    width: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    guidance_scale_2: float = 0.0  # the second (low-noise) expert's, as tune.guidance_scale_2; 0: unset
    seed: int = 0
    negative_prompt: str = "blurry, low quality, deformed face, watermark"
    adapter_scale: float = 1.0
    # clips longer than the motion window: FreeNoise's sliding windows (0 = the backbone's window)
    context_length: int = 0
    context_stride: int = 4
    strength: float = 0.6  # video-to-video: how much of the driving clip is redrawn (0..1)
    # options per conditioner plugin, by name, under what the command line gives each add-on
    # (e.g. controlnet: {models: {canny: PATH}}); see the plugin's own options
    conditioners: dict = field(default_factory=dict)


@dataclass
class Settings:
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)

    def to_dict(self) -> dict:
        return asdict(self)


INT_LIMIT = 2**64 - 1  # the widest integer a setting holds (a seed: torch takes -2**63 .. 2**64 - 1)
SEED_RANGE = (-(2**63), 2**64 - 1)
MAX_FRAMES, MAX_SIDE = 100_000, 16_384  # far beyond any model; a crafted 10**20 fails here, not in torch
_RANGES = {
    "tune.seed": SEED_RANGE, "generate.seed": SEED_RANGE,
    "adapter.rank": (1, 1024), "adapter.alpha": (1e-6, None),
    "tune.steps": (0, None), "tune.lr": (0.0, 1.0), "tune.frames": (1, MAX_FRAMES), "tune.height": (8, MAX_SIDE),
    "tune.width": (8, MAX_SIDE), "tune.num_inference_steps": (1, 1000), "tune.grad_steps": (1, 1000),
    "tune.guidance_scale": (0.0, None), "tune.guidance_scale_2": (0.0, None), "tune.supervised_frames": (1, None), "tune.clips_per_step": (1, 1024),
    "tune.trajectory_pool": (0, 100000), "tune.grad_clip": (0.0, None),
    "tune.warmup_steps": (0, None), "tune.weight_decay": (0.0, None), "adapter.active_fraction": (1e-6, 1.0),
    "tune.scr_weight": (0.0, None), "tune.scr_frames": (2, None), "tune.checkpoint_every": (0, None),
    "tune.keep_checkpoints": (1, None), "tune.sample_every": (0, None),
    "tune.held_out": (0, None), "tune.supervised_window": (0, None), "tune.face_margin": (-1, 256),
    "generate.frames": (1, MAX_FRAMES), "generate.fps": (1, 240), "generate.height": (8, MAX_SIDE),
    "generate.width": (8, MAX_SIDE), "generate.steps": (1, 1000), "generate.guidance_scale": (0.0, None),
    "generate.guidance_scale_2": (0.0, None),
    "generate.adapter_scale": (0.0, None), "generate.context_length": (0, None), "generate.context_stride": (1, None),
    "generate.strength": (0.01, 1.0),
}
# the command-line flag that sets a setting, named in range errors beside the setting
_FLAGS = {
    "generate.steps": "--steps", "generate.frames": "--frames", "generate.fps": "--fps", "generate.height": "--height",
    "generate.width": "--width", "generate.guidance_scale": "--guidance", "generate.adapter_scale": "--adapter-scale",
    "generate.strength": "--strength", "tune.steps": "--steps", "tune.lr": "--lr", "adapter.rank": "--rank",
    "adapter.active_fraction": "--active-fraction", "tune.scr_weight": "--scr-weight",
    "tune.clips_per_step": "--clips-per-step", "tune.report_to": "--report-to",
}


def _flag_hint(path: str) -> str | None:
    return f"set by {_FLAGS[path]} or --set {path}=VALUE" if path in _FLAGS else None


_MULTIPLE_OF_8 = {"tune.height", "tune.width", "generate.height", "generate.width"}


def _coerce(path: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise PVError(f"{path} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise PVError(f"{path} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise PVError(f"{path} must be an integer, got {value!r}")
        if len(str(value).strip().lstrip("-")) > 20 or not -INT_LIMIT <= int(value) <= INT_LIMIT:
            raise PVError(f"{path} must be an integer between {-INT_LIMIT} and {INT_LIMIT}, got {str(value)[:40]}",
                          _flag_hint(path))
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise PVError(f"{path} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PVError(f"{path} must be a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):  # nan passes every range check
            raise PVError(f"{path} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise PVError(f"{path} must be text, got {value!r}")
        return str(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise PVError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, types.UnionType):
        raise PVError(f"{path}: union types are not supported in settings")
    raise PVError(f"{path}: unsupported setting type {tp}")


def _merge_into(obj: Any, data: dict, prefix: str) -> None:
    if not isinstance(data, dict):
        raise PVError(f"{prefix or 'profile'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise PVError(f"unknown setting {path!r}", f"known in {prefix.rstrip('.') or 'profile'}: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge_into(current, value or {}, f"{path}.")
        elif isinstance(current, dict) and isinstance(value, dict):
            merged = copy.deepcopy(current)
            merged.update(value)
            setattr(obj, key, merged)
        else:
            setattr(obj, key, _coerce(path, hints[key], value))


def parse_memory(value, what: str = "tune.memory") -> float | None:
    """`auto` -> None (the card pv detects), else a number of GiB above 0; anything else is one line."""
    import math

    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        gib = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        gib = float("nan")
    if not math.isfinite(gib) or gib <= 0:
        raise PVError(f"{what} must be auto or a number of GiB above 0, got {value!r}",
                      "e.g. 24 for a 24 GB card; auto detects the GPU pv tunes on")
    return gib


def _validate(s: Settings) -> None:
    parse_memory(s.tune.memory)
    if not s.backbone.name:
        raise PVError("no backbone is set", "choose a --profile (see `pv profiles`) or --set backbone.name=NAME")
    for path, (lo, hi) in _RANGES.items():
        section, key = path.split(".")
        v = getattr(getattr(s, section), key)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise PVError(f"{path} must be {bound}, got {v}", _flag_hint(path))
    for path in _MULTIPLE_OF_8:
        section, key = path.split(".")
        if getattr(getattr(s, section), key) % 8:
            raise PVError(f"{path} must be a multiple of 8, got {getattr(getattr(s, section), key)}", _flag_hint(path))
    if s.tune.grad_steps > s.tune.num_inference_steps:
        raise PVError(f"tune.grad_steps ({s.tune.grad_steps}) cannot exceed tune.num_inference_steps "
                      f"({s.tune.num_inference_steps})")
    for section in (s.tune, s.generate):
        where = "tune" if section is s.tune else "generate"
        if section.guidance_scale_2 > 1 and section.guidance_scale <= 1:
            raise PVError(f"{where}.guidance_scale_2 ({section.guidance_scale_2:g}) needs {where}.guidance_scale above 1 "
                          f"(got {section.guidance_scale:g}): classifier-free guidance runs only when the first "
                          "expert's scale is above 1 (as diffusers' pipelines)", f"raise {where}.guidance_scale")
    if s.tune.supervised_frames > s.tune.frames:
        raise PVError(f"tune.supervised_frames ({s.tune.supervised_frames}) cannot exceed tune.frames ({s.tune.frames})")
    if s.tune.fsdp and s.tune.trajectory_pool:
        raise PVError("tune.fsdp cannot be combined with tune.trajectory_pool: sharded processes must run the "
                      "same denoiser calls, and each process's pool reuses its own",
                      "set tune.trajectory_pool=0, or tune.fsdp=false")
    window = s.tune.supervised_window
    if window:
        if window > s.tune.frames:
            raise PVError(f"tune.supervised_window ({window}) cannot exceed tune.frames ({s.tune.frames})",
                          "0 draws from the whole clip")
        drawn = s.tune.supervised_frames  # the ID loss's frames (SCR's are drawn over the whole clip)
        if drawn > window:
            raise PVError(f"tune.supervised_window ({window}) is smaller than the {drawn} frames drawn from it",
                          "raise it, or lower tune.supervised_frames")


def check_seed(seed, where: str = "--seed") -> int:
    """A seed torch's generators take (pv's clip seeds bypass the settings: --seed, a stdin line's seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise PVError(f"{where} must be an integer between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {str(seed)[:40]}")
    return seed


def shipped_profiles() -> dict[str, Path]:
    root = resources.files("pvcli.profiles")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def default_profile() -> str:
    """The shipped profile marked `default: true`."""
    for name, path in sorted(shipped_profiles().items()):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("default") is True:
            return name
    raise PVError("no shipped profile is marked as the default", "pass --profile NAME")


def read_profile(name_or_path: str) -> tuple[str, dict]:
    """Return (profile name, overlay dict) for a shipped profile name or a YAML file path."""
    shipped = shipped_profiles()
    if name_or_path in shipped:
        path, name = shipped[name_or_path], name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise PVError(f"no profile {name_or_path!r}", f"shipped profiles: {', '.join(sorted(shipped))}; or pass a YAML file")
        name = str(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PVError(f"cannot read profile {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PVError(f"profile {path} must be a YAML mapping")
    description = data.pop("description", "")
    data.pop("default", None)
    return name, {"description": description, **data}


def _profile_layers(profile: str, seen: tuple = ()) -> tuple[str, list[dict]]:
    """A profile's overlays, base first: `extends: NAME` layers another profile under it, and a
    profile file that names no backbone extends the default profile."""
    name, data = read_profile(profile)
    data.pop("description", None)
    base = data.pop("extends", None)
    if base is None and not (data.get("backbone") or {}).get("name") and profile != default_profile():
        base = default_profile()
    if base is None:
        return name, [data]
    if base in seen or base == profile:
        raise PVError(f"profile {profile!r} extends itself through {base!r}")
    return name, [*_profile_layers(str(base), (*seen, profile))[1], data]


def parse_set(items: list[str]) -> dict:
    """`a.b=v` items into a nested overlay; values are parsed as YAML scalars."""
    overlay: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PVError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = overlay
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PVError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = value
    return overlay


def overlay(values: dict[str, Any]) -> dict:
    """{"tune.steps": 3, "generate.seed": None} -> {"tune": {"steps": 3}}: dotted keys nested, None skipped."""
    nested: dict = {}
    for path, value in values.items():
        if value is None:
            continue
        node = nested
        *sections, key = path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return nested


def resolve(profile: str | None = None, overlays: list[dict] | None = None) -> tuple[str, Settings]:
    """Defaults, then the profile, then each overlay in order; validated."""
    name, layers = _profile_layers(profile or default_profile())
    settings = Settings()
    for data in layers:
        _merge_into(settings, data, "")
    for overlay in overlays or []:
        _merge_into(settings, overlay, "")
    _validate(settings)
    return name, settings


def from_dict(data: dict, overlays: list[dict] | None = None) -> Settings:
    """Rebuild settings saved with an identity or run, then apply overlays; validated the same way."""
    settings = Settings()
    for layer in [data, *(overlays or [])]:
        _merge_into(settings, layer, "")
    _validate(settings)
    return settings


def validate_options(cls: type, options: dict, where: str):
    """Helper for plugins: validate an options mapping into the dataclass `cls`."""
    obj = cls()
    _merge_into(obj, options or {}, f"{where}.")
    return obj
