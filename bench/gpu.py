"""Real-size speed and memory on one GPU, in one command, with nothing to download.

    python bench/gpu.py                          # every family's real profiles, on cuda
    python bench/gpu.py --family animatediff     # one family (repeatable); --profile NAME for any real profile
    python bench/gpu.py --device cpu --tiny      # the same code path on the tiny profiles (a test runs it)

Each family's real-size models are built from the configs pv ships, with random weights (speed and
memory do not depend on the weights): SD 1.5 + AnimateDiff v1-5 (`pv_animatediff.reference_size`),
SDXL + the SDXL motion adapter's shape (`single_file_configs/sdxl`), Wan 2.1 1.3B / 14B
(`pv_wan.configs`, with diffusers' default AutoencoderKLWan, which is Wan 2.1's VAE, and UMT5-XXL's
encoder). The identity network is FaceNet's architecture with random weights (bench/facenet_arch.py)
behind pv_facenet's own crop and standardisation; its detector returns a fixed centred face.

For each profile, in the profile's dtype and with its tuning settings, through pv's own `Tuner` and
`generate_frames`:
- seconds per tuning step (median of up to --repeats after a warm-up) and torch.cuda.max_memory_allocated
  / max_memory_reserved, with gradient checkpointing off and on (an out-of-memory is recorded and the
  run goes on), beside the CPU-derived estimate where BENCHMARKS.md has one (bench/ratios.json);
- seconds per generation of the same clip (frames, size, steps, guidance): pv generate vs the raw
  diffusers pipeline on the same modules, interleaved.

Writes --out (JSON) and the same path with .md (tables in BENCHMARKS.md's format), after every
profile; prints both paths on stdout, progress on stderr. An existing result is never overwritten:
the run is refused at once unless --force (or another --out) is given; an --out that cannot be
written is refused before anything is measured. --budget-s (default 450) splits the time
among the profiles: extra repeats are taken only where they fit, and a profile that would start past
the budget is recorded as skipped. Exit 1 if a configuration failed for another reason than memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "gpu_results.json"
RATIOS = HERE / "ratios.json"  # bench/ratios.py --real: the CPU-derived SD 1.5 512x512x16 estimate
WAN_SIZE = HERE / "wan_size.json"  # bench/wan_size.py: the CPU-derived Wan 2.1 1.3B estimates
# the transformer families' CPU-derived estimates per profile (bench/wan_size.py, bench/hunyuan_size.py)
SIZE_FILES = {"wan2.1-1.3b": WAN_SIZE, "wan2.2-5b": HERE / "wan_size_5b.json", "hunyuanvideo": HERE / "hunyuan_size.json"}

# family -> its default real profiles (`--profile` takes any real profile, e.g. animatelcm)
FAMILIES = {"animatediff": ("animatediff",), "animatediff-sdxl": ("animatediff-sdxl",),
            "wan": ("wan2.1-1.3b", "wan2.2-5b", "wan2.1-14b"), "hunyuanvideo": ("hunyuanvideo",)}
REAL_BACKBONES = ("animatediff", "animatediff-sdxl", "wan", "hunyuanvideo")
# --tiny: each real profile's offline stand-in (same family, tiny config)
TINY = {"animatediff": "tiny", "animatediff-sdxl": "tiny-sdxl", "wan": "tiny-wan", "hunyuanvideo": "tiny-hunyuan"}
TINY_SAMPLER = {"euler-trailing": "tiny-lightning"}
# the setting bench/ratios.py's real_size() estimates: the default profile's step and adapter
ESTIMATED = {"frames": 16, "height": 512, "width": 512, "grad_steps": 2, "supervised_frames": 4, "cfg": True,
             "targets": "attention", "rank": 16}
# UMT5-XXL's encoder (the Wan 2.1 repos' text_encoder/config.json); pv ships only the transformers'
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False)
# guoyww/animatediff-motion-adapter-sdxl-beta's shape: three levels, no mid-block motion module, 32 positions
SDXL_MOTION = dict(block_out_channels=(320, 640, 1280), motion_layers_per_block=2, motion_num_attention_heads=8,
                   motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Refused(Exception):
    """Bad input: one line on stderr, exit 2."""


# --------------------------------------------------------------------------- building


@contextmanager
def constructing(device: str, dtype=None):
    """Modules built inside land on `device` (random init runs there: seconds, not minutes on the
    CPU) and, with `dtype`, are created in it (a 14B model never exists in fp32)."""
    import torch

    old = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def build_sd15(profile: str, options: dict, device: str):
    from pv_animatediff.backbone import AnimateDiffOptions, apply_speed_options, resolve_dtype
    from pv_animatediff.reference_size import build_sd15_random
    from pv_animatediff.schedulers import make_scheduler
    from pv_animatediff.single_file import CONFIGS

    from pvcli.settings import validate_options

    opts = validate_options(AnimateDiffOptions, options, "backbone.options")
    dtype = resolve_dtype(opts.dtype, device)
    with constructing(device):
        bb = build_sd15_random(device, dtype)
    bb.scheduler = make_scheduler(opts.scheduler, _config(CONFIGS / "sd15" / "scheduler" / "scheduler_config.json"))
    bb.info["scheduler"] = opts.scheduler
    return apply_speed_options(bb, opts)


def build_sdxl(profile: str, options: dict, device: str):
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from pv_animatediff.backbone import apply_speed_options, quiet_libraries, resolve_dtype
    from pv_animatediff.schedulers import make_scheduler
    from pv_animatediff.single_file import CONFIGS, clip_tokenizer
    from pv_animatediff_sdxl.backbone import AnimateDiffSDXLBackbone, SDXLOptions
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pvcli.settings import validate_options

    quiet_libraries()
    opts = validate_options(SDXLOptions, options, "backbone.options")
    dtype = resolve_dtype(opts.dtype, device)
    root = CONFIGS / "sdxl"
    with torch.random.fork_rng(devices=[]), constructing(device):
        torch.manual_seed(0)
        unet2d = UNet2DConditionModel.from_config(_config(root / "unet" / "config.json"))
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**SDXL_MOTION))
        del unet2d
        vae = AutoencoderKL.from_config(_config(root / "vae" / "config.json"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_config(root / "text_encoder" / "config.json")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config(root / "text_encoder_2" / "config.json")))
    scheduler = make_scheduler(opts.scheduler, _config(root / "scheduler" / "scheduler_config.json"))
    info = {"base_model": "random(sdxl configs)", "motion_adapter": "random(sdxl-beta)", "scheduler": opts.scheduler}
    return apply_speed_options(AnimateDiffSDXLBackbone(
        "animatediff-sdxl", unet, vae, text_encoder, text_encoder_2, clip_tokenizer(), clip_tokenizer("!"), scheduler,
        info, device, dtype, random_weights=True), opts)


def build_wan(profile: str, options: dict, device: str):
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from pv_animatediff.backbone import quiet_libraries, resolve_dtype
    from pv_tiny import char_tokenizer
    from pv_wan.backbone import WanBackbone, WanOptions
    from pv_wan.configs import TRANSFORMERS, VAES
    from transformers import UMT5Config, UMT5EncoderModel

    from pvcli.settings import validate_options

    quiet_libraries()
    opts = validate_options(WanOptions, options, "backbone.options")
    dtype = resolve_dtype(opts.dtype, device, cuda_auto=torch.bfloat16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with constructing(device, dtype):
            transformer = WanTransformer3DModel(**TRANSFORMERS[profile])
            text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        with constructing(device):
            vae = AutoencoderKLWan(**VAES.get(profile, {}))  # diffusers' defaults are Wan 2.1's VAE
    # the repos' scheduler (UniPC on flow sigmas), with the profile's shift
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=opts.flow_shift or 3.0)
    info = {"base_model": f"random({profile} configs)", "scheduler": type(scheduler).__name__}
    # prompts go through pv's offline character tokenizer, padded to the same max_sequence_length
    return WanBackbone("wan", transformer, vae, text_encoder, char_tokenizer(opts.max_sequence_length), scheduler,
                       info, device, dtype, max_sequence_length=opts.max_sequence_length, random_weights=True)


# llava-llama-3-8b's LlamaModel and CLIP ViT-L/14's text model: HunyuanVideo's two text encoders
LLAVA_LLAMA3_8B = dict(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   projection_dim=768)


def build_hunyuanvideo(profile: str, options: dict, device: str):
    import torch
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from pv_animatediff.backbone import quiet_libraries, resolve_dtype
    from pv_hunyuanvideo.backbone import (
        HunyuanFlowScheduler,
        HunyuanVideoBackbone,
        HunyuanVideoOptions,
        tiny_prompt_template,
    )
    from pv_hunyuanvideo.configs import TRANSFORMERS
    from pv_tiny import char_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from pvcli.settings import validate_options

    quiet_libraries()
    opts = validate_options(HunyuanVideoOptions, options, "backbone.options")
    dtype = resolve_dtype(opts.dtype, device, cuda_auto=torch.bfloat16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with constructing(device, dtype):
            transformer = HunyuanVideoTransformer3DModel(**TRANSFORMERS[profile])
            text_encoder = LlamaModel(LlamaConfig(**LLAVA_LLAMA3_8B))
            text_encoder_2 = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
        with constructing(device):
            vae = AutoencoderKLHunyuanVideo()  # diffusers' defaults are HunyuanVideo's VAE
    scheduler = HunyuanFlowScheduler(shift=opts.flow_shift or 7.0)  # the repo's shift
    info = {"base_model": f"random({profile} configs)", "scheduler": type(scheduler).__name__}
    # prompts go through pv's offline character tokenizer (the template's crop counted for it)
    tokenizer = char_tokenizer(max_length=1024)
    return HunyuanVideoBackbone("hunyuanvideo", transformer, vae, text_encoder, tokenizer, text_encoder_2,
                                char_tokenizer(), scheduler, info, device, dtype, tiny_prompt_template(tokenizer),
                                max_sequence_length=opts.max_sequence_length, random_weights=True)


BUILDERS = {"animatediff": build_sd15, "animatediff-sdxl": build_sdxl, "wan": build_wan,
            "hunyuanvideo": build_hunyuanvideo}


def _config(path: Path) -> dict:
    return json.loads(path.read_text())


def build_backbone(profile: str, settings, device: str, tiny: bool):
    if tiny:  # the tiny profiles' own in-process backbones, as `pv tune --profile tiny*` builds them
        from pvcli.plugins import build_plugin_manager

        return build_plugin_manager().create("backbones", settings.backbone.name, options=settings.backbone.options,
                                             device=device)
    return BUILDERS[settings.backbone.name](profile, dict(settings.backbone.options), device)


# --------------------------------------------------------------------------- measuring


class Budget:
    """Wall time for the whole run, shared among the profiles still to run."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds if seconds > 0 else None
        self.deadline: float | None = None

    def start_profile(self, left: int) -> bool:
        """Set this profile's share; False if the budget is already spent."""
        if self.end is None:
            return True
        now = time.monotonic()
        if now >= self.end:
            return False
        self.deadline = now + (self.end - now) / left
        return True

    def fits(self, seconds: float) -> bool:
        return self.deadline is None or time.monotonic() + seconds <= self.deadline


