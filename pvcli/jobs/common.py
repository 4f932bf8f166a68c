"""Small pieces the jobs share: building plugins through the registry, memory accounting."""

from __future__ import annotations

from ..context import Context
from ..settings import Settings


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
