"""The Wan family (Wan 2.1 text-to-video) as a pv backbone: a diffusion transformer trained with
flow matching, a causal 3D VAE that compresses 4 frames into one latent frame, and a UMT5 text
encoder. Measured facts behind the choices: ../shared/notes/dit-wan.md (diffusers 0.42.1).

Where the identity adapter goes (pv's one rule for every family, README "Where the adapter
goes": whatever passes information between video tokens stays frozen and bit-identical; the adapter
goes on what acts per token or reads the text). A Wan block has `attn1` (self-attention over every
video token with 3D RoPE: the only op that mixes frames, the counterpart of AnimateDiff's motion
modules), `attn2` (cross-attention to the text, per token) and `ffn` (per token). `attn1` stays
frozen whole (queries, keys and their norms: where tokens look; values and output: what crosses
frames), as HunyuanVideo's video self-attention does:
  attention: attn2's q, k, v, out (cross-attention only)
  spatial:   attn2's q, k, v, out and the feed-forward net (ffn.net.0.proj, ffn.net.2)

Generation: WanPipeline; WanVideoToVideoPipeline for `--video`; WanVACEPipeline for `--control`,
around a VACE transformer whose base modules are this backbone's transformer's (vace.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from pv_animatediff.backbone import (
    SpeedOptions,
    load_pipeline_lora,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
    store_frozen_weights,
)

from pvcli.contracts import Backbone
from pvcli.errors import PVError
from pvcli.hub import load_pretrained
from pvcli.settings import validate_options

from . import (
    ACCEPTS,
    DEFAULT_MODEL,
    VACE_MODELS,
    VIDEO_WITH_CONTROL,
    no_control_on_experts,
    no_lora_on_experts,
    no_vace,
    no_video,
    one_control,
)

_BLOCK = r"blocks\.\d+"
_CROSS = rf"{_BLOCK}\.attn2\.(to_q|to_k|to_v|to_out\.0)"
TARGETS = {"attention": _CROSS, "spatial": rf"{_CROSS}|{_BLOCK}\.ffn\.net\.(0\.proj|2)"}
TEMPORAL = 4  # pixel frames per latent frame (after the first)
EXPERTS = ("denoiser", "high_noise")  # what backbone.options.weights=fp8 stores in float8 (A14B: both experts)
# backbone.options.adapter_experts: which of A14B's experts take the identity adapter
ADAPTER_EXPERTS = ("low", "both")
LOW_NOISE, HIGH_NOISE = "low-noise (transformer_2)", "high-noise (transformer)"


class ExpertPair(torch.nn.Module):
    """The identity adapter's home when it is on both experts (Backbone.adapted): the experts as
    children named as WanPipeline's components, so the adapter's keys say which expert each is on
    (`transformer.blocks...`: high-noise, `transformer_2.blocks...`: low-noise). It only holds them:
    each expert still moves, runs and swaps on its own."""

    def __init__(self, high_noise: torch.nn.Module, low_noise: torch.nn.Module):
        super().__init__()
        self.transformer = high_noise
        self.transformer_2 = low_noise


def check_adapter_experts(value: str, experts: int) -> None:
    if value not in ADAPTER_EXPERTS:
        raise PVError(f"backbone.options.adapter_experts must be one of {', '.join(ADAPTER_EXPERTS)}, got {value!r}")
    if value == "both" and experts != 2:
        raise PVError("backbone.options.adapter_experts=both needs a model of two experts (Wan 2.2 A14B); this one has "
                      "one", "drop it (the adapter goes on the one transformer)")


HOST = "cpu"


def _move(module: torch.nn.Module, device: str) -> None:
    module.to(device)


def _loaded_on(module: torch.nn.Module, device) -> str:
    """Where a module loaded, in the labels `_put` compares: the device's own if all of it (weights and
    buffers) is there already, else the host (it is moved when placed)."""
    kind = torch.device(device).type
    tensors = [*module.parameters(), *module.buffers()]
    return str(device) if all(t.device.type == kind for t in tensors) else HOST


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL + 1


class WanBackbone(Backbone):
    accepts = ACCEPTS  # what it takes: the package's ACCEPTS, registered with it
    long_videos = False
    causal_decoder = True  # decode_frames decodes the latent prefix only (tune.supervised_window bounds it)
    target_sets = TARGETS
    frame_mixing = "attn1"  # the only op that mixes frames
    component = "transformer"
    # video-to-video: WanVideoToVideoPipeline; control maps (--control): WanVACEPipeline, whose
    # VACE transformer is built around the denoiser (vace.py), so the control model is the backbone's own

    def __init__(self, name, transformer, vae, text_encoder, tokenizer, scheduler, info: dict, device, dtype,
                 max_sequence_length: int = 512, random_weights: bool = False, transformer_2=None,
                 boundary_ratio: float | None = None, expand_timesteps: bool = False, vace_model: str = "",
                 vace_seed: int = 0, swap_experts: bool = True, adapter_experts: str = "low"):
        """`transformer_2` + `boundary_ratio` (Wan 2.2 A14B): two experts, `transformer` for the
        high-noise steps (t >= boundary_ratio * num_train_timesteps), `transformer_2` for the rest.
        The identity adapter goes on the low-noise expert, `transformer_2`: the late steps, where
        the paper's gating puts it anyway; the high-noise expert stays frozen and bit-identical.
        `expand_timesteps` (Wan 2.2 TI2V-5B) is passed to the pipeline as its repo ships it.
        `vace_model` (hub id or folder; "tiny": built in-process under `vace_seed`) is the VACE
        model `--control` runs through, loaded on first use (vace.py). `swap_experts` (two experts):
        while pv's sampler runs, the idle expert waits on the host (each clip's high-noise steps swap it
        in and the low-noise expert out, then back). `adapter_experts` (two experts): "low", the
        adapter on the low-noise expert alone; "both", on the high-noise expert too, each expert's
        layers acting in its own steps wherever the gate is open (`adapted` is then an ExpertPair)."""
        check_adapter_experts(adapter_experts, 2 if transformer_2 is not None else 1)
        self.name = name
        self.random_weights = random_weights
        self.high_noise = None
        self.boundary_ratio = boundary_ratio
        self.expand_timesteps = expand_timesteps
        if transformer_2 is not None:
            if boundary_ratio is None:
                raise PVError("a Wan model with two experts needs its boundary_ratio (the pipeline's config)")
            self.high_noise = transformer.to(dtype=dtype).eval().requires_grad_(False)
            if adapter_experts == "low":  # whole and frozen; with both, its frame mixing is (protected_modules)
                self.frozen_parts = (*self.frozen_parts, "high_noise")
            transformer = transformer_2
        # the experts load on the host and reach the device in place_denoiser (after the prompt pool is
        # embedded) or when they first denoise; with swap_experts, only the expert at work is there
        self.denoiser = transformer.to(dtype=dtype).eval().requires_grad_(False)  # where it loaded (the host)
        self.adapter_experts = adapter_experts
        self._pair = ExpertPair(self.high_noise, self.denoiser) if adapter_experts == "both" else None
        self.swap_experts = swap_experts
        self.where: dict[str, str] = {part: _loaded_on(getattr(self, part), device)
                                      for part in ("denoiser", "high_noise") if getattr(self, part) is not None}
        self.vae = vae.to(device, torch.float32).eval().requires_grad_(False)  # diffusers' advice: the Wan VAE in fp32
        self.text_encoder = text_encoder.to(device, dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.dtype = dtype
        self.info = info
        self.max_sequence_length = max_sequence_length
        self.latent_channels = transformer.config.in_channels
        # Wan 2.2's VAE says its own factor (16 for TI2V-5B); Wan 2.1's follows from its downsampling
        self.vae_scale_factor = int(getattr(vae.config, "scale_factor_spatial", 0) or 2 ** len(vae.config.temperal_downsample))
        # 3D RoPE covers rope_max_seq_len positions per axis: latent frames beyond it have no position
        self.max_frames = TEMPORAL * (int(transformer.config.rope_max_seq_len) - 1) + 1
        self.decoder_checkpointing = False  # enable_decoder_checkpointing
        from .decoding import window_reach

        self.window_margin = window_reach(vae)
        self._pipe = None
        self._video_pipe = None
        self.vace_model, self.vace_seed = vace_model, vace_seed
        self._vace_pipe = None

    @property
    def transformer(self) -> torch.nn.Module:
        return self.denoiser

    @property
    def adapted(self) -> torch.nn.Module:
        return self.denoiser if self._pair is None else self._pair

    def adapter_targets(self, targets: str) -> str:
        pattern = super().adapter_targets(targets)
        return pattern if self._pair is None else rf"(transformer|transformer_2)\.({pattern})"

    def adapter_part_at(self, t) -> str:
        if self._pair is None:
            return ""
        return "transformer." if self.high_noise_step(t) else "transformer_2."

    def protected_modules(self) -> dict[str, torch.nn.Module]:
        """The frame-mixing self-attention of every expert (the high-noise one whole when it takes no adapter)."""
        out = super().protected_modules()
        if self._pair is not None:
            out.update({f"high_noise.{n}": m for n, m in self.high_noise.named_modules()
                        if n.rsplit(".", 1)[-1] == self.frame_mixing})
        return out

    def describe(self) -> dict[str, str]:
        out = {"backbone": self.name, "base_model_version": "wan2.1", "architecture": "wan2.1-t2v", **self.info}
        config = self.scheduler.config  # the flow shift generation samples with (an exported workflow's too)
        out["flow_shift"] = f"{float(config.get('flow_shift', config.get('shift', 1.0))):g}"
        if self.high_noise is not None:  # which expert an exported file is for, and where the experts switch
            out["expert"] = LOW_NOISE if self._pair is None else f"{HIGH_NOISE} + {LOW_NOISE}"
            out["boundary_ratio"] = f"{self.boundary_ratio:g}"
            if self._pair is not None:  # one exported file per expert
                import json

                out["adapter_parts"] = json.dumps({"transformer.": HIGH_NOISE, "transformer_2.": LOW_NOISE})
        return out

    # ----------------------------------------------------------------- frames
    def latent_frames(self, frames: int) -> int:
        return latent_frames(frames)

    def check_frames(self, frames: int, flag: str = "--frames") -> None:
        from . import check_frames

        check_frames(frames, flag)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        # the pipeline's own encoding: UMT5 states, zeroed past each prompt's length
        embeds, _ = self.pipeline().encode_prompt(prompts, do_classifier_free_guidance=False,
                                                  max_sequence_length=self.max_sequence_length, device=self.device)
        return embeds.to(self.dtype)

    def _put(self, part: str, device) -> None:
        where = str(device)
        if self.where[part] != where:
            _move(getattr(self, part), where)
            self.where[part] = where

    def place_denoiser(self) -> None:
        """The low-noise expert (the only one without swap_experts: both) on the device."""
        self._put("denoiser", self.device)
        if self.high_noise is not None and not self.swap_experts:
            self._put("high_noise", self.device)

    def expert(self, t) -> torch.nn.Module:
        """The transformer that denoises at timestep t (WanPipeline's rule for two experts), on the
        device (with swap_experts the other one goes to the host)."""
        if self.high_noise is not None:
            busy = "high_noise" if self.high_noise_step(t) else "denoiser"
            self._at_work(busy)
            return getattr(self, busy)
        self.place_denoiser()
        return self.denoiser

    def high_noise_step(self, t) -> bool:
        """Whether timestep t is the high-noise expert's (WanPipeline's rule: t >= boundary_ratio *
        num_train_timesteps); always False with one expert."""
        return self.high_noise is not None and float(t) >= self.boundary_ratio * self.scheduler.config.num_train_timesteps

    def guidance_at(self, t, guidance_scale: float, guidance_scale_2: float = 0.0) -> float:
        """Two experts (A14B): `guidance_scale` on the high-noise expert's steps, `guidance_scale_2`
        (0: the same) on the low-noise expert's, as WanPipeline's guidance_scale / guidance_scale_2."""
        if self.high_noise is None:
            return super().guidance_at(t, guidance_scale, guidance_scale_2)
        return guidance_scale if self.high_noise_step(t) or not guidance_scale_2 else guidance_scale_2

    def _at_work(self, busy: str) -> None:
        """Expert `busy` on the device; with swap_experts the other one on the host first."""
        if self.swap_experts:
            self._put("denoiser" if busy == "high_noise" else "high_noise", HOST)
        self._put(busy, self.device)

    @contextmanager
    def _experts_for_pipeline(self):
        """diffusers' pipelines call both experts: without swap_experts both go to the device; with
        it each one comes when the pipeline first calls it in a run of steps (a forward pre-hook)
        and the other waits on the host, as in pv's sampler."""
        if self.high_noise is None or not self.swap_experts:
            for part in self.where:
                self._put(part, self.device)
            yield
            return
        hooks = [getattr(self, part).register_forward_pre_hook(lambda module, args, _part=part: self._at_work(_part))
                 for part in ("high_noise", "denoiser")]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def predict_noise(self, latents, t, embeds):
        """The flow velocity (noise - clean) that the scheduler steps with. Wan 2.2 TI2V-5B
        (`expand_timesteps`) takes a timestep per token, as WanPipeline gives it (text-to-video:
        every token at t); a single timestep goes through another path of the transformer."""
        timestep = torch.as_tensor(t, device=self.device)
        if self.expand_timesteps:  # (B, tokens): one per latent patch, WanPipeline's mask * t
            _, p_h, p_w = self.denoiser.config.patch_size
            f, h, w = latents.shape[2:]
            timestep = (torch.ones(f, h // p_h, w // p_w, device=self.device) * timestep).flatten()[None]
            timestep = timestep.expand(latents.shape[0], -1)
        else:
            timestep = timestep.expand(latents.shape[0])
        return self.expert(t)(hidden_states=latents.to(self.dtype), timestep=timestep, encoder_hidden_states=embeds,
                              return_dict=False)[0].float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode(latents)

    def _decode(self, latents: torch.Tensor, crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Frames (B, F, 3, H, W) in [0, 1]; `crop` (y0, y1, x0, x1, latent pixels): only that window's
        pixels, through the whole frame's mid block (decoding.py)."""
        c = self.vae.config
        lat = latents.float()
        mean = torch.tensor(c.latents_mean, device=lat.device).view(1, c.z_dim, 1, 1, 1)
        std = torch.tensor(c.latents_std, device=lat.device).view(1, c.z_dim, 1, 1, 1)
        z = lat * std + mean
        checkpointed = self.decoder_checkpointing and torch.is_grad_enabled()
        if (crop is not None or checkpointed) and not self.vae.use_tiling:
            from .decoding import decode

            video = decode(self.vae, z, checkpointed=checkpointed, crop=crop)
        else:
            video = self.vae.decode(z, return_dict=False)[0]  # (B, 3, F, H, W) in [-1, 1]
            if crop is not None:  # tiled: the whole frame, then the window
                s = self.vae_scale_factor
                video = video[..., crop[0] * s:crop[1] * s, crop[2] * s:crop[3] * s]
        return (video.permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)

    def decode_frames(self, latents: torch.Tensor, indices: list[int], crop=None) -> torch.Tensor:
        """The VAE is causal in time: pixel frame p needs latent frames 0..latent_frames(p+1)-1, and
        decoding that prefix gives the same frames as decoding the whole clip."""
        last = max(indices)
        needed = (0 if last == 0 else (last - 1) // TEMPORAL + 1) + 1  # latent frame of `last`, counted from 1
        prefix = latents[:, :, :needed]
        return (self.decode(prefix) if crop is None else self._decode(prefix, crop))[:, list(indices)]

    def decode_window(self, latents: torch.Tensor, indices: list[int], box: tuple[int, int, int, int]) -> torch.Tensor:
        """The whole latent frames through the mid block, only the window through the up blocks: the
        window's pixels are exact `window_margin` latent pixels in from its edges (decoding.py)."""
        return self.decode_frames(latents, indices, crop=box)

    def enable_gradient_checkpointing(self) -> None:
        self.denoiser.enable_gradient_checkpointing()  # the high-noise expert runs under grad only with its adapter
        if self._pair is not None:
            self.high_noise.enable_gradient_checkpointing()
        self.enable_decoder_checkpointing()

    def enable_decoder_checkpointing(self) -> None:
        """diffusers' AutoencoderKLWan has no checkpointing: pv's own, per latent frame with its
        feature cache (decoding.py), for decodes under gradient."""
        self.decoder_checkpointing = True

    # ----------------------------------------------------------------- generation
    def pipeline(self, video: bool = False):
        """diffusers' WanPipeline (WanVideoToVideoPipeline for `video`) around this backbone's own
        modules (no copies)."""
        if self._pipe is None:
            from diffusers import WanPipeline

            experts = {"transformer": self.denoiser} if self.high_noise is None else {
                "transformer": self.high_noise, "transformer_2": self.denoiser, "boundary_ratio": self.boundary_ratio}
            self._pipe = WanPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae,
                                     scheduler=self.new_scheduler(), expand_timesteps=self.expand_timesteps, **experts)
            self._pipe.set_progress_bar_config(disable=True)
        if not video:
            return self._pipe
        if self._video_pipe is None:
            from diffusers import WanVideoToVideoPipeline

            self._video_pipe = WanVideoToVideoPipeline.from_pipe(self._pipe)
            self._video_pipe.set_progress_bar_config(disable=True)
        return self._video_pipe

    def pipeline_call(self, plan, *, prompt, negative_prompt, num_inference_steps, guidance_scale, generator,
                      callback_on_step_end=None) -> torch.Tensor:
        self.check_frames(plan.frames)
        with self._experts_for_pipeline():
            return self._pipeline_call(plan, prompt=prompt, negative_prompt=negative_prompt,
                                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                       generator=generator, callback_on_step_end=callback_on_step_end)

    def _pipeline_call(self, plan, *, prompt, negative_prompt, num_inference_steps, guidance_scale, generator,
                       callback_on_step_end=None) -> torch.Tensor:
        if plan.controls:
            return self._vace_call(plan, prompt=prompt, negative_prompt=negative_prompt,
                                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                   generator=generator, callback_on_step_end=callback_on_step_end)
        video = plan.video is not None
        if video and (self.high_noise is not None or self.expand_timesteps):  # refused before loading too (refuse_wan)
            raise no_video("A14B, two experts" if self.high_noise is not None else "TI2V-5B")
        pipe = self.pipeline(video=video)
        pipe.scheduler = self.new_scheduler()
        kwargs = dict(plan.call_kwargs)
        if plan.guidance_scale_2:  # the low-noise expert's (guidance_at refused it on one expert)
            kwargs["guidance_scale_2"] = self.guidance_at(0, guidance_scale, plan.guidance_scale_2)
        if video:  # the clip, resampled to plan.frames (4k+1) and the size, re-noised to `strength`
            kwargs.update(video=list(plan.video.to(self.device, torch.float32)), strength=plan.strength)
        else:
            kwargs["num_frames"] = plan.frames
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, height=plan.height, width=plan.width,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=generator, output_type="latent", callback_on_step_end=callback_on_step_end,
                   max_sequence_length=self.max_sequence_length, **kwargs)
        return out.frames  # latents (B, C, F', h, w), decoded by `decode`

    # ----------------------------------------------------------------- control (VACE)
    def vace_pipeline(self):
        """diffusers' WanVACEPipeline around this backbone's modules, its VACE transformer assembled
        around the denoiser (vace.py: the base modules are the denoiser's own, so the identity
        adapter, its gating and style LoRAs act in it unchanged); built on first use."""
        if self._vace_pipe is None:
            from diffusers import WanVACEPipeline

            from .vace import load_vace, tiny_vace

            if self.high_noise is not None:
                raise no_control_on_experts(self.info.get("base_model", self.name))
            ref = self.vace_model
            if not ref:
                raise no_vace(self.info.get("base_model", self.name))
            vace = tiny_vace(self.denoiser, self.vae, self.vace_seed) if ref == "tiny" else \
                load_vace(ref, self.denoiser, self.info.get("base_model", self.name))
            self._vace_pipe = WanVACEPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae,
                                              scheduler=self.new_scheduler(), transformer=vace)
            self._vace_pipe.set_progress_bar_config(disable=True)
        return self._vace_pipe

    def _vace_call(self, plan, *, prompt, negative_prompt, num_inference_steps, guidance_scale, generator,
                   callback_on_step_end=None) -> torch.Tensor:
        """One clip through WanVACEPipeline: the control maps (already at plan.frames, 4k+1, and the
        clip's size) as VACE's control video with an all-ones mask (every frame generated, guided by
        the maps); `scale` -> conditioning_scale, `start`/`end` -> the steps it acts on."""
        from .vace import control_window

        if len(plan.controls) > 1:
            raise one_control(len(plan.controls), ", ".join(c.label or "control" for c in plan.controls))
        if plan.video is not None:
            raise VIDEO_WITH_CONTROL
        control = plan.controls[0]
        pipe = self.vace_pipeline()
        pipe.scheduler = self.new_scheduler()
        plan.record["control_model"] = self.vace_model if self.vace_model != "tiny" else f"tiny(seed={self.vace_seed})"
        with control_window(pipe.transformer, num_inference_steps, control.start, control.end) as advance:
            def callback(p, i, t, kwargs):
                advance(i)
                return callback_on_step_end(p, i, t, kwargs) if callback_on_step_end is not None else kwargs

            out = pipe(prompt=prompt, negative_prompt=negative_prompt, video=control.frames[None].to(self.device, torch.float32),
                       conditioning_scale=float(control.scale), height=plan.height, width=plan.width,
                       num_frames=plan.frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                       generator=generator, output_type="latent", callback_on_step_end=callback,
                       max_sequence_length=self.max_sequence_length, **plan.call_kwargs)
        return out.frames

    def load_lora(self, source: str, name: str) -> None:
        """diffusers' Wan LoRA loader (diffusers keys, ComfyUI-native and musubi-tuner files)."""
        def error(exc):
            return PVError(f"--lora {source}: not a LoRA this Wan model can load ({str(exc).splitlines()[0][:200]})",
                           "use a Wan 2.1 LoRA of the same size (diffusers, ComfyUI or musubi-tuner keys)")

        if self.high_noise is not None:
            raise no_lora_on_experts(source)
        load_pipeline_lora(self.pipeline(), source, name, error)

    def lora_modules(self) -> list[torch.nn.Module]:
        return [self.denoiser] if self._pair is None else [self.high_noise, self.denoiser]


# --------------------------------------------------------------------------- tiny


@dataclass
class TinyWanOptions(SpeedOptions):
    seed: int = 0
    dtype: str = "float32"
    shift: float = 3.0  # the flow-matching shift of the tiny model's scheduler
    # euler: FlowMatchEulerDiscreteScheduler; unipc: the Wan repos' own sampler, UniPCMultistepScheduler
    # with flow sigmas (multistep: each step uses the model outputs of the steps before it)
    scheduler: str = "euler"
    experts: int = 1  # 2: a high-noise and a low-noise transformer, as Wan 2.2 A14B (boundary_ratio below)
    boundary_ratio: float = 0.875  # Wan 2.2 A14B's: the high-noise expert takes t >= 875 of 1000
    # --control's VACE: "tiny" builds one around the tiny transformer (its control branch random
    # under vace_seed); a folder or hub id loads a VACE checkpoint built on this transformer
    vace_model: str = "tiny"
    vace_seed: int = 0
    swap_experts: bool = True  # two experts: the idle one waits on the host while pv's sampler runs
    adapter_experts: str = "low"  # two experts: the adapter on the low-noise one, or on both


TINY_SCHEDULERS = ("euler", "unipc")


def flow_scheduler(name: str, shift: float):
    """The tiny model's sampler: flow-matching Euler, or UniPC configured as the Wan repos ship it
    (flow_prediction, use_flow_sigmas, flow_shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def build_tiny_components(seed: int = 0, shift: float = 3.0, experts: int = 1, scheduler: str = "euler") -> dict:
    """Every Wan component, tiny, from configs, deterministic for a seed: a 2-block transformer
    (4 heads of 16), a 4-level causal VAE (8x spatial, 4x temporal) of base width 16, a 2-layer UMT5
    with pv's offline character tokenizer. diffusers' own test sizes (VAE width 3, 2 heads of 12)
    decode near-flat frames (std 0.06) that the ID loss cannot move (measured: a fixed clip's
    similarity flat over 6 steps); at these sizes it climbs every step (-0.061 -> -0.014)."""
    quiet_libraries()
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from pv_tiny import CHAR_VOCAB_SIZE, char_tokenizer
    from transformers import UMT5Config, UMT5EncoderModel

    def tiny_transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = tiny_transformer()
        vae = AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=CHAR_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64,
                                                   num_layers=2, num_heads=4))
        extra = {"transformer_2": tiny_transformer()} if experts == 2 else {}  # drawn after the rest: same 1-expert model
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=char_tokenizer(),
                scheduler=flow_scheduler(scheduler, shift), **extra)


def make_tiny_wan(options: dict | None = None, device: str | None = "cpu") -> WanBackbone:
    opts = validate_options(TinyWanOptions, options or {}, "backbone.options")
    dev = resolve_device(device)
    if opts.experts not in (1, 2):
        raise PVError(f"backbone.options.experts must be 1 or 2, got {opts.experts}")
    if not 0 < opts.boundary_ratio < 1:
        raise PVError(f"backbone.options.boundary_ratio must be between 0 and 1 (the share of the timesteps the "
                      f"high-noise expert takes from the top), got {opts.boundary_ratio:g}")
    check_adapter_experts(opts.adapter_experts, opts.experts)
    if opts.scheduler not in TINY_SCHEDULERS:
        raise PVError(f"backbone.options.scheduler must be one of {', '.join(TINY_SCHEDULERS)}, got {opts.scheduler!r}")
    c = build_tiny_components(opts.seed, opts.shift, opts.experts, opts.scheduler)
    kind = "flow-match-euler" if opts.scheduler == "euler" else "unipc-flow"
    info = {"base_model": f"tiny-wan(seed={opts.seed})", "scheduler": f"{kind}(shift={opts.shift:g})"}
    experts = {} if opts.experts == 1 else {"transformer_2": c["transformer_2"], "boundary_ratio": opts.boundary_ratio}
    return store_frozen_weights(WanBackbone(
        "wan-tiny", c["transformer"], c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"], info, dev,
        resolve_dtype(opts.dtype, dev), max_sequence_length=32, random_weights=True, vace_model=opts.vace_model,
        vace_seed=opts.vace_seed, swap_experts=opts.swap_experts, adapter_experts=opts.adapter_experts, **experts),
        opts.weights, EXPERTS)


# --------------------------------------------------------------------------- real weights


@dataclass
class WanOptions(SpeedOptions):
    model: str = DEFAULT_MODEL  # hub id, HF cache or a local folder in diffusers layout
    dtype: str = "auto"  # auto: bfloat16 on CUDA (the VAE stays fp32), float32 on CPU
    flow_shift: float = 0.0  # 0: the repo's scheduler as shipped; else its flow shift (3 for 480p, 5 for 720p)
    max_sequence_length: int = 512
    revision: str = ""
    # --control's VACE model (hub id or diffusers folder) built on `model`; empty: the known one
    # (Wan-AI/Wan2.1-VACE-1.3B-diffusers / -14B-diffusers for the 2.1 T2V models), loaded on first use
    vace_model: str = ""
    swap_experts: bool = True  # Wan 2.2 A14B: the idle expert waits on the host while pv's sampler runs
    # Wan 2.2 A14B: the identity adapter on the low-noise expert (low) or on both experts (both)
    adapter_experts: str = "low"


def make_wan(options: dict | None = None, device: str | None = None) -> WanBackbone:
    opts = validate_options(WanOptions, options or {}, "backbone.options")
    if opts.adapter_experts not in ADAPTER_EXPERTS:  # before minutes of loading (one expert: once loaded)
        check_adapter_experts(opts.adapter_experts, 2)
    dev = resolve_device(device)
    dtype = resolve_dtype(opts.dtype, dev, cuda_auto=torch.bfloat16)
    quiet_libraries()
    from diffusers import WanPipeline

    extra = {"revision": opts.revision} if opts.revision else {}
    # the VAE loads in fp32 (diffusers takes a dtype per component): loaded in the model's bf16 and
    # upcast, its weights would keep bf16's rounding (3.6e-3 relative error)
    pipe = load_pretrained("backbone.options.model", opts.model, WanPipeline.from_pretrained,
                           dtype={"default": dtype, "vae": torch.float32},
                           what="Wan model", offline_hint="run offline with --profile tiny-wan", **extra)
    scheduler = pipe.scheduler
    if opts.flow_shift:  # UniPC calls it flow_shift, FlowMatchEuler (some repos ship it) shift
        key = "flow_shift" if "flow_shift" in scheduler.config else "shift"
        scheduler = type(scheduler).from_config(scheduler.config, **{key: opts.flow_shift})
    info = {"base_model": opts.model, "scheduler": type(scheduler).__name__}
    two_experts = getattr(pipe, "transformer_2", None) is not None
    if two_experts or pipe.config.get("expand_timesteps"):  # Wan 2.2 (A14B, TI2V-5B)
        info.update(base_model_version="wan2.2", architecture="wan2.2-a14b" if two_experts else "wan2.2-ti2v-5b")
    experts = {"transformer_2": pipe.transformer_2, "boundary_ratio": pipe.config.boundary_ratio} if two_experts else {}
    return store_frozen_weights(WanBackbone(
        "wan", pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler, info, dev, dtype,
        max_sequence_length=opts.max_sequence_length, expand_timesteps=bool(pipe.config.get("expand_timesteps")),
        vace_model=opts.vace_model or VACE_MODELS.get(opts.model, ""), swap_experts=opts.swap_experts,
        adapter_experts=opts.adapter_experts, **experts),
        opts.weights, EXPERTS)


def with_speed_options(backbone: WanBackbone, options: dict | None) -> WanBackbone:
    """backbone.options.tf32 and compile act on a Wan backbone (as on AnimateDiff's): TF32 matmuls
    on CUDA, and torch.compile of the denoiser and, on A14B, the high-noise expert too."""
    from pv_animatediff.backbone import apply_speed_options

    opts = SpeedOptions(**{k: v for k, v in (options or {}).items() if k in ("tf32", "compile", "weights")})
    apply_speed_options(backbone, opts)
    if opts.compile and backbone.high_noise is not None:
        backbone.high_noise.compile()
    return backbone