class Device:
    def __init__(self, name: str):
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name.startswith("cuda")
        self.flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def reset_flags(self) -> None:
        self.torch.backends.cuda.matmul.allow_tf32, self.torch.backends.cudnn.allow_tf32 = self.flags

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.name)

    def timed(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def release(self) -> None:
        """Free what the last configuration left (a failed step's graph) and start its peak anew.
        On the CPU there is no allocator to release to (and a full collection costs 0.3 s)."""
        if self.cuda:
            gc.collect()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.name)

    def memory(self) -> dict:
        if not self.cuda:
            return {"max_allocated_gib": None, "max_reserved_gib": None}
        c = self.torch.cuda
        return {"max_allocated_gib": round(c.max_memory_allocated(self.name) / 2**30, 2),
                "max_reserved_gib": round(c.max_memory_reserved(self.name) / 2**30, 2)}

    def allocated_gib(self) -> float | None:
        return round(self.torch.cuda.memory_allocated(self.name) / 2**30, 2) if self.cuda else None


def is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def tuning_step(tuner) -> None:
    tuner.step()


def runs(dev: Device, fn, wanted: int, budget: Budget, reserve: float, warm: bool) -> dict:
    """An optional warm-up, one measured run, then more while they fit the budget (leaving
    `reserve` x one run for what this profile still has to measure)."""
    out: dict = {}
    if warm:
        out["warmup_s"] = round(dev.timed(fn), 3)
    times = [dev.timed(fn)]
    while len(times) < wanted and budget.fits(statistics.median(times) * (1 + reserve)):
        times.append(dev.timed(fn))
    out.update(median_s=round(statistics.median(times), 3), runs_s=[round(t, 3) for t in times])
    return out


