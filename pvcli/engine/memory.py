"""Memory accounting that works on any device: the bytes autograd keeps for backward (activations),
counted through torch's saved-tensor hooks, unique storages only, parameters and their views excluded. On CPU torch
has no allocator statistics; this is the part of a tuning step's memory that grows with frames,
resolution and the grad tail."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def saved_activations():
    """Yields a dict whose "bytes" is the total kept for backward by the autograd graph built inside."""
    seen: set[int] = set()
    record = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t  # a weight's view (W.t() in linear) is the weight
        if not isinstance(base, torch.nn.Parameter):
            try:
                key = t.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):
                key = id(t)
            if key not in seen:
                seen.add(key)
                record["bytes"] += t.untyped_storage().nbytes()
                record["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield record
