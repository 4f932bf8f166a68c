from __future__ import annotations

from dataclasses import dataclass

import torch
from pv_animatediff.backbone import (
    AnimateDiffBackbone,
    AnimateDiffOptions,
    Family,
    SpeedOptions,
    apply_speed_options,
    load_family,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
)
from pv_animatediff.schedulers import make_scheduler

from pvcli.errors import PVError
from pvcli.settings import validate_options

from . import ACCEPTS

SDXL = Family("AnimateDiffSDXLPipeline", "StableDiffusionXLPipeline",
              ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"), "sdxl",
              {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"})


class AnimateDiffSDXLBackbone(AnimateDiffBackbone):
    """SDXL conditions on two text encoders' penultimate hidden states (concatenated), the second
    encoder's pooled projection, and time ids (original size, crop corner, target size)."""
    accepts = ACCEPTS  # what it takes: the package's ACCEPTS, registered with it

    long_videos = False  # diffusers' SDXL AnimateDiff pipeline has no FreeNoise

    def __init__(self, name, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler, info,
                 device, dtype, force_zeros_for_empty_prompt: bool = True, random_weights: bool = False):
        super().__init__(name, unet, vae, text_encoder, tokenizer, scheduler, info, device, dtype, random_weights)
        self.text_encoder_2 = text_encoder_2.to(device, dtype).eval().requires_grad_(False)
        self.tokenizer_2 = tokenizer_2
        self.force_zeros = force_zeros_for_empty_prompt

    def describe(self) -> dict[str, str]:
        return {"backbone": self.name, **self.info, "base_model_version": "sdxl_base_v1-0",
                "architecture": "stable-diffusion-xl-v1-base"}

    frozen_parts = ("text_encoder", "text_encoder_2", "vae")
    text_encoders = ("text_encoder", "text_encoder_2")

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's pooled projection
        cond = {"embeds": torch.cat(hidden, dim=-1).to(self.dtype), "pooled": pooled.to(self.dtype)}
        if self.force_zeros:  # SDXL's convention for an empty (negative) prompt, as its pipeline does
            empty = torch.tensor([not p for p in prompts], device=self.device)[:, None]
            cond = {k: torch.where(empty.view(-1, *[1] * (v.dim() - 1)), torch.zeros_like(v), v) for k, v in cond.items()}
        return cond

    def time_ids(self, height: int, width: int, batch: int) -> torch.Tensor:
        """original size, crop top-left, target size: the clip's own size, no crop (the pipeline's default)."""
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype, device=self.device).repeat(batch, 1)

    def predict_noise(self, latents, t, embeds):
        b, f = latents.shape[0], latents.shape[2]
        h, w = latents.shape[3] * self.vae_scale_factor, latents.shape[4] * self.vae_scale_factor
        added = {"text_embeds": embeds["pooled"], "time_ids": self.time_ids(h, w, b)}
        hidden = embeds["embeds"].repeat_interleave(f, dim=0)
        return self.unet(latents.to(self.dtype), t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample.float()

    def pipeline(self, controlnets: list | None = None, video: bool = False):
        if controlnets or video:
            what = "ControlNet" if controlnets else "video-to-video"
            raise PVError(f"backbone {self.name!r} has no {what} pipeline in diffusers",
                          "use an SD 1.5 AnimateDiff profile for that")
        if self._pipe is None:
            import diffusers

            self._pipe = diffusers.AnimateDiffSDXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet, motion_adapter=None,
                scheduler=self.new_scheduler(), force_zeros_for_empty_prompt=self.force_zeros)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def pipeline_call(self, plan, *, prompt, negative_prompt, num_inference_steps, guidance_scale, generator,
                      callback_on_step_end=None) -> torch.Tensor:
        pipe = self.pipeline([c.model for c in plan.controls], video=plan.video is not None)
        if plan.frames > self.max_frames:
            raise PVError(f"{plan.frames} frames exceed this backbone's motion window of {self.max_frames}",
                          "generate at most that many frames")
        pipe.scheduler = self.new_scheduler()
        out = pipe(prompt=prompt, negative_prompt=negative_prompt or None, height=plan.height, width=plan.width,
                   num_frames=plan.frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=generator, output_type="latent", callback_on_step_end=callback_on_step_end,
                   **plan.call_kwargs)
        return out.frames

    def lora_modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.text_encoder, self.text_encoder_2]


