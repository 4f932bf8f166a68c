"""Text encoders off the accelerator while tuning: their embeddings of the prompt pool are computed
once, and the encoders (a large T5-class encoder can weigh four times the video model) wait on the CPU until
something needs a prompt encoded again (a sample clip through a pipeline, a prompt not in the pool)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..contracts import Backbone

HOST = "cpu"


def move_text_encoders(backbone: Backbone, device) -> None:
    for name in backbone.text_encoders:
        module = getattr(backbone, name, None)
        if module is not None:
            module.to(device)


def text_encoders_where(backbone: Backbone) -> set[str]:
    """The device types the backbone's text encoders' weights are on now."""
    out = set()
    for name in backbone.text_encoders:
        module = getattr(backbone, name, None)
        if module is not None:
            out |= {p.device.type for p in module.parameters()}
    return out


def text_encoders_off(backbone: Backbone) -> None:
    move_text_encoders(backbone, HOST)


@contextmanager
def text_encoders_on(backbone: Backbone) -> Iterator[None]:
    """The text encoders on the backbone's device for the block, then back on the host."""
    move_text_encoders(backbone, backbone.device)
    try:
        yield
    finally:
        text_encoders_off(backbone)


# --------------------------------------------------------------------------- frozen blocks (tune.offload=blocks)


def offload_blocks(backbone: Backbone) -> int:
    """`tune.offload=blocks`: the frozen weights of the denoiser's blocks (`Backbone.offload_blocks`)
    wait on the host; each block's forward copies them to the device for that call only, under
    non-reentrant checkpointing, so that backward recomputes the block from fresh copies too and
    autograd never holds a block's weights beyond its own forward or backward. Trainable (adapter)
    weights stay on the device. Returns the number of blocks.

    Not diffusers' group offloading: its hooks swap `param.data` back to the host after each forward,
    and the weights autograd saved for backward are those same tensors."""
    import torch

    blocks = backbone.offload_blocks()
    for block in blocks:
        frozen = {n: p for n, p in block.named_parameters() if not p.requires_grad}
        for p in frozen.values():
            p.data = p.data.to(HOST)
        _wrap(block, frozen, backbone.device, torch)
    return len(blocks)


def _wrap(block, frozen: dict, device, torch) -> None:
    from torch.func import functional_call
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def run(*args, **kwargs):
        on_device = {n: p.to(device, non_blocking=True) for n, p in frozen.items()}
        with _plain_forward(block, forward):
            return functional_call(block, on_device, args, kwargs, strict=False)

    def offloaded(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return run(*args, **kwargs)

    block.forward = offloaded


@contextmanager
def _plain_forward(block, forward):
    """The block's own forward while functional_call runs it (not the offloading wrapper)."""
    wrapper = block.forward
    block.forward = forward
    try:
        yield
    finally:
        block.forward = wrapper
