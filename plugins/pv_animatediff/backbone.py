from __future__ import annotations

import copy
import functools
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from pvcli.contracts import Backbone
from pvcli.errors import PVError
from pvcli.hub import explain, load_pretrained
from pvcli.settings import validate_options

from . import ACCEPTS
from .schedulers import make_scheduler

_BLOCKS = r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)"
# Spatial (per-frame) attention lives under `.attentions.`; the temporal attention of the
# motion modules has the same leaf names under `.motion_modules.` and must not be matched.
_ATTENTION = rf"{_BLOCKS}\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
_SPATIAL = (
    rf"({_ATTENTION}"
    rf"|{_BLOCKS}\.attentions\.\d+\.(proj_in|proj_out)"
    rf"|{_BLOCKS}\.attentions\.\d+\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)"
    rf"|{_BLOCKS}\.resnets\.\d+\.(conv1|conv2))"
)
TARGETS = {"attention": _ATTENTION, "spatial": _SPATIAL}
DECODE_CHUNK = 8


def quiet_libraries() -> None:
    """Library progress bars and warnings would pollute stderr; call before importing pipelines."""
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


class AnimateDiffBackbone(Backbone):
    accepts = ACCEPTS  # what it takes: the package's ACCEPTS, registered with it
    target_sets = TARGETS
    frame_mixing = "motion_modules"
    def __init__(self, name, unet, vae, text_encoder, tokenizer, scheduler, info: dict, device, dtype,
                 random_weights: bool = False):
        self.name = name
        self.random_weights = random_weights
        self.unet = unet.to(device, dtype).eval().requires_grad_(False)
        self.vae = vae.to(device, torch.float32).eval().requires_grad_(False)  # fp32 VAE: no black/NaN frames
        self.text_encoder = text_encoder.to(device, dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.info = info
        self.latent_channels = unet.config.in_channels
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.max_frames = int(unet.config.motion_max_seq_length)
        self._pipe = None

    def describe(self) -> dict[str, str]:
        # base_model_version / architecture: what kohya-format LoRA readers (A1111, ComfyUI) call an SD 1.x model
        return {"backbone": self.name, **self.info, "base_model_version": "sd_v1", "architecture": "stable-diffusion-v1"}

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].to(self.dtype)

    def predict_noise(self, latents, t, embeds):
        # UNetMotionModel wants the text embeddings once per frame: (batch * frames, tokens, dim)
        embeds = embeds.repeat_interleave(latents.shape[2], dim=0)
        return self.unet(latents.to(self.dtype), t, encoder_hidden_states=embeds).sample.float()

    # ----------------------------------------------------------------- generation (diffusers pipelines)
    long_videos = True  # FreeNoise: sliding motion windows past motion_max_seq_length

    def pipeline(self, controlnets: list | None = None, video: bool = False):
        """The diffusers AnimateDiff pipeline for the job, around this backbone's own modules (no
        copies): text-to-video or video-to-video, with ControlNet(s) or without. Built once; the
        variants share the modules through `from_pipe`."""
        import diffusers

        if self._pipe is None:
            self._pipe = diffusers.AnimateDiffPipeline(vae=self.vae, text_encoder=self.text_encoder,
                                                       tokenizer=self.tokenizer, unet=self.unet, motion_adapter=None,
                                                       scheduler=self.new_scheduler())
            self._pipe.set_progress_bar_config(disable=True)
        if not controlnets and not video:
            return self._pipe
        name = {(False, True): "AnimateDiffControlNetPipeline", (True, False): "AnimateDiffVideoToVideoPipeline",
                (True, True): "AnimateDiffVideoToVideoControlNetPipeline"}[(video, bool(controlnets))]
        extra = {"controlnet": controls_model(controlnets)} if controlnets else {}
        pipe = getattr(diffusers, name).from_pipe(self._pipe, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipeline_call(self, plan, *, prompt, negative_prompt, num_inference_steps, guidance_scale, generator,
                      callback_on_step_end=None) -> torch.Tensor:
        video = plan.video is not None
        pipe = self.pipeline([c.model for c in plan.controls], video=video)
        pipe.scheduler = self.new_scheduler()
        kwargs = dict(plan.call_kwargs)
        if plan.controls:
            many = len(plan.controls) > 1
            maps = [list(c.frames.to(self.device, torch.float32)) for c in plan.controls]  # per control: F maps (3, H, W)
            kwargs.update(
                conditioning_frames=maps if many else maps[0],
                controlnet_conditioning_scale=[c.scale for c in plan.controls] if many else plan.controls[0].scale,
                control_guidance_start=[c.start for c in plan.controls] if many else plan.controls[0].start,
                control_guidance_end=[c.end for c in plan.controls] if many else plan.controls[0].end,
            )
        if video:
            kwargs.update(video=list(plan.video.to(self.device, torch.float32)), strength=plan.strength)
        else:
            kwargs["num_frames"] = plan.frames
        long = plan.frames > self.max_frames
        if long:
            window = plan.context_length or self.max_frames
            if window > self.max_frames:
                raise PVError(f"context length {window} exceeds the motion module's window of {self.max_frames} frames")
            # FreeNoise reads only motion_adapter.config.motion_max_seq_length; the adapter's weights
            # already live in the UNet, so a config stand-in avoids a second copy of them
            object.__setattr__(pipe, "motion_adapter", SimpleNamespace(config=SimpleNamespace(
                motion_max_seq_length=self.max_frames)))
            pipe.enable_free_noise(context_length=window, context_stride=plan.context_stride)
        try:
            out = pipe(prompt=prompt, negative_prompt=negative_prompt, height=plan.height, width=plan.width,
                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                       output_type="latent", callback_on_step_end=callback_on_step_end, **kwargs)
        finally:
            if long:
                pipe.disable_free_noise()  # puts the motion modules' own blocks back, rebuilt trainable
                object.__setattr__(pipe, "motion_adapter", None)
                for name, module in self.unet.named_modules():
                    if name.endswith("motion_modules"):
                        module.requires_grad_(False)
        return out.frames  # latents (B, C, F, h, w): decoded by `decode`, in fp32

    def load_lora(self, source: str, name: str) -> None:
        """diffusers' loader: diffusers/PEFT or kohya/A1111 keys, a file, folder or hub id. A local
        file is loaded from there only, and a failure names it and what does not fit this backbone
        (its layers, their size); torch, peft and diffusers warnings stay off the terminal."""
        load_pipeline_lora(self.pipeline(), source, name, lambda exc: _lora_error(source, exc, self.describe()))

    def lora_modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.text_encoder]

    def enable_gradient_checkpointing(self) -> None:
        # diffusers' switch covers the UNet's resnets and spatial attention, not the motion modules
        # (0.42.1): those are checkpointed here. The decoder too: at 512 px it keeps ~5 GB per frame.
        self.unet.enable_gradient_checkpointing()
        self.vae.enable_gradient_checkpointing()
        for name, module in self.unet.named_modules():
            if name.endswith("motion_modules"):
                for block in module:
                    _checkpoint_forward(block)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        lat = latents.float() / self.vae.config.scaling_factor
        b, c, f, h, w = lat.shape
        lat = lat.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = torch.cat([self.vae.decode(chunk).sample for chunk in lat.split(DECODE_CHUNK)])
        frames = frames.reshape(b, f, *frames.shape[1:])
        return (frames / 2 + 0.5).clamp(0, 1)


