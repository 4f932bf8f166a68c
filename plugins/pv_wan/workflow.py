"""`pv export NAME --format comfy` of a Wan identity also writes a ComfyUI workflow (API format)
that renders pv's clip: the profile's sampler, flow shift (ModelSamplingSD3), steps, guidance, size
and frames; the base model up to the identity's gate and the LoRA model after it, as two
KSamplerAdvanced stages on one schedule. Wan 2.2 A14B is wired as ComfyUI's own Wan 2.2 template
wires its experts (a high-noise stage, then the low-noise expert, each its own UNETLoader,
ModelSamplingSD3 and cfg: guidance_scale high, guidance_scale_2 low), the identity's LoRA on each
adapted expert (the low-noise one, or both: one file each) from the gate on. The model files are
ComfyUI's repackaged ones (the names its templates use)."""

from __future__ import annotations

from pvcli.errors import PVError
from pvcli.workflows import ComfyWorkflow, Stage, comfy_sampler, gate_step, gated_model, sample_stages

TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_21, VAE_22 = "wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"
# the diffusers repos pv loads -> ComfyUI's repackaged diffusion models (the files its templates load)
COMFY_MODELS = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan2.1_t2v_1.3B_fp16.safetensors",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": "wan2.1_t2v_14B_fp8_scaled.safetensors",
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": "wan2.2_ti2v_5B_fp16.safetensors",
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                                         "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
}
EXAMPLE_PROMPT = "{id} smiling, looking at the camera"


def _placeholder(base_model: str, suffix: str = "") -> str:
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in base_model.rsplit("/", 1)[-1]).strip("-")
    return f"{slug}{suffix}.safetensors"


def identity_scheduler(meta: dict, settings: dict):
    """The scheduler the identity generates with (its sampler and flow shift, as it recorded them)."""
    from .backbone import flow_scheduler

    options = (settings.get("backbone") or {}).get("options") or {}
    shift = meta.get("flow_shift") or options.get("flow_shift") or options.get("shift")
    if not shift or float(shift) <= 0:
        raise PVError(f"identity {meta.get('identity', '')!r} does not record its flow shift, which the ComfyUI "
                      "workflow needs (ModelSamplingSD3)", "set backbone.options.flow_shift in its config.yaml, "
                      "or export with --format diffusers")
    unipc = "unipc" in str(meta.get("scheduler", "UniPC")).lower()
    return flow_scheduler("unipc" if unipc else "euler", float(shift)), float(shift)


def comfy_workflow(meta: dict, settings: dict, lora_name: str) -> tuple[dict, str]:
    from pvcli.engine.prompts import identity_phrase, with_identity

    g = settings.get("generate") or {}
    steps, frames = int(g.get("steps", 50)), int(g.get("frames", 81))
    height, width = int(g.get("height", 480)), int(g.get("width", 832))
    scheduler, shift = identity_scheduler(meta, settings)
    switch, gate = gate_step(meta, scheduler, steps)
    base = meta.get("base_model", "")
    two_experts = bool(meta.get("expert"))
    ti2v = meta.get("architecture") == "wan2.2-ti2v-5b"
    model = COMFY_MODELS.get(base) or ((_placeholder(base, "_high_noise"), _placeholder(base, "_low_noise"))
                                        if two_experts else _placeholder(base))

    wf = ComfyWorkflow()
    clip = wf.add("CLIPLoader", clip_name=TEXT_ENCODER, type="wan", device="default")
    vae = wf.add("VAELoader", vae_name=VAE_22 if ti2v else VAE_21)
    phrase = identity_phrase(meta.get("token", "sks"), meta.get("class_word", "person"))
    positive = wf.add("CLIPTextEncode", clip=clip, text=with_identity(EXAMPLE_PROMPT, phrase))
    negative = wf.add("CLIPTextEncode", clip=clip, text=str(g.get("negative_prompt", "")))
    if ti2v:
        latent = wf.add("Wan22ImageToVideoLatent", vae=vae, width=width, height=height, length=frames, batch_size=1)
    else:
        latent = wf.add("EmptyHunyuanLatentVideo", width=width, height=height, length=frames, batch_size=1)

    loaded: dict = {}

    def expert(file: str, lora: str | None):
        """The model a stage samples with: the diffusion model (each file loaded once), the LoRA on
        it where the identity acts (as ComfyUI's templates: the LoRA, then the shift)."""
        if file not in loaded:
            loaded[file] = wf.add("UNETLoader", unet_name=file, weight_dtype="default")
        unet = loaded[file]
        if lora:
            unet = wf.add("LoraLoaderModelOnly", model=unet, lora_name=lora, strength_model=1.0)
        return wf.add("ModelSamplingSD3", model=unet, shift=shift)

    cfg = float(g.get("guidance_scale", 5.0))
    if two_experts:
        from .backbone import HIGH_NOISE, LOW_NOISE

        boundary = float(meta.get("boundary_ratio", 0.875)) * float(scheduler.config.num_train_timesteps)
        probe = type(scheduler).from_config(scheduler.config)
        probe.set_timesteps(steps)
        high = sum(float(t) >= boundary for t in probe.timesteps)  # WanPipeline's rule for its two experts
        # each expert's LoRA file (the low-noise one's alone, or one per expert), guidance (guidance_scale
        # on the high-noise expert, guidance_scale_2 on the low-noise one, as WanPipeline) and steps
        files = lora_name if isinstance(lora_name, dict) else {LOW_NOISE: lora_name}
        experts = [(model[0], files.get(HIGH_NOISE), 0, high, cfg),
                   (model[1], files.get(LOW_NOISE), high, steps, float(g.get("guidance_scale_2") or cfg))]
        spans = []
        for file, lora, start, end, scale in experts:  # the base expert up to the gate, its LoRA after it
            cut = end if lora is None else min(max(switch, start), end)
            spans += [(file, None, start, cut, scale), (file, lora, cut, end, scale)]
        stages = [Stage(expert(file, lora), start, end, cfg=scale) for file, lora, start, end, scale in spans if end > start]
        on = max(switch, high)  # where the low-noise expert's LoRA acts from
        if HIGH_NOISE not in files:
            wiring = (f"ComfyUI: load {files[LOW_NOISE]} with LoraLoaderModelOnly on the low-noise expert ({model[1]}) "
                      f"only, never the high-noise one; it acts from step {on} of {steps}")
        else:
            acts = f"from step {switch}" if switch < high else "in none of its steps at this gate"
            wiring = (f"ComfyUI: load {files[HIGH_NOISE]} with LoraLoaderModelOnly on the high-noise expert ({model[0]}) "
                      f"and {files[LOW_NOISE]} on the low-noise expert ({model[1]}); the high-noise LoRA acts {acts}, "
                      f"the low-noise one from step {on}, of {steps}")
    else:
        unet = wf.add("UNETLoader", unet_name=model, weight_dtype="default")
        stages, wiring = gated_model(wf, unet, lora_name, shift, switch, steps)
    if gate is not None:
        wiring += f" (noise level <= {gate:.3f})"
    final = sample_stages(wf, stages, steps=steps, seed=int(g.get("seed", 0)), cfg=cfg,
                          sampler=comfy_sampler(scheduler), positive=positive, negative=negative, latent=latent)
    images = wf.add("VAEDecode", samples=final, vae=vae)
    video = wf.add("CreateVideo", images=images, fps=float(g.get("fps", 16)))
    wf.add("SaveVideo", video=video, filename_prefix=f"video/{meta.get('identity', 'pv')}", format="auto", codec="auto")
    return wf.to_dict(), wiring
