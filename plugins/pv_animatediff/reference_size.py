"""The real SD 1.5 + AnimateDiff v1-5 architecture at full size with random weights, built from the
configs that ship with the plugin (no download): for counting where the adapter lands and for
measuring and extrapolating memory and time (bench/ratios.py, the PV_RUN_SLOW test)."""

from __future__ import annotations

import json

import torch

from .backbone import AnimateDiffBackbone, quiet_libraries
from .schedulers import make_scheduler
from .single_file import CONFIGS, clip_tokenizer


def build_sd15_random(device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> AnimateDiffBackbone:
    quiet_libraries()
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def config(part: str) -> dict:
        return json.loads((CONFIGS / "sd15" / part / "config.json").read_text())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet2d = UNet2DConditionModel.from_config(config("unet"))
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter())  # the v1-5(-2) motion adapter's shape
        del unet2d
        vae = AutoencoderKL.from_config(config("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**config("text_encoder")))
    info = {"base_model": "random(sd15 configs)", "motion_adapter": "random(v1-5)", "scheduler": "ddim"}
    return AnimateDiffBackbone("animatediff", unet, vae, text_encoder, clip_tokenizer(), make_scheduler("ddim"), info,
                               device, dtype, random_weights=True)