def load_pipeline_lora(pipe, source: str, name: str, error) -> None:
    """A LoRA into a diffusers pipeline as adapter `name` (its own `load_lora_weights`, so every key
    format that pipeline reads): a local file from there only, else a hub id through the cache;
    `error(exc)` turns a local file's failure into the PVError to raise. Shared by the families."""
    path = Path(source).expanduser()

    def load(ref, local_files_only, **kw):
        return pipe.load_lora_weights(ref, adapter_name=name, local_files_only=local_files_only, **kw)

    with _quiet_lora_loading():
        if not path.is_file():
            load_pretrained("generate.conditioners.lora.source", source, load, what="style LoRA",
                            offline_hint="pass a local .safetensors file: --lora PATH")
            return
        try:
            load(str(path.parent), True, weight_name=path.name)
        except Exception as exc:
            raise error(exc) from None


@contextmanager
def _quiet_lora_loading():
    """diffusers logs a failed LoRA load at error level and peft warns about adapters: the caller
    reports the failure itself, in one line."""
    import warnings

    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity(dlog.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlog.set_verbosity(level)


_SIZE_MISMATCH = re.compile(r"size mismatch for ([\w.]+?)\.lora_[AB]\.[\w]+\.weight: copying a param with shape "
                            r"torch\.Size\(\[([\d, ]*)\]\) from checkpoint, the shape in current model is "
                            r"torch\.Size\(\[([\d, ]*)\]\)")
_MISSING_TARGETS = re.compile(r"Target modules \{'?([^,'}]+)'?.*\} not found in the base model")


def _lora_error(source: str, exc: Exception, info: dict) -> PVError:
    """A failed LoRA load as one line: which layer does not fit, and what the LoRA must be made for."""
    from pvcli.hub import short

    text = str(exc)
    model = info.get("base_model") or info.get("backbone", "this backbone")
    family = info.get("architecture") or info.get("base_model_version") or ""
    hint = f"use a LoRA made for this backbone's base model ({model}{', ' + family if family else ''})"
    size = _SIZE_MISMATCH.search(text)
    if size:
        layer, theirs, ours = size.groups()
        return PVError(f"--lora {source} was made for a model of another size: layer {layer} is [{theirs}] in the "
                       f"file and [{ours}] in {info.get('backbone', 'this backbone')}", hint)
    missing = _MISSING_TARGETS.search(text)
    if missing:
        return PVError(f"--lora {source} adapts layers {info.get('backbone', 'this backbone')} does not have "
                       f"(e.g. {missing.group(1)}): it was made for another model", hint)
    if "Invalid LoRA checkpoint" in text:
        return PVError(f"--lora {source} holds no LoRA tensors diffusers can read",
                       "a LoRA's tensors are named *lora_A*/*lora_B* (diffusers, PEFT) or *lora_down*/*lora_up* (kohya)")
    return PVError(f"cannot load --lora {source}: {short(exc)}", hint)


def _checkpoint_forward(module: torch.nn.Module) -> None:
    """Recompute `module`'s activations in backward when grad is on (its weights are untouched)."""
    import torch.utils.checkpoint

    if getattr(module, "_pv_checkpointed", False):
        return
    forward = module.forward

    def checkpointed(*args, **kwargs):
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    module.forward = checkpointed
    module._pv_checkpointed = True


def controls_model(controlnets: list):
    from diffusers.models.controlnets import MultiControlNetModel

    return controlnets[0] if len(controlnets) == 1 else MultiControlNetModel(controlnets)


# --------------------------------------------------------------------------- shared with other families
# Public: other backbone plugins (pv_animatediff_sdxl) build on these rather than on private names.


def resolve_device(device: str | None) -> str:
    """--device as asked ("auto" or none: cuda when available, else cpu); cuda without CUDA is one line."""
    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PVError(f"device {device!r} was asked for but CUDA is not available", "use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: str, cuda_auto: torch.dtype = torch.float16) -> torch.dtype:
    """backbone.options.dtype: "auto" is `cuda_auto` (fp16; the transformer families: bf16) on CUDA
    and fp32 elsewhere."""
    if dtype == "auto":
        return cuda_auto if device.startswith("cuda") else torch.float32  # fp16/bf16 are ~6x slower on CPU
    if dtype not in _DTYPES:
        raise PVError(f"backbone.options.dtype must be auto, {', '.join(_DTYPES)}; got {dtype!r}")
    return _DTYPES[dtype]


# --------------------------------------------------------------------------- tiny


@dataclass
class SpeedOptions:
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions (Ampere and newer); no effect on CPU
    compile: bool = False  # torch.compile the UNet in place (names, and so adapter keys, unchanged)
    # fp8: the frozen denoiser's weights stored in float8 (e4m3) and each layer upcast to the model's
    # dtype for its forward (diffusers' layerwise casting); the identity adapter stays in full precision
    weights: Literal["bf16", "fp8"] = "bf16"


def store_frozen_weights(backbone: Backbone, weights: str, modules: tuple[str, ...] = ("denoiser",)) -> Backbone:
    """`backbone.options.weights`: with fp8, the named frozen modules keep their weights in float8_e4m3fn
    and compute in the backbone's dtype (called before the adapter goes on: peft's LoRA layers added
    later keep their own precision, and diffusers skips the norms and embeddings its models list)."""
    if weights == "fp8":
        for name in modules:
            module = getattr(backbone, name, None)
            if module is not None:
                module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=backbone.dtype)
    backbone.weights = weights
    return backbone


def apply_speed_options(backbone: AnimateDiffBackbone, opts: SpeedOptions) -> AnimateDiffBackbone:
    if getattr(backbone, "weights", None) != opts.weights:  # a family that stored them itself keeps them
        store_frozen_weights(backbone, opts.weights)
    if opts.tf32 and backbone.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if opts.compile:
        backbone.unet.compile()  # traced at the first call, after the identity adapter is on
    return backbone


@dataclass
class TinyOptions(SpeedOptions):
    seed: int = 0
    dtype: str = "float32"
    scheduler: str = "ddim"  # ddim, lcm or euler-trailing (the few-step families' samplers)
    width: int = 32  # base channel count: 32 is the tiny model (1.8M UNet); 128 a mid-size one for benchmarks


def build_tiny_components(seed: int = 0, scheduler: str = "ddim", width: int = 32) -> dict:
    """Every AnimateDiff component, tiny, from configs, deterministic for a seed. UNet 1.8M
    params; a 3-level VAE (64 px frames -> 16x16 latents); pv's offline character tokenizer."""
    quiet_libraries()
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from pv_tiny import BOS_ID, CHAR_VOCAB_SIZE, EOS_ID, char_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        w = width
        unet2d = UNet2DConditionModel(
            block_out_channels=(w, 2 * w), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=w, norm_num_groups=2,
        )
        adapter = MotionAdapter(block_out_channels=(w, 2 * w), motion_layers_per_block=2, motion_norm_num_groups=2,
                                motion_num_attention_heads=4, motion_max_seq_length=32)
        vae = AutoencoderKL(
            block_out_channels=[w, 2 * w, 2 * w], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
            down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, sample_size=64,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, hidden_size=w, intermediate_size=37 * w // 32,
            layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=CHAR_VOCAB_SIZE,
            max_position_embeddings=77,
        ))
    return dict(unet2d=unet2d, motion_adapter=adapter, vae=vae, text_encoder=text_encoder, tokenizer=char_tokenizer(),
                scheduler=make_scheduler(scheduler))


