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
    weights stay on the device. In a forward without gradient (the sampler's steps, most of a
    tuning step's passes) each block starts the copy of the next one before it computes: on CUDA on
    a side stream from pinned host memory, so the copy overlaps the block's compute (two blocks'
    weights on the device at a time). Returns the number of blocks.

    Not diffusers' group offloading (`apply_group_offloading`, with or without `use_stream`): after
    each group's forward its hooks set `param.data` back to the host copy, for every parameter of the
    group, the adapter's trainable ones included, under the very tensors autograd saved for backward
    (BENCHMARKS.md, "Memory switches")."""
    import torch

    blocks = backbone.offload_blocks()
    device = torch.device(backbone.device)
    pin = device.type == "cuda" and torch.cuda.is_available()
    frozen = []
    for block in blocks:
        weights = {n: p for n, p in block.named_parameters() if not p.requires_grad}
        for p in weights.values():
            p.data = p.data.to(HOST)
            if pin:
                p.data = p.data.pin_memory()
        frozen.append(weights)
    prefetch = Prefetch(frozen, device)
    for i, block in enumerate(blocks):
        _wrap(block, i, prefetch, torch)
    return len(blocks)


class Prefetch:
    """The device copies of block i's frozen weights, made for its call, or started by block i-1
    (`start(i)`) on a side stream where the device has streams (CUDA); `hits` counts the calls a
    started copy served."""

    def __init__(self, frozen: list[dict], device):
        import torch

        self.frozen, self.device = frozen, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" and torch.cuda.is_available() else None
        self.pending: dict[int, tuple[dict, object]] = {}
        self.hits = 0

    def _copy(self, i: int) -> dict:
        return {n: p.to(self.device, non_blocking=True) for n, p in self.frozen[i].items()}

    def start(self, i: int) -> None:
        import torch

        if i >= len(self.frozen) or i in self.pending:
            return
        if self.stream is None:  # no streams: the copy now (on the CPU host and device are one memory)
            self.pending[i] = (self._copy(i), None)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            copies = self._copy(i)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.pending[i] = (copies, done)

    def take(self, i: int) -> dict:
        import torch

        if i not in self.pending:
            return self._copy(i)
        copies, done = self.pending.pop(i)
        self.hits += 1
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            for t in copies.values():  # made on the side stream, used (and freed) on this one
                t.record_stream(current)
        return copies


def _wrap(block, index: int, prefetch: Prefetch, torch) -> None:
    from torch.func import functional_call
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def run(*args, **kwargs):
        on_device = prefetch._copy(index)
        with _plain_forward(block, forward):
            return functional_call(block, on_device, args, kwargs, strict=False)

    def offloaded(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        on_device = prefetch.take(index)
        prefetch.start(index + 1)  # the next block's copy overlaps this block's compute
        with _plain_forward(block, forward):
            return functional_call(block, on_device, args, kwargs, strict=False)

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
