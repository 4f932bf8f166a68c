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
FEATHER = 0.0625
# the projections that may read text tokens (cross-attention keys/values, a joint block's text side)
TEXT_SIDE = ("to_k", "to_v", "add_k_proj", "add_v_proj", "add_q_proj")  # soft edge width between regions, as a fraction of the frame


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
        out = _blend(base, preds, [masks[k].to(base.device, base.dtype).reshape(shape) for k in active])
        self.calls += 1
        return _replace_first(output, out)

    def __enter__(self):
        activate_adapters(self.bb.lora_modules(), dict(self.loras))  # the base pass: identities off
        self._handle = self.bb.denoiser.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


def _full(output) -> tuple:
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


def _blend(base: torch.Tensor, preds: list, weights: list) -> torch.Tensor:
    """(1 - sum w_k) * base + sum w_k * pred_k (weights: tensors broadcasting to base, or numbers)."""
    total = sum(weights) if not isinstance(weights[0], torch.Tensor) else torch.stack(weights).sum(0)
    out = base * (1 - total)
    for w, pred in zip(weights, preds, strict=True):
        out = out + w * pred
    return out


class LayerMixer:
    """`layer` region mode: one pass with every identity's adapter on, each adapter's output at every
    adapted layer multiplied per token by its identity's mask resized to that layer's token grid (a
    UNet's per-frame h x w grid at each resolution, a transformer's (t, h, w) patch order). Deltas on
    tokens that are not on the frame's grid (text: cross-attention keys and values, a joint block's text
    projections) cannot be masked by position: there the attention runs once more per identity with
    that identity's text-side deltas alone, and the outputs are blended per query by the masks (the base
    model's text-side deltas stand where no identity's region is). Identities gate themselves per step
    as in their own clips."""

    def __init__(self, backbone: Backbone, people: list[Person], boxes: list[Box], loras: dict[str, float],
                 feather: float = FEATHER):
        if len(people) != len(boxes):
            raise PVError(f"{len(people)} identities but {len(boxes)} regions")
        self.bb, self.people, self.boxes, self.loras, self.feather = backbone, people, boxes, dict(loras), feather
        self.step = 0
        self.calls = 0
        self.grid: tuple[int, int, int, int] | None = None  # (batch, latent frames, h, w) of this call
        self.only: int | None = None  # inside a per-identity attention rerun: whose text-side delta passes
        self.unplaced: set[int] = set()  # attention modules (ids) whose text-side deltas were held back
        self.unmasked: set[int] = set()  # adapted layers off the grid that are no text side: unmasked
        self._masks: dict = {}
        self._handles: list = []

    # ------------------------------------------------------------------ masks per layer
    def _grid_mask(self, k: int, height: int, width: int) -> torch.Tensor:
        key = ("grid", k, height, width)
        if key not in self._masks:
            self._masks[key] = region_mask(self.boxes[k], height, width, self.feather)
        return self._masks[key]

    def token_mask(self, k: int, shape: torch.Size) -> torch.Tensor | None:
        """Identity k's weights broadcasting over an output of `shape`, or None when the output is not on
        the frame's grid: tokens (..., tokens, features) of a UNet's per-frame h x w grid or a
        transformer's (t, h, w) patches, or feature maps (frames, channels, h, w) of a convolution."""
        if self.grid is None or len(shape) < 3:
            return None
        batch, frames, height, width = self.grid
        for d in (1, 2, 4, 8, 16, 32, 64):
            h, w = -(-height // d), -(-width // d)
            if len(shape) == 4 and shape[0] == batch * frames and tuple(shape[-2:]) == (h, w):
                return self._grid_mask(k, h, w)  # a convolution's feature map
            lead = 1
            for n in shape[:-2]:
                lead *= n
            tokens = shape[-2]
            if lead == batch * frames and tokens == h * w:  # a UNet's spatial layers: frames in the batch
                return self._grid_mask(k, h, w).reshape(-1, 1)
            if lead == batch and tokens == frames * h * w:  # a transformer's (t, h, w) patches
                return self._grid_mask(k, h, w).reshape(1, -1).expand(frames, -1).reshape(-1, 1)
        return None

    # ------------------------------------------------------------------ hooks
    def _pre(self, module, args, kwargs):
        x = args[0] if args else next((kwargs[n] for n in ("sample", "hidden_states") if n in kwargs), None)
        if isinstance(x, torch.Tensor) and x.dim() == 5:
            self.grid = (x.shape[0], x.shape[2], x.shape[3], x.shape[4])
        weights = {p.adapter: (p.scale if p.switch is None or self.step > p.switch else 0.0) for p in self.people}
        activate_adapters(self.bb.lora_modules(), {**weights, **self.loras})
        return None

    def _delta(self, k: int, owner: int, text_side: bool, module, inputs, output):
        m = self.token_mask(k, output.shape)
        if m is not None:
            return output * m.to(output.device, output.dtype)
        if not text_side:  # off the grid and not an attention's text side: it acts everywhere (counted)
            self.unmasked.add(id(module))
            return output
        self.unplaced.add(owner)
        return output if self.only == k else output * 0

    def _attention(self, module, args, kwargs, output):
        if self.only is not None or id(module) not in self.unplaced:
            return output
        self.unplaced.discard(id(module))
        base = _first(output)
        masks = [self.token_mask(k, base.shape) for k in range(len(self.people))]
        active = [k for k, p in enumerate(self.people) if masks[k] is not None and bool(masks[k].any())
                  and p.scale and (p.switch is None or self.step > p.switch)]
        if not active:
            return output
        full = []
        try:
            for k in active:
                self.only = k
                full.append(_full(module(*args, **kwargs)))
        finally:
            self.only = None
        m = [masks[k].to(base.device, base.dtype) for k in active]
        out = _blend(base, [f[0] for f in full], m)
        if isinstance(output, tuple) and len(output) > 1:  # a joint block's text stream: blended by region area
            _, _, height, width = self.grid
            area = [self._grid_mask(k, height, width).mean().item() for k in active]
            rest = [_blend(o, [f[j] for f in full], area) if isinstance(o, torch.Tensor) else o
                    for j, o in enumerate(output[1:], 1)]
            return (out, *rest)
        return _replace_first(output, out)

    def __enter__(self):
        from .adapter import lora_layers

        den = self.bb.denoiser
        names = {p.adapter: k for k, p in enumerate(self.people)}
        modules = dict(den.named_modules())
        owners = {}
        for name, layer in lora_layers(den):
            owner = modules.get(name.rsplit(".", 2)[0] if name.endswith(".0") else name.rsplit(".", 1)[0], den)
            owners[id(owner)] = owner
            text_side = name.rsplit(".", 1)[-1] in TEXT_SIDE
            for adapter, k in names.items():
                if adapter in layer.lora_B:
                    self._handles.append(layer.lora_B[adapter].register_forward_hook(
                        lambda mod, i, o, k=k, o_id=id(owner), t=text_side: self._delta(k, o_id, t, mod, i, o)))
        for owner in owners.values():
            if owner is not den:
                self._handles.append(owner.register_forward_hook(self._attention, with_kwargs=True))
        self._handles.append(den.register_forward_pre_hook(self._pre, with_kwargs=True))
        self._handles.append(den.register_forward_hook(self._count))
        return self

    def _count(self, module, inputs, output):
        self.calls += 1
        return output

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        activate_adapters(self.bb.lora_modules(), dict(self.loras))
        return False