def cpu_estimates(profile: str, s) -> tuple[dict[bool, float], str | None]:
    """The CPU-derived estimate of one tuning step's memory for this setting, by checkpointing (GB of
    2^30 bytes), and where it comes from: bench/ratios.py --real (AnimateDiff SD 1.5, the default
    profile's 512x512x16 step) or bench/wan_size.py (Wan 2.1 1.3B, per tuning size)."""
    t, a = s.tune, s.adapter
    if s.backbone.name == "animatediff" and RATIOS.is_file():
        setting = {"frames": t.frames, "height": t.height, "width": t.width, "grad_steps": t.grad_steps,
                   "supervised_frames": t.supervised_frames, "cfg": t.guidance_scale > 1, "targets": a.targets,
                   "rank": a.rank}
        est = (json.loads(RATIOS.read_text()).get("real_size") or {}).get("estimate_512x512x16_fp16") or {}
        if setting == ESTIMATED and est:
            return _totals(est), "bench/ratios.py --real (bench/ratios.json)"
    size_file = SIZE_FILES.get(profile)
    if size_file is not None and size_file.is_file():
        m = json.loads(size_file.read_text())
        step = m.get("tuning_step") or {}
        same = (m.get("profile") == profile and m.get("targets") == a.targets and m.get("rank") == a.rank
                and (step.get("grad_steps"), step.get("supervised_frames")) == (t.grad_steps, t.supervised_frames)
                and step.get("cfg", t.guidance_scale > 1) == (t.guidance_scale > 1))  # no cfg key: no CFG batch
        est = (m.get("estimates_bf16") or {}).get(f"{t.frames}x{t.height}x{t.width}")
        if same and est:
            return _totals(est), f"bench/{size_file.stem.split('_')[0]}_size.py (bench/{size_file.name})"
    return {}, None


