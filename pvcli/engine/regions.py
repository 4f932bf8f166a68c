"""Several identities in one clip, each in its region (`latent` region mode).

Every denoiser call of the pipeline runs once as the base model (identity adapters off, add-on
LoRAs and controls as given) and once more per identity whose gate is open, with that identity's
adapter alone; the predictions are combined on the latent grid by soft masks:

    prediction = (1 - sum_k m_k) * base + sum_k m_k * identity_k

A mask that is 1 everywhere reproduces that identity's own clip exactly (0 * base + 1 * x is x), empty
masks reproduce the base model, and an identity at weight 0 leaves its region as the base model
draws it. The extra calls are sequential rather than one batch of per-row adapters: each call keeps
every add-on (a style LoRA, ControlNet residuals) exactly as a single-identity clip has it, for the
same compute (N + 1 denoiser passes per step once every gate is open, the base pass alone before).
The mixer is a forward hook on the backbone's denoiser, so it works on any family whose pipeline calls
that module and returns the prediction first."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..contracts import Backbone
from ..errors import PVError
from .adapter import activate_adapters

Box = tuple[float, float, float, float]
FEATHER = 0.0625  # soft edge width between regions, as a fraction of the frame


def region_mask(box: Box, height: int, width: int, feather: float = FEATHER) -> torch.Tensor:
    """(height, width) weights of a normalised box on a latent grid: 1 inside, 0 outside, a linear
    ramp `feather` wide centred on each edge that is not the frame's own edge (so strips that tile
    the frame sum to 1 everywhere). `feather=0`: a hard mask of the cells whose centre is inside."""
    x1, y1, x2, y2 = box

    def axis(n: int, lo: float, hi: float) -> torch.Tensor:
        c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if feather <= 0:
            inside = (c >= lo) & (c < hi) | ((hi >= 1.0) & (c >= lo))
            return inside.double()
        a = torch.ones(n, dtype=torch.float64) if lo <= 0 else ((c - lo) / feather + 0.5).clamp(0, 1)
        b = torch.ones(n, dtype=torch.float64) if hi >= 1 else ((hi - c) / feather + 0.5).clamp(0, 1)
        return a * b

    return (axis(height, y1, y2)[:, None] * axis(width, x1, x2)[None, :]).float()


def region_masks(boxes: list[Box], height: int, width: int, feather: float = FEATHER) -> torch.Tensor:
    """(N, height, width) masks, scaled down where they would sum past 1."""
    masks = torch.stack([region_mask(b, height, width, feather) for b in boxes])
    total = masks.sum(0, keepdim=True)
    return torch.where(total > 1, masks / total.clamp(min=1e-12), masks)


@dataclass
class Person:
    adapter: str  # the peft adapter name the identity's weights are loaded under
    scale: float  # its weight
    switch: int | None  # the gate: active after this step index (None: every step)


def _first(output):
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "sample", output)


def _replace_first(output, value):
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    if hasattr(output, "sample"):
        output.sample = value
        return output
    return value


class RegionMixer:
    """The forward hook that gives each identity its region; `step` is the pipeline's step index
    (the generation callback advances it). Use as a context manager around the pipeline call."""

    def __init__(self, backbone: Backbone, people: list[Person], boxes: list[Box], loras: dict[str, float],
                 feather: float = FEATHER):
        if len(people) != len(boxes):
            raise PVError(f"{len(people)} identities but {len(boxes)} regions")
        self.bb, self.people, self.boxes, self.loras, self.feather = backbone, people, boxes, dict(loras), feather
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self.step = 0
        self.calls = 0  # denoiser calls that mixed at least one identity in
        self._inner = False
        self._handle = None

    def masks(self, height: int, width: int) -> torch.Tensor:
        """(N, height, width) on a latent grid of that size (computed once per size)."""
        if (height, width) not in self._masks:
            self._masks[(height, width)] = region_masks(self.boxes, height, width, self.feather)
        return self._masks[(height, width)]

    def active(self, masks: torch.Tensor) -> list[int]:
        """The identities whose gate is open at this step and whose region covers some latent cell."""
        return [k for k, p in enumerate(self.people)
                if (p.switch is None or self.step > p.switch) and bool(masks[k].any())]

    def _hook(self, module, args, kwargs, output):
        if self._inner:
            return output
        base = _first(output)
        masks = self.masks(*base.shape[-2:])
        active = self.active(masks)
        if not active:
            return output
        modules = self.bb.lora_modules()
        preds = []
        self._inner = True
        try:
            for k in active:
                p = self.people[k]
                activate_adapters(modules, {p.adapter: p.scale, **self.loras})
                preds.append(_first(module(*args, **kwargs)))
        finally:
            activate_adapters(modules, dict(self.loras))
            self._inner = False
        shape = (1,) * (base.dim() - 2) + tuple(base.shape[-2:])  # (..., h, w): the latent grid, every frame
        m = [masks[k].to(base.device, base.dtype).reshape(shape) for k in active]
        out = base * (1 - torch.stack(m).sum(0))
        for mk, pred in zip(m, preds, strict=True):
            out = out + mk * pred
        self.calls += 1
        return _replace_first(output, out)

    def __enter__(self):
        activate_adapters(self.bb.lora_modules(), dict(self.loras))  # the base pass: identities off
        self._handle = self.bb.denoiser.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False