# --------------------------------------------------------------------------- tiny


@dataclass
class TinyOptions(SpeedOptions):
    seed: int = 0
    dtype: str = "float32"
    scheduler: str = "ddim"


def build_tiny_sdxl_components(seed: int = 0, scheduler: str = "ddim") -> dict:
    """SDXL's architecture in miniature: no attention in the first level and more transformer
    layers deeper, linear projections, text_time additional embeddings (time ids + the second
    encoder's pooled projection), two text encoders whose hidden states are concatenated."""
    quiet_libraries()
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from pv_tiny import BOS_ID, CHAR_VOCAB_SIZE, EOS_ID, char_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text = dict(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, hidden_size=32, intermediate_size=37,
                layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=CHAR_VOCAB_SIZE,
                max_position_embeddings=77, hidden_act="gelu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet2d = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64, norm_num_groups=2,
        )
        adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=2,
                                motion_num_attention_heads=4, motion_max_seq_length=32, use_motion_mid_block=False)
        vae = AutoencoderKL(
            block_out_channels=[32, 64, 64], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
            down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, sample_size=64,
            scaling_factor=0.13025,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32))
    return dict(unet2d=unet2d, motion_adapter=adapter, vae=vae, text_encoder=text_encoder,
                text_encoder_2=text_encoder_2, tokenizer=char_tokenizer(), tokenizer_2=char_tokenizer(),
                scheduler=make_scheduler(scheduler))


def make_tiny_sdxl(options: dict | None = None, device: str | None = "cpu") -> AnimateDiffSDXLBackbone:
    opts = validate_options(TinyOptions, options or {}, "backbone.options")
    dev = resolve_device(device)
    from diffusers import UNetMotionModel

    c = build_tiny_sdxl_components(opts.seed, opts.scheduler)
    with torch.random.fork_rng(devices=[]):  # it draws weights it then overwrites: leave the global stream alone
        unet = UNetMotionModel.from_unet2d(c["unet2d"], c["motion_adapter"])
    info = {"base_model": f"tiny-sdxl(seed={opts.seed})", "motion_adapter": "tiny-sdxl", "scheduler": opts.scheduler}
    return apply_speed_options(AnimateDiffSDXLBackbone(
        "animatediff-sdxl-tiny", unet, c["vae"], c["text_encoder"], c["text_encoder_2"], c["tokenizer"], c["tokenizer_2"],
        c["scheduler"], info, dev, resolve_dtype(opts.dtype, dev), random_weights=True), opts)


# --------------------------------------------------------------------------- real weights


@dataclass
class SDXLOptions(AnimateDiffOptions):
    base_model: str = "stabilityai/stable-diffusion-xl-base-1.0"
    motion_adapter: str = "guoyww/animatediff-motion-adapter-sdxl-beta"


def make_animatediff_sdxl(options: dict | None = None, device: str | None = None) -> AnimateDiffSDXLBackbone:
    opts = validate_options(SDXLOptions, options or {}, "backbone.options")
    dev = resolve_device(device)
    dtype = resolve_dtype(opts.dtype, dev)
    m, info = load_family(SDXL, opts, dtype)
    return apply_speed_options(AnimateDiffSDXLBackbone(
        "animatediff-sdxl", m["unet"], m["vae"], m["text_encoder"], m["text_encoder_2"], m["tokenizer"], m["tokenizer_2"],
        m["scheduler"], info, dev, dtype), opts)
