"""Small pieces the jobs share: building plugins through the registry, memory accounting, and
out-of-memory errors that say what lowers memory."""

from __future__ import annotations

from contextlib import contextmanager

from ..context import Context
from ..errors import PVError
from ..settings import Settings

LOWER_MEMORY = {
    "tune": ("--set tune.memory=GiB below this card's (pv then turns on the memory switches whose traced peak fits "
             "it; `pv tune PHOTO --name N --dry-run --gpu-memory GiB` shows which), --set "
             "tune.gradient_checkpointing=true, fewer tune.supervised_frames / tune.grad_steps / tune.frames, "
             "a smaller tune.height/width"),
    "generate": "fewer --frames, a smaller --height/--width",
}


def model_memory_hint(job: str, backbone, asked=None) -> str:
    """The part of the out-of-memory hint that depends on the model (empty if none loaded): a VAE
    that folds k frames into one latent frame renders k*n+1 frames (the next count down); a decoder
    causal in time decodes under gradient only up to tune.supervised_window; a backbone that renders
    long clips in windows takes generate.context_length; a model that runs in float32 (and only
    then) halves with backbone.options.dtype. `asked`: the job's TuneSettings / GenerateSettings."""
    if backbone is None:
        return ""
    import torch

    parts = []
    flag = "tune.frames" if job == "tune" else "--frames"
    frames = getattr(asked, "frames", 0)
    fold = 720 // max(1, backbone.latent_frames(721) - 1)  # pixel frames per latent frame
    if fold > 1:
        fewer = f": {frames - fold} instead of {frames}" if frames > fold + 1 else ""
        parts.append(f"{flag} in steps of {fold} (this model renders {fold}k+1 frames{fewer})")
    if job == "tune" and backbone.causal_decoder:
        drawn = max(getattr(asked, "supervised_frames", 1), getattr(asked, "scr_frames", 0)
                    if getattr(asked, "scr_weight", 0) > 0 else 0, fold + 1)
        window = -(-(drawn - 1) // fold) * fold + 1  # the first latent frames that hold them
        if window < (getattr(asked, "supervised_window", 0) or frames):
            parts.append(f"--set tune.supervised_window={window} (the losses read, and the decoder decodes under "
                         f"gradient, only the clip's first {window} frames)")
    if job == "generate" and backbone.long_videos:
        parts.append("long clips: --set generate.context_length=16")
    if getattr(backbone, "dtype", None) == torch.float32:
        parts.append("--set backbone.options.dtype=float16 or bfloat16 (the model runs in float32)")
    return ", ".join(parts)


@contextmanager
def out_of_memory_hint(job: str, device=None, hint=None, backbone=None, asked=None):
    """A GPU (or CPU allocator) out-of-memory error becomes one line naming what lowers memory:
    `hint()` first where given (plan.memory_hint: the switch the traced plan says makes it fit),
    then the general advice, then what applies to this model in particular (`backbone`: the loaded
    one, or a callable giving it or None; `asked`: the job's settings)."""
    def advice() -> str:
        first = hint() if hint is not None else ""
        model = model_memory_hint(job, backbone() if callable(backbone) else backbone, asked)
        return ((f"{first}; otherwise " if first else "") + f"lower memory with {LOWER_MEMORY[job]}"
                + (f"; on this model: {model}" if model else ""))

    try:
        yield
    except MemoryError:
        raise PVError(f"out of memory while {job == 'tune' and 'tuning' or 'generating'} on the CPU", advice()) from None
    except RuntimeError as exc:
        import torch

        if not isinstance(exc, torch.OutOfMemoryError) and "out of memory" not in str(exc).lower():
            raise
        where = f" on {device}" if device is not None else ""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise PVError(f"out of GPU memory while {'tuning' if job == 'tune' else 'generating'}{where}", advice()) from None


def build_backbone(ctx: Context, settings: Settings):
    ctx.reporter.status(f"loading backbone {settings.backbone.name}")
    return ctx.registry.create("backbones", settings.backbone.name, options=settings.backbone.options,
                               device=ctx.device)


def build_encoder(ctx: Context, settings: Settings, device: str):
    ctx.reporter.status(f"loading identity encoder {settings.encoder.name}")
    return ctx.registry.create("encoders", settings.encoder.name, options=settings.encoder.options, device=device)


def peak_memory_mb(device) -> float:
    import resource

    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