def save_tiny(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the tiny components in the layout real weights come in: an SD 1.5 base folder and a
    separate MotionAdapter folder (what `animatediff` loads with base_model= / motion_adapter=)."""
    from diffusers import StableDiffusionPipeline

    c = build_tiny_components(seed)
    base, motion = Path(folder) / "base", Path(folder) / "motion_adapter"
    StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=c["unet2d"],
                            scheduler=c["scheduler"], safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(base)
    c["motion_adapter"].save_pretrained(motion)
    return base, motion


@functools.lru_cache(maxsize=4)
def _tiny_modules(seed: int, scheduler: str, width: int) -> tuple:
    """The tiny model's modules for one configuration, built once per process (the Python API, a
    batch and the test suite build many tiny backbones): callers get deep copies."""
    from diffusers import UNetMotionModel

    c = build_tiny_components(seed, scheduler, width)
    # from_unet2d draws weights it then overwrites: kept off torch's global stream, so whether this
    # cache was cold or warm never shows in what the caller draws next
    with torch.random.fork_rng(devices=[]):
        unet = UNetMotionModel.from_unet2d(c["unet2d"], c["motion_adapter"])
    return unet, c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"]


def make_tiny(options: dict | None = None, device: str | None = "cpu") -> AnimateDiffBackbone:
    opts = validate_options(TinyOptions, options or {}, "backbone.options")
    dev = resolve_device(device)
    unet, vae, text_encoder, tokenizer, scheduler = _tiny_modules(opts.seed, opts.scheduler, opts.width)
    # fresh weights for every backbone (tuning and dtype changes act in place); the tokenizer is read-only
    unet, vae, text_encoder, scheduler = (copy.deepcopy(m) for m in (unet, vae, text_encoder, scheduler))
    c = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}
    size = "" if opts.width == 32 else f",width={opts.width}"
    info = {"base_model": f"tiny(seed={opts.seed}{size})", "motion_adapter": "tiny", "scheduler": opts.scheduler}
    return apply_speed_options(AnimateDiffBackbone(
        "animatediff-tiny", unet, c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"], info, dev,
        resolve_dtype(opts.dtype, dev), random_weights=True), opts)


# --------------------------------------------------------------------------- real weights


@dataclass
class AnimateDiffOptions(SpeedOptions):
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    motion_adapter: str = "guoyww/animatediff-motion-adapter-v1-5-2"
    # a motion module file inside the motion_adapter repo or folder, in diffusers keys
    # (AnimateDiff-Lightning's animatediff_lightning_4step_diffusers.safetensors, say)
    motion_adapter_weight_name: str = ""
    scheduler: str = "ddim"  # ddim, lcm (AnimateLCM) or euler-trailing (AnimateDiff-Lightning)
    # a LoRA fused into the base UNet before the identity adapter goes on (AnimateLCM's t2v LoRA)
    base_lora: str = ""
    base_lora_weight_name: str = ""
    base_lora_scale: float = 1.0
    # a folder in diffusers layout whose configs describe a single-file base_model (default: the
    # configs that ship with pv for the family's standard architecture)
    single_file_config: str = ""
    dtype: str = "auto"
    variant: str = ""
    revision: str = ""


_SINGLE_FILE = (".safetensors", ".ckpt", ".pt", ".bin")


_BASE, _MOTION = "backbone.options.base_model", "backbone.options.motion_adapter"


def _is_single_file(ref: str) -> bool:
    return ref.lower().endswith(_SINGLE_FILE)


@dataclass
class Family:
    """What differs between the SD-based AnimateDiff families when loading real weights."""

    pipeline: str  # the diffusers text-to-video pipeline class
    image_pipeline: str  # the image pipeline whose from_single_file reads a community checkpoint
    components: tuple[str, ...]  # the pipeline's modules that the backbone takes
    configs: str  # the folder under single_file_configs/ with the base model's diffusers configs
    tokenizers: dict  # tokenizer component -> its pad token (CLIP's BPE vocabulary ships with pv)


SD15 = Family("AnimateDiffPipeline", "StableDiffusionPipeline", ("unet", "vae", "text_encoder", "tokenizer"),
              "sd15", {"tokenizer": "<|endoftext|>"})


def load_family(family: Family, opts, dtype) -> tuple[dict, dict]:
    """(the pipeline's modules by name with the scheduler, what to record) for real weights: hub
    ids, local folders, the HF cache or single files (`opts` has base_model, motion_adapter,
    motion_adapter_weight_name, scheduler, base_lora*, variant, revision)."""
    for what, ref in (("base_model", opts.base_model), ("motion_adapter", opts.motion_adapter)):
        if _is_single_file(ref) and not Path(ref).expanduser().is_file():
            raise PVError(f"{what} file not found: {ref}")
    quiet_libraries()
    import diffusers

    pipeline_cls = getattr(diffusers, family.pipeline)
    extra = {k: v for k, v in (("variant", opts.variant), ("revision", opts.revision)) if v}
    if opts.motion_adapter_weight_name:
        adapter = _motion_module_file(opts.motion_adapter, opts.motion_adapter_weight_name, dtype)
    elif _is_single_file(opts.motion_adapter):
        adapter = load_pretrained(_MOTION, opts.motion_adapter, diffusers.MotionAdapter.from_single_file,
                                  torch_dtype=dtype)
    else:
        adapter = load_pretrained(_MOTION, opts.motion_adapter, diffusers.MotionAdapter.from_pretrained,
                                  torch_dtype=dtype)
    if _is_single_file(opts.base_model):
        from .single_file import load_single_file

        image = load_single_file(family, opts.base_model, dtype, opts.single_file_config)
        modules = {k: getattr(image, k) for k in image.components if k not in ("safety_checker", "feature_extractor",
                                                                              "image_encoder")}
        pipe = pipeline_cls(motion_adapter=adapter, **modules)
    else:
        # pipelines take `dtype` (diffusers 0.42 deprecates their `torch_dtype`); models still take torch_dtype
        pipe = load_pretrained(_BASE, opts.base_model, pipeline_cls.from_pretrained, motion_adapter=adapter,
                               dtype=dtype, **extra)
    info = {"base_model": opts.base_model, "motion_adapter": opts.motion_adapter, "scheduler": opts.scheduler}
    if opts.motion_adapter_weight_name:
        info["motion_adapter"] = f"{opts.motion_adapter}/{opts.motion_adapter_weight_name}"
    if opts.base_lora:
        fuse_base_lora(pipe, opts.base_lora, opts.base_lora_weight_name, opts.base_lora_scale)
        info["base_lora"] = f"{opts.base_lora}@{opts.base_lora_scale:g}"
    modules = {k: getattr(pipe, k) for k in family.components}
    modules["scheduler"] = make_scheduler(opts.scheduler, pipe.scheduler.config)
    return modules, info


def make_animatediff(options: dict | None = None, device: str | None = None) -> AnimateDiffBackbone:
    opts = validate_options(AnimateDiffOptions, options or {}, "backbone.options")
    dev = resolve_device(device)
    dtype = resolve_dtype(opts.dtype, dev)
    m, info = load_family(SD15, opts, dtype)
    return apply_speed_options(AnimateDiffBackbone(
        "animatediff", m["unet"], m["vae"], m["text_encoder"], m["tokenizer"], m["scheduler"], info, dev, dtype), opts)


def _motion_module_file(repo: str, weight_name: str, dtype):
    """A MotionAdapter holding a motion module file in diffusers keys (the folder's config.json, if
    it has one, else the v1.5 motion adapter's default configuration)."""
    from diffusers import MotionAdapter
    from safetensors.torch import load_file

    local = Path(repo).expanduser() / weight_name
    if local.is_file():
        path = str(local)
    elif Path(repo).expanduser().is_dir():  # a local folder is never a hub id: no download after it
        raise PVError(f"motion module file not found: {local}", "check backbone.options.motion_adapter_weight_name")
    else:
        from huggingface_hub import hf_hub_download

        path = load_pretrained(_MOTION, repo, lambda ref, local_files_only, **kw: hf_hub_download(
            ref, weight_name, local_files_only=local_files_only, **kw))
    config = Path(repo).expanduser() / "config.json"
    adapter = MotionAdapter.from_config(MotionAdapter.load_config(str(config))) if config.is_file() else MotionAdapter()
    try:
        state = load_file(path)
    except Exception as exc:
        raise PVError(f"cannot load the motion module {path}: not a readable safetensors file ({explain(exc)})",
                      "it is damaged or incomplete: download it again") from None
    try:
        adapter.load_state_dict(state)
    except RuntimeError as exc:
        raise PVError(f"{weight_name} is not a diffusers-format motion module: {str(exc).splitlines()[0]}",
                      "use the *_diffusers.safetensors file") from None
    return adapter.to(dtype)


def fuse_base_lora(pipe, source: str, weight_name: str, scale: float) -> None:
    """Fuse a LoRA into the base weights (AnimateLCM's), so the identity adapter composes on top."""
    path = Path(source).expanduser()
    kwargs = {"weight_name": weight_name} if weight_name else ({"weight_name": path.name} if path.is_file() else {})
    where = str(path.parent) if path.is_file() else source
    load_pretrained("backbone.options.base_lora", where, lambda ref, local_files_only, **kw: pipe.load_lora_weights(
        ref, adapter_name="pv_base", local_files_only=local_files_only, **kw), **kwargs)
    pipe.fuse_lora(lora_scale=scale, adapter_names=["pv_base"])
    pipe.unload_lora_weights()