def traced_gib(s, ckpt: bool) -> float | None:
    """pv's memory trace of the same step (pvcli/engine/memtrace.py: the real configs on the meta device,
    shipped traces or a fresh one): its gradient-step peak in GiB, with checkpointing `ckpt`; None
    for a backbone pv cannot trace."""
    from pvcli.engine.memplan import Planner
    from pvcli.errors import PVError
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import from_dict

    try:
        settings = from_dict(s.to_dict(), [{"tune": {"gradient_checkpointing": ckpt}}])
        return Planner(build_plugin_manager(), status=log).phases(settings)[0]["gradient_step"]
    except PVError:
        return None


def traced_generation_gib(s, g) -> float | None:
    """pv's memory trace of the same generation (memtrace.trace_generation at `g`'s clip): its peak
    in GiB; None for a backbone pv cannot trace."""
    import dataclasses

    from pvcli.engine.memplan import GIB, Planner
    from pvcli.errors import PVError
    from pvcli.plugins import build_plugin_manager

    try:
        trace = Planner(build_plugin_manager(), status=log).generation_trace(dataclasses.replace(s, generate=g))
        return round(max(trace.phases.values()) / GIB, 3)
    except PVError:
        return None


def _totals(est: dict) -> dict[bool, float]:
    return {ckpt: est[key]["total_gb"] for ckpt, key in ((False, "without_checkpointing"), (True, "with_checkpointing"))
            if "total_gb" in (est.get(key) or {})}


