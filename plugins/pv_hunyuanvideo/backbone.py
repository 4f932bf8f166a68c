"""The HunyuanVideo family as a pv backbone: a 13B diffusion transformer (20 dual-stream blocks,
where video and text tokens have their own weights and meet in one joint attention, then 40
single-stream blocks over the concatenated tokens), trained with flow matching and distilled for
guidance (the guidance scale is an input of the transformer, `embedded_guidance`: no unconditional
branch), a LLaMA text model (hidden states + mask) and a CLIP pooled vector as conditioning, and a
3D VAE that folds 4 frames into one latent frame. Everything runs through diffusers'
HunyuanVideoPipeline or its own modules.

What passes information between video tokens. There is no separate temporal module: every
block's attention is full 3D attention over all video tokens (and the text). pv keeps one rule on
every family (README, "Where the adapter goes"): whatever passes information between video tokens
stays frozen and bit-identical, the video tokens' self-attention whole: the queries and keys and
their norms (where a token looks) and the values and output projection (what crosses frames and
how it is written back). In a double-stream block that is attn.to_q, to_k, to_v, to_out.0,
norm_q, norm_k, and the text stream's side of the joint attention, whose queries read every video
token and whose output carries that mix back to all of them (attn.add_q_proj, to_add_out,
norm_added_q, norm_added_k); in a single-stream block, attn.to_q, to_k, to_v, norm_q, norm_k and
proj_out (the original linear2, the attention output projection fused with the MLP's second
layer). MIXING matches them all (protected_modules / protected_pattern: a target set reaching one
is refused).

Where the identity adapter goes: on what acts per token or reads the text.
  attention: in each double-stream block, the text keys and values the video tokens read
             (attn.add_k_proj, attn.add_v_proj: the cross-attention part of the joint attention,
             Wan's attn2 counterpart). The single-stream blocks read the text through the same
             fused q, k, v as the video's own mixing, so this set leaves them alone;
  spatial:   the above, plus the image stream's feed-forward net (ff.net.0.proj, ff.net.2) and each
             single-stream block's MLP input (proj_mlp): every one of the 60 blocks gets an adapter.
In the original model a single-stream block's q, k, v and MLP input are one fused layer
(`linear1`): the export writes proj_mlp's adapter on linear1 with lora_B zero on the q, k, v rows,
exactly proj_mlp's delta (lora_keys.py). Identities tuned before this rule (their adapter on the
double-stream to_v/to_out.0 and the single-stream proj_out) load on the layers they were tuned on."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
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

quiet_libraries()
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402  (after quiet_libraries)

from . import ACCEPTS  # noqa: E402

_DOUBLE = r"transformer_blocks\.\d+"
_SINGLE = r"single_transformer_blocks\.\d+"
_TEXT = rf"{_DOUBLE}\.attn\.(add_k_proj|add_v_proj)"  # the text keys and values the video tokens read
TARGETS = {"attention": _TEXT,
           "spatial": rf"{_TEXT}|{_DOUBLE}\.ff\.net\.(0\.proj|2)|{_SINGLE}\.proj_mlp"}
# what passes information between video tokens (see the module docstring): the video tokens'
# self-attention whole (queries, keys, their norms, values, output) and the text stream's queries
# and output in the joint attention; in the single-stream blocks proj_out holds the attention output
MIXING = (rf"{_DOUBLE}\.attn\.(to_q|to_k|to_v|to_out\.0|norm_q|norm_k|add_q_proj|to_add_out|norm_added_q|norm_added_k)"
          rf"|{_SINGLE}\.(attn\.(to_q|to_k|to_v|norm_q|norm_k)|proj_out)")
TEMPORAL = 4  # pixel frames per latent frame (after the first)
MAX_FRAMES = 129  # the clip length HunyuanVideo is trained and shipped for (5 s at 24 fps + 1)


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL + 1


class HunyuanFlowScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatchEulerDiscreteScheduler on HunyuanVideoPipeline's own schedule: the
    pipeline sets sigmas linspace(1, 0, n + 1)[:-1] (shifted by the scheduler), where the bare
    scheduler would space timesteps down to its sigma_min. pv's sampler asks for n steps; this
    gives it the pipeline's sigmas, so tuning samples what generation renders."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, **kwargs):
        if sigmas is None and kwargs.get("timesteps") is None and num_inference_steps:
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        return super().set_timesteps(num_inference_steps, device, sigmas=sigmas, **kwargs)


class HunyuanVideoBackbone(Backbone):
    accepts = ACCEPTS  # what it takes: the package's ACCEPTS, registered with it
    long_videos = False
    target_sets = TARGETS
    component = "transformer"
    embedded_guidance = True  # guidance-distilled: the scale goes into the transformer, no true CFG
    frozen_parts = ("text_encoder", "text_encoder_2", "vae")
    text_encoders = ("text_encoder", "text_encoder_2")
    frame_mixing = "attn"  # the video tokens' self-attention, whole: see MIXING and the module docstring
    mixing = MIXING

    def __init__(self, name, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler,
                 info: dict, device, dtype, prompt_template: dict, max_sequence_length: int = 256,
                 random_weights: bool = False, vae_dtype: torch.dtype = torch.float32):
        self.name = name
        self.random_weights = random_weights
        # on the host until place_denoiser (after the prompt pool is embedded) or its first denoising step
        self.denoiser = transformer.to(dtype=dtype).eval().requires_grad_(False)  # where it loaded (the host)
        self.placed = all(t.device.type == torch.device(device).type  # weights and buffers already there
                          for t in [*transformer.parameters(), *transformer.buffers()])
        self.vae = vae.to(device, vae_dtype).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(device, dtype).eval().requires_grad_(False)
        self.text_encoder_2 = text_encoder_2.to(device, dtype).eval().requires_grad_(False)
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.scheduler = scheduler if isinstance(scheduler, HunyuanFlowScheduler) else \
            HunyuanFlowScheduler.from_config(scheduler.config)
        self.device = torch.device(device)
        self.dtype = dtype
        self.info = info
        self.prompt_template = prompt_template
        self.max_sequence_length = max_sequence_length
        self.latent_channels = transformer.config.in_channels
        self.vae_scale_factor = int(vae.spatial_compression_ratio)
        self.max_frames = MAX_FRAMES
        self._pipe = None

    @property
    def transformer(self) -> torch.nn.Module:
        return self.denoiser

    def describe(self) -> dict[str, str]:
        return {"backbone": self.name, "base_model_version": "hunyuan-video", "architecture": "hunyuan-video-t2v",
                **self.info}

    # ----------------------------------------------------------------- frame mixing
    def protected_modules(self) -> dict[str, torch.nn.Module]:
        mixing = {n: m for n, m in self.denoiser.named_modules() if re.fullmatch(self.mixing, n)}
        return {**mixing, **{part: getattr(self, part) for part in self.frozen_parts}}

    def protected_pattern(self) -> str:
        return rf"(^|\.)({self.mixing})(\.|$)"

    # ----------------------------------------------------------------- frames
    def latent_frames(self, frames: int) -> int:
        return latent_frames(frames)

    def check_frames(self, frames: int, flag: str = "--frames") -> None:
        from . import check_frames

        check_frames(frames, flag)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The pipeline's own encoding: LLaMA hidden states (the prompt template's system part
        cropped off) with their mask, and CLIP's pooled vector."""
        embeds, pooled, mask = self.pipeline().encode_prompt(prompts, prompt_template=self.prompt_template,
                                                             device=self.device,
                                                             max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds.to(self.dtype), "attention_mask": mask.to(self.dtype),
                "pooled_projections": pooled.to(self.dtype)}

    def place_denoiser(self) -> None:
        if not self.placed:
            self.denoiser.to(self.device)
            self.placed = True

    def predict_noise(self, latents, t, embeds, guidance: float = 1.0):
        """The flow velocity (noise - clean) under embedded guidance `guidance` (as the pipeline:
        scale x 1000 into the transformer's guidance embedding)."""
        self.place_denoiser()
        b = latents.shape[0]
        timestep = torch.as_tensor(t, device=self.device).expand(b).to(torch.float32)
        scale = torch.full((b,), float(guidance), dtype=self.dtype, device=self.device) * 1000.0
        return self.denoiser(hidden_states=latents.to(self.dtype), timestep=timestep,
                             encoder_hidden_states=embeds["prompt_embeds"],
                             encoder_attention_mask=embeds["attention_mask"],
                             pooled_projections=embeds["pooled_projections"], guidance=scale,
                             return_dict=False)[0].float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        lat = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        video = self.vae.decode(lat, return_dict=False)[0]  # (B, 3, F, H, W) in [-1, 1]
        return (video.permute(0, 2, 1, 3, 4).float() / 2 + 0.5).clamp(0, 1)

    def decode_frames(self, latents: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """The whole clip, then the frames. The VAE's convolutions and mid-block attention are
        causal in time, but its GroupNorms take their statistics over every frame, so a latent
        prefix decodes to different pixels than the same frames of the whole clip (measured: 0.15
        on the tiny model): there is no exact shortcut."""
        return self.decode(latents)[:, list(indices)]

    def enable_gradient_checkpointing(self) -> None:
        self.denoiser.enable_gradient_checkpointing()
        if getattr(self.vae, "_supports_gradient_checkpointing", False):
            self.vae.enable_gradient_checkpointing()

    # ----------------------------------------------------------------- generation
    def pipeline(self):
        """diffusers' HunyuanVideoPipeline around this backbone's own modules (no copies)."""
        if self._pipe is None:
            from diffusers import HunyuanVideoPipeline

            self._pipe = HunyuanVideoPipeline(text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                              transformer=self.denoiser, vae=self.vae, scheduler=self.new_scheduler(),
                                              text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def pipeline_call(self, plan, *, prompt, negative_prompt, num_inference_steps, guidance_scale, generator,
                      callback_on_step_end=None) -> torch.Tensor:
        """HunyuanVideoPipeline with embedded guidance `guidance_scale` and true CFG off (the
        negative prompt has no effect on this guidance-distilled model)."""
        if plan.controls:  # the ControlNet conditioner refuses first (`accepts`); kept for direct callers
            raise PVError(f"--control is not available on the {self.name} backbone (diffusers has no HunyuanVideo ControlNet)",
                          "generate without --control, or with a profile of a family that has ControlNets")
        if plan.video is not None:
            raise PVError(f"--video is not available on the {self.name} backbone (diffusers has no HunyuanVideo "
                          "video-to-video pipeline)", "generate from text, or use a Wan or AnimateDiff profile")
        self.check_frames(plan.frames)
        self.place_denoiser()
        pipe = self.pipeline()
        pipe.scheduler = self.new_scheduler()
        out = pipe(prompt=prompt, height=plan.height, width=plan.width, num_frames=plan.frames,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, true_cfg_scale=1.0,
                   generator=generator, output_type="latent", callback_on_step_end=callback_on_step_end,
                   prompt_template=self.prompt_template, max_sequence_length=self.max_sequence_length,
                   **plan.call_kwargs)
        return out.frames  # latents (B, C, F', h, w), decoded by `decode`

    def load_lora(self, source: str, name: str) -> None:
        """diffusers' HunyuanVideo LoRA loader (diffusers keys and original HunyuanVideo keys)."""
        def error(exc):
            return PVError(f"--lora {source}: not a LoRA this HunyuanVideo model can load "
                           f"({str(exc).splitlines()[0][:200]})",
                           "use a HunyuanVideo LoRA (diffusers keys or the original/musubi-tuner keys)")

        load_pipeline_lora(self.pipeline(), source, name, error)

    def lora_modules(self) -> list[torch.nn.Module]:
        return [self.denoiser]


# --------------------------------------------------------------------------- tiny


def tiny_prompt_template(tokenizer) -> dict:
    """diffusers' own HunyuanVideo prompt template, with `crop_start` (where the user's prompt
    begins among the tokens) counted for `tokenizer` (the real template says 95 for LLaMA 3's)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    ids = tokenizer(prefix)["input_ids"]  # BOS, the prefix's characters, EOS
    return {"template": DEFAULT_PROMPT_TEMPLATE["template"], "crop_start": len(ids) - 1}


@dataclass
class TinyHunyuanOptions(SpeedOptions):
    seed: int = 0
    dtype: str = "float32"
    shift: float = 7.0  # the flow-matching shift (HunyuanVideo's repo ships 7.0)


def build_tiny_components(seed: int = 0, shift: float = 7.0) -> dict:
    """Every HunyuanVideo component, tiny, from configs, deterministic for a seed: a transformer of
    2 double-stream and 2 single-stream blocks (4 heads of 16, 2x2 patches, guidance embedding), a
    4-level causal-conv VAE (8x spatial, 4x temporal) of width 16, a 3-layer LLaMA and a 2-layer
    CLIP text model (width 32) with pv's offline character tokenizer, and the prompt template
    cropped for that tokenizer."""
    quiet_libraries()
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from pv_tiny import BOS_ID, CHAR_VOCAB_SIZE, EOS_ID, char_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    ids = dict(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=16, num_layers=2,
            num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=32, pooled_projection_dim=32, rope_axes_dim=(4, 6, 6))
        vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(16, 16, 16, 16), layers_per_block=1,
                                        norm_num_groups=4)
        text_encoder = LlamaModel(LlamaConfig(vocab_size=CHAR_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                                              num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3,
                                              max_position_embeddings=1024, **ids))
        text_encoder_2 = CLIPTextModel(CLIPTextConfig(vocab_size=CHAR_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                                                      num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
                                                      max_position_embeddings=77, **ids))
    tokenizer = char_tokenizer(max_length=1024)  # the LLaMA side reads the template's ~440 characters
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=char_tokenizer(),
                scheduler=HunyuanFlowScheduler(shift=shift), prompt_template=tiny_prompt_template(tokenizer))


def make_tiny_hunyuanvideo(options: dict | None = None, device: str | None = "cpu") -> HunyuanVideoBackbone:
    opts = validate_options(TinyHunyuanOptions, options or {}, "backbone.options")
    dev = resolve_device(device)
    c = build_tiny_components(opts.seed, opts.shift)
    info = {"base_model": f"tiny-hunyuanvideo(seed={opts.seed})", "scheduler": f"flow-match-euler(shift={opts.shift:g})"}
    return store_frozen_weights(HunyuanVideoBackbone(
        "hunyuanvideo-tiny", c["transformer"], c["vae"], c["text_encoder"], c["tokenizer"], c["text_encoder_2"],
        c["tokenizer_2"], c["scheduler"], info, dev, resolve_dtype(opts.dtype, dev), c["prompt_template"],
        max_sequence_length=32, random_weights=True), opts.weights)


# --------------------------------------------------------------------------- real weights


@dataclass
class HunyuanVideoOptions(SpeedOptions):
    model: str = "hunyuanvideo-community/HunyuanVideo"  # hub id, HF cache or a local folder in diffusers layout
    dtype: str = "auto"  # auto: bfloat16 on CUDA (the VAE stays fp32), float32 on CPU
    flow_shift: float = 0.0  # 0: the repo's scheduler as shipped (shift 7.0); else its flow shift
    max_sequence_length: int = 256
    revision: str = ""


def make_hunyuanvideo(options: dict | None = None, device: str | None = None) -> HunyuanVideoBackbone:
    opts = validate_options(HunyuanVideoOptions, options or {}, "backbone.options")
    dev = resolve_device(device)
    dtype = resolve_dtype(opts.dtype, dev, cuda_auto=torch.bfloat16)
    quiet_libraries()
    from diffusers import HunyuanVideoPipeline
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    extra = {"revision": opts.revision} if opts.revision else {}
    # the VAE loads in fp32 (diffusers takes a dtype per component): loaded in the model's bf16 and
    # upcast, its weights would keep bf16's rounding (3.6e-3 relative error)
    pipe = load_pretrained("backbone.options.model", opts.model, HunyuanVideoPipeline.from_pretrained,
                           dtype={"default": dtype, "vae": torch.float32},
                           what="HunyuanVideo model", offline_hint="run offline with --profile tiny-hunyuan", **extra)
    overrides = {"shift": opts.flow_shift} if opts.flow_shift else {}
    scheduler = HunyuanFlowScheduler.from_config(pipe.scheduler.config, **overrides)
    info = {"base_model": opts.model, "scheduler": f"flow-match-euler(shift={scheduler.config.shift:g})"}
    return store_frozen_weights(HunyuanVideoBackbone(
        "hunyuanvideo", pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2,
        pipe.tokenizer_2, scheduler, info, dev, dtype, dict(DEFAULT_PROMPT_TEMPLATE),
        max_sequence_length=opts.max_sequence_length), opts.weights)


def with_speed_options(backbone: HunyuanVideoBackbone, options: dict | None) -> HunyuanVideoBackbone:
    """backbone.options.tf32 and compile act on a HunyuanVideo backbone (as on AnimateDiff's)."""
    from pv_animatediff.backbone import apply_speed_options

    return apply_speed_options(backbone, SpeedOptions(**{k: v for k, v in (options or {}).items()
                                                         if k in ("tf32", "compile", "weights")}))
