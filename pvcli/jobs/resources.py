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
             "a smaller tune.height/width, or --set backbone.options.dtype=float16 (bfloat16)"),
    "generate": ("fewer --frames, a smaller --height/--width, or --set backbone.options.dtype=float16; long clips: "
                 "--set generate.context_length=16"),
}


@contextmanager
def out_of_memory_hint(job: str, device=None, hint=None):
    """A GPU (or CPU allocator) out-of-memory error becomes one line naming what lowers memory:
    `hint()` first where given (plan.memory_hint: the switch the traced plan says makes it fit),
    then the general advice."""
    try:
        yield
    except MemoryError:
        raise PVError(f"out of memory while {job == 'tune' and 'tuning' or 'generating'} on the CPU",
                      f"lower memory with {LOWER_MEMORY[job]}") from None
    except RuntimeError as exc:
        import torch

        if not isinstance(exc, torch.OutOfMemoryError) and "out of memory" not in str(exc).lower():
            raise
        where = f" on {device}" if device is not None else ""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        first = hint() if hint is not None else ""
        raise PVError(f"out of GPU memory while {'tuning' if job == 'tune' else 'generating'}{where}",
                      (f"{first}; otherwise " if first else "") + f"lower memory with {LOWER_MEMORY[job]}") from None


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