def measure_profile(profile: str, real_profile: str, sets: list[str], dev: Device, args, budget: Budget) -> dict:
    import torch
    import torch.nn.functional as F
    from facenet_arch import RandomFaceNet, weight_count

    from pvcli.engine.generate import generate_frames
    from pvcli.engine.sampling import adapted_steps
    from pvcli.engine.tune import Tuner
    from pvcli.settings import parse_set, resolve

    _, s = resolve(profile, [parse_set(sets)])
    t = s.tune
    default_ckpt = t.gradient_checkpointing
    # the Tuner starts without checkpointing; the "on" variant switches it on as the Tuner would
    _, s_off = resolve(profile, [parse_set([*sets, "tune.gradient_checkpointing=false"])])
    rec: dict = {"profile": profile, "measures": real_profile, "backbone": s.backbone.name, "status": "ok",
                 "settings": {"frames": t.frames, "height": t.height, "width": t.width,
                              "num_inference_steps": t.num_inference_steps, "grad_steps": t.grad_steps,
                              "guidance_scale": t.guidance_scale, "supervised_frames": t.supervised_frames,
                              "active_fraction": s.adapter.active_fraction, "targets": s.adapter.targets,
                              "rank": s.adapter.rank, "gradient_checkpointing_default": default_ckpt},
                 "tuning": [], "generation": None}
    dev.reset_flags()  # each profile starts from torch's TF32 defaults; its backbone sets what pv sets
    dev.release()
    start = time.perf_counter()
    log(f"[{profile}] building {'tiny' if args.tiny else 'real-size'} models with random weights on {dev.name}")
    try:
        bb = build_backbone(real_profile, s, dev.name, args.tiny)
        enc = RandomFaceNet(dev.name)
        reference = F.normalize(torch.randn(enc.dim, generator=torch.Generator().manual_seed(0)), dim=0)
        tuner = Tuner(bb, enc, s_off, reference)
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        rec.update(status="oom" if is_oom(exc) else "error", error=first_line(exc))
        log(f"[{profile}] build failed: {rec['error']}")
        return rec
    rec.update(build_s=round(time.perf_counter() - start, 1), dtype=str(bb.dtype).removeprefix("torch."),
               denoiser_params_m=round(sum(p.numel() for p in bb.denoiser.parameters()
                                           if not p.requires_grad) / 1e6, 1),
               adapter_layers=len(tuner.layers), adapter_params_m=round(sum(p.numel() for p in tuner.params) / 1e6, 2),
               identity_network_weights=weight_count(enc.net), resident_gib=dev.allocated_gib())
    if dev.cuda:
        rec["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    log(f"[{profile}] built in {rec['build_s']} s: {rec['denoiser_params_m']}M denoiser parameters, "
        f"{rec['dtype']}, adapter {rec['adapter_layers']} layers / {rec['adapter_params_m']}M")
    estimates, rec["cpu_estimate_source"] = cpu_estimates(real_profile, s)

    warmed = False
    for ckpt in (False, True):  # off first: switching checkpointing on cannot be undone
        entry = {"gradient_checkpointing": ckpt, "profile_default": ckpt == default_ckpt,
                 "cpu_estimate_gib": estimates.get(ckpt), "traced_gib": traced_gib(s, ckpt)}
        # still to measure after this: the other variant (~1.3 steps) and 3 generations (~1 step each)
        reserve = 4.3 if not ckpt else 3.0
        try:
            if ckpt:
                bb.enable_gradient_checkpointing()
            dev.release()
            entry.update(runs(dev, lambda: tuning_step(tuner), args.repeats, budget, reserve, warm=not warmed))
            entry.update(status="ok", **dev.memory())
            warmed = True
            memory = f", max allocated {entry['max_allocated_gib']} GiB" if dev.cuda else ""
            log(f"[{profile}] tuning step, checkpointing {'on' if ckpt else 'off'}: {entry['median_s']} s "
                f"(median of {len(entry['runs_s'])}){memory}")
        except Exception as exc:  # noqa: BLE001 - an OOM (or a failure) in one configuration: the run goes on
            entry.update(status="oom" if is_oom(exc) else "error", error=first_line(exc))
            log(f"[{profile}] tuning step, checkpointing {'on' if ckpt else 'off'}: {entry['status']} ({entry['error']})")
        bb.denoiser.eval()
        dev.release()
        rec["tuning"].append(entry)

    # tuning moved the text encoders off the GPU (tune.offload_text_encoder); generation encodes its prompts
    from pvcli.engine.offload import move_text_encoders

    move_text_encoders(bb, bb.device)
    g = dataclasses.replace(s.generate, frames=t.frames, height=t.height, width=t.width, steps=t.num_inference_steps,
                            guidance_scale=t.guidance_scale, seed=0)
    prompt = tuner.prompts.prompts[0]
    gates = adapted_steps(g.steps, s.adapter.active_fraction)
    extra = {"max_sequence_length": bb.max_sequence_length} if hasattr(bb, "max_sequence_length") else {}

    def pv_generate():
        generate_frames(bb, prompt, g, adapter_steps=gates)

    def raw_pipeline():  # diffusers' own call on the same modules, the identity LoRA on in every step
        pipe = bb.pipeline()
        pipe.scheduler = bb.new_scheduler()
        pipe(prompt=prompt, negative_prompt=g.negative_prompt or None, num_frames=g.frames, height=g.height,
             width=g.width, num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
             generator=torch.Generator("cpu").manual_seed(g.seed), output_type="pt", **extra)

    gen: dict = {"frames": g.frames, "height": g.height, "width": g.width, "steps": g.steps,
                 "guidance_scale": g.guidance_scale, "adapter_steps": gates, "traced_gib": traced_generation_gib(s, g)}
    try:
        dev.release()
        gen["warmup_s"] = round(dev.timed(pv_generate), 3)
        pv_times, raw_times = [], []
        while True:  # interleaved, so drift hits both alike
            raw_times.append(dev.timed(raw_pipeline))
            pv_times.append(dev.timed(pv_generate))
            pair = raw_times[-1] + pv_times[-1]
            if len(pv_times) >= args.repeats or not budget.fits(pair):
                break
        p, r = statistics.median(pv_times), statistics.median(raw_times)
        gen.update(status="ok", pv_generate_s=round(p, 3), raw_pipeline_s=round(r, 3), ratio=round(p / r, 3),
                   pv_runs_s=[round(x, 3) for x in pv_times], raw_runs_s=[round(x, 3) for x in raw_times],
                   **dev.memory())
        log(f"[{profile}] generation of the same clip: pv {gen['pv_generate_s']} s, raw pipeline "
            f"{gen['raw_pipeline_s']} s (ratio {gen['ratio']})")
    except Exception as exc:  # noqa: BLE001
        gen.update(status="oom" if is_oom(exc) else "error", error=first_line(exc))
        log(f"[{profile}] generation: {gen['status']} ({gen['error']})")
    rec["generation"] = gen
    rec["wall_s"] = round(time.perf_counter() - start, 1)
    tuner = bb = enc = None
    dev.release()
    return rec


