"""`pv export NAME --format comfy` of a HunyuanVideo identity also writes a ComfyUI workflow (API
format) that renders pv's clip, wired as ComfyUI's own HunyuanVideo text-to-video template loads
the model (DualCLIPLoader of CLIP-L and LLaVA-LLaMA-3, FluxGuidance for the embedded guidance, no
classifier-free guidance: cfg 1), with the flow shift (ModelSamplingSD3), steps, size and frames of
the identity's settings; the base model up to the identity's gate and the LoRA model after it, as
KSamplerAdvanced stages on one schedule. The files are ComfyUI's repackaged ones."""

from __future__ import annotations

import re

from pvcli.errors import PVError
from pvcli.workflows import ComfyWorkflow, comfy_sampler, gate_step, gated_model, sample_stages

# what ComfyUI's HunyuanVideo template loads (hunyuan_video_text_to_video.json)
CLIP_L, LLAMA = "clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors"
MODEL, VAE = "hunyuan_video_t2v_720p_bf16.safetensors", "hunyuan_video_vae_bf16.safetensors"
EXAMPLE_PROMPT = "{id} smiling, looking at the camera"


def identity_shift(meta: dict, settings: dict) -> float:
    """The flow shift the identity generates with: what it recorded, else its settings' option."""
    options = (settings.get("backbone") or {}).get("options") or {}
    found = re.search(r"shift=([\d.]+)", str(meta.get("scheduler", "")))
    shift = meta.get("flow_shift") or (found.group(1) if found else None) or options.get("flow_shift") \
        or options.get("shift")
    if not shift or float(shift) <= 0:
        raise PVError(f"identity {meta.get('identity', '')!r} does not record its flow shift, which the ComfyUI "
                      "workflow needs (ModelSamplingSD3)", "export with --format diffusers")
    return float(shift)


def comfy_workflow(meta: dict, settings: dict, lora_name: str) -> tuple[dict, str]:
    from pvcli.engine.prompts import identity_phrase, with_identity

    from .backbone import HunyuanFlowScheduler

    g = settings.get("generate") or {}
    steps = int(g.get("steps", 30))
    shift = identity_shift(meta, settings)
    scheduler = HunyuanFlowScheduler(shift=shift)
    switch, gate = gate_step(meta, scheduler, steps)
    wf = ComfyWorkflow()
    clip = wf.add("DualCLIPLoader", clip_name1=CLIP_L, clip_name2=LLAMA, type="hunyuan_video")
    vae = wf.add("VAELoader", vae_name=VAE)
    phrase = identity_phrase(meta.get("token", "sks"), meta.get("class_word", "person"))
    text = wf.add("CLIPTextEncode", clip=clip, text=with_identity(EXAMPLE_PROMPT, phrase))
    positive = wf.add("FluxGuidance", conditioning=text, guidance=float(g.get("guidance_scale", 6.0)))
    negative = wf.add("CLIPTextEncode", clip=clip, text="")  # unused at cfg 1 (guidance-distilled)
    latent = wf.add("EmptyHunyuanLatentVideo", width=int(g.get("width", 512)), height=int(g.get("height", 320)),
                    length=int(g.get("frames", 61)), batch_size=1)
    known = meta.get("base_model") == "hunyuanvideo-community/HunyuanVideo"
    unet = wf.add("UNETLoader", unet_name=MODEL if known else f"{meta.get('base_model', 'model')}.safetensors",
                  weight_dtype="default")
    stages, wiring = gated_model(wf, unet, lora_name, shift, switch, steps)
    if gate is not None:
        wiring += f" (noise level <= {gate:.3f})"
    final = sample_stages(wf, stages, steps=steps, seed=int(g.get("seed", 0)), cfg=1.0,
                          sampler=comfy_sampler(scheduler), positive=positive, negative=negative, latent=latent)
    images = wf.add("VAEDecode", samples=final, vae=vae)
    video = wf.add("CreateVideo", images=images, fps=float(g.get("fps", 15)))
    wf.add("SaveVideo", video=video, filename_prefix=f"video/{meta.get('identity', 'pv')}", format="auto", codec="auto")
    return wf.to_dict(), wiring