# --------------------------------------------------------------------------- report


def environment(dev: Device, tiny: bool) -> dict:
    import diffusers
    import peft
    import torch
    import transformers

    import pvcli

    env = {"pv": pvcli.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
           "device": dev.name, "tiny": tiny, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join(["python bench/gpu.py", *sys.argv[1:]])}
    if dev.cuda:
        props = torch.cuda.get_device_properties(torch.device(dev.name))
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        env.update(gpu=None, cpu_threads=torch.get_num_threads())
    return env


def identity_note(weights: int) -> str:
    return (f"identity network: random-weight FaceNet Inception-ResNet-v1 ({weights:,} weights, the architecture of "
            "pv_facenet's port of the real graph, checked in tests/test_bench_gpu.py), 160x160 input, 512-d, behind "
            "pv_facenet's crop and standardisation; face detection is a fixed centred box, so MTCNN's time is not "
            "measured (0.1% of a mid-size step in BENCHMARKS.md)")


def _gib(v) -> str:
    return "n/a (CPU)" if v is None else f"{v:.1f} GiB"


def markdown(result: dict) -> str:
    env = result["environment"]
    where = (f"{env['gpu']} ({env['gpu_memory_gib']} GiB), CUDA {env['cuda']}" if env.get("gpu")
             else f"CPU ({env.get('cpu_threads')} threads)")
    lines = [f"Measured with `{env['command']}` on {where}, {env['date']}: torch {env['torch']}, diffusers "
             f"{env['diffusers']}, transformers {env['transformers']}, peft {env['peft']}, pv {env['pv']}. "
             f"{'Tiny configs' if env['tiny'] else 'Real-size models'} with random weights; "
             f"{result['identity_network']}.", "",
             "| profile | dtype | tuning clip | gradient checkpointing | tuning step | max allocated | max reserved "
             "| CPU-derived estimate | traced (pv's memory trace) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in result["profiles"]:
        st = p.get("settings", {})
        clip = (f"{st.get('frames')}x{st.get('height')}x{st.get('width')}, {st.get('num_inference_steps')} steps "
                f"({st.get('grad_steps')} under grad), CFG {st.get('guidance_scale'):g}, "
                f"{st.get('supervised_frames')} supervised") if st else ""
        if p["status"] != "ok":
            lines.append(f"| {p['profile']} | | {clip} | | **{_status(p)}** | | | | |")
            continue
        for e in p["tuning"]:
            ckpt = ("on" if e["gradient_checkpointing"] else "off") + (" (profile default)" if e["profile_default"] else "")
            est = (f"~{e['cpu_estimate_gib']} GB ({p['cpu_estimate_source'].split(' (')[0]})"
                   if e.get("cpu_estimate_gib") is not None else "-")
            traced = _gib(e.get("traced_gib")) if e.get("traced_gib") is not None else "-"
            if e["status"] != "ok":
                lines.append(f"| {p['profile']} | {p['dtype']} | {clip} | {ckpt} | **{_status(e)}** | | | {est} | {traced} |")
                continue
            lines.append(f"| {p['profile']} | {p['dtype']} | {clip} | {ckpt} | {e['median_s']:.2f} s (median of "
                         f"{len(e['runs_s'])}) | {_gib(e['max_allocated_gib'])} | {_gib(e['max_reserved_gib'])} "
                         f"| {est} | {traced} |")
    lines += ["", "| profile | the same clip, generated | pv generate | raw diffusers pipeline | ratio | max allocated "
              "| traced (pv's memory trace) |", "|---|---|---|---|---|---|---|"]
    for p in result["profiles"]:
        g = p.get("generation")
        if not g:
            continue
        clip = f"{g['frames']}x{g['height']}x{g['width']}, {g['steps']} steps, CFG {g['guidance_scale']:g}"
        traced = _gib(g["traced_gib"]) if g.get("traced_gib") is not None else "-"
        if g["status"] != "ok":
            lines.append(f"| {p['profile']} | {clip} | **{_status(g)}** | | | | {traced} |")
            continue
        lines.append(f"| {p['profile']} | {clip} | {g['pv_generate_s']:.2f} s | {g['raw_pipeline_s']:.2f} s | "
                     f"{g['ratio']:.3f} | {_gib(g['max_allocated_gib'])} | {traced} |")
    lines += ["", "Memory is torch.cuda.max_memory_allocated / max_memory_reserved over the configuration's steps "
              "(GiB = 2^30 bytes; the CPU-derived estimates of bench/ratios.py --real use the same unit). The raw "
              "pipeline runs the same modules with the identity LoRA on in every step; pv generate gates it to the "
              "profile's last steps and decodes in pv's chunks. Neither writes a file."]
    return "\n".join(lines) + "\n"


def _status(x: dict) -> str:
    return {"oom": "out of memory", "skipped": "not run (time budget)"}.get(x["status"], f"failed: {x.get('error', '')}")


def write(result: dict, out: Path) -> Path:
    md = out.with_suffix(".md")
    for path, text in ((out, json.dumps(result, indent=2) + "\n"), (md, markdown(result))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # a failed write leaves nothing beside the results
    return md


def _write(result: dict, out: Path) -> Path | None:
    """write(), or None after one line on stderr when the disk refuses (full, gone read-only)."""
    try:
        return write(result, out)
    except OSError as exc:
        print(f"bench/gpu.py: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------- command line


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise Refused(message)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = Parser(prog="bench/gpu.py", description=__doc__.split("\n")[0])
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES), help="a family's default real profiles (repeatable)")
    ap.add_argument("--profile", action="append", default=[], help="a real profile by name (repeatable)")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --tiny")
    ap.add_argument("--tiny", action="store_true", help="the tiny profiles instead of real sizes (the CPU test)")
    ap.add_argument("--repeats", type=int, default=3, help="measured runs per configuration at most (default 3)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-time budget in seconds (0: none; default 450)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a setting for every profile, key=value")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON file (default {DEFAULT_OUT.relative_to(HERE.parent)}; "
                                                         "the table goes beside it as .md)")
    ap.add_argument("--force", action="store_true", help="replace the results of an earlier run at --out")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise Refused(f"--repeats must be at least 1, got {args.repeats}")
    if not math.isfinite(args.budget_s) or args.budget_s < 0:
        raise Refused(f"--budget-s must be 0 (no budget) or more seconds, got {args.budget_s:g}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise Refused(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    if args.device == "cpu" and not args.tiny:
        raise Refused("real-size models on the CPU would take hours: use a CUDA device, or --device cpu --tiny")
    check_out(args.out or DEFAULT_OUT, args.force)
    return args


def check_out(out: Path, force: bool) -> None:
    """--out and the .md beside it can be written, and hold no earlier result unless --force;
    checked before anything is built or measured (its folder is created here)."""
    if out.suffix.lower() == ".md":
        raise Refused(f"--out {out}: give the .json file; the table is written beside it as .md")
    for path in (out, out.with_suffix(".md")):
        if path.is_dir():
            raise Refused(f"--out {out}: {path} is a folder")
        if path.exists() and not force:
            raise Refused(f"--out {out}: {path} holds an earlier result; pass --force to replace it, or another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.{os.getpid()}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise Refused(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def plan(args) -> list[tuple[str, str]]:
    """(profile to run, real profile it stands for): the families' defaults and --profile, in order."""
    from pvcli.errors import PVError
    from pvcli.settings import parse_set, read_profile, resolve, shipped_profiles

    shipped = shipped_profiles()
    real = {}
    for name in sorted(shipped):
        backbone = ((read_profile(name)[1].get("backbone") or {}).get("name"))
        if backbone in REAL_BACKBONES:
            real[name] = backbone
    for name in args.profile:
        if name not in real:
            raise Refused(f"--profile {name!r} is not a real-size profile pv ships; choose from {', '.join(sorted(real))}")
    wanted = [] if args.profile and not args.family else \
        [p for fam in (args.family or FAMILIES) for p in FAMILIES[fam]]
    wanted += [p for p in args.profile if p not in wanted]
    out, seen = [], set()
    for p in wanted:
        scheduler = (read_profile(p)[1].get("backbone") or {}).get("options", {}).get("scheduler", "")
        run = (TINY_SAMPLER.get(scheduler) or TINY[real[p]]) if args.tiny else p
        if run not in seen:
            seen.add(run)
            out.append((run, p))
    try:  # a bad --set is refused before any model is built
        for run, _ in out:
            resolve(run, [parse_set(args.sets)])
    except PVError as exc:
        raise Refused(f"--set: {exc}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here comes from the hub
        import torch

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise Refused(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}); "
                          "run it on a CUDA machine, or --device cpu --tiny")
        todo = plan(args)
    except Refused as exc:
        print(f"bench/gpu.py: {exc}", file=sys.stderr)
        return 2
    if str(HERE) not in sys.path:  # facenet_arch, when this runs as a module (tests)
        sys.path.insert(0, str(HERE))
    from facenet_arch import InceptionResnetV1, weight_count

    dev = Device(args.device)
    with torch.device("meta"):  # counted, not allocated
        net = InceptionResnetV1()
    out = args.out or DEFAULT_OUT
    result = {"environment": environment(dev, args.tiny), "settings_overrides": args.sets,
              "identity_network": identity_note(weight_count(net)), "profiles": []}
    budget = Budget(args.budget_s)
    failed = False
    for i, (profile, real) in enumerate(todo):
        if not budget.start_profile(len(todo) - i):
            log(f"[{profile}] skipped: the --budget-s of {args.budget_s:g} s is spent")
            result["profiles"].append({"profile": profile, "measures": real, "status": "skipped"})
            continue
        rec = measure_profile(profile, real, args.sets, dev, args, budget)
        failed |= rec["status"] == "error" or any(x and x.get("status") == "error"
                                                   for x in [*rec["tuning"], rec["generation"]])
        result["profiles"].append(rec)
        md = _write(result, out)
        if md is None:
            return 2
    md = _write(result, out)
    if md is None:
        return 2
    print(out)
    print(md)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
