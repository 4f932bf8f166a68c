"""Memory that is traced, not summed: one tuning step of a backbone at real size, run on the meta
device under torch's MemTracker (no weights, no GPU, nothing allocated), with the peak bytes of
each phase.

The backbone plugin builds its real modules on the meta device from its shipped configs
(`register_backbones(memory=...)`, contracts.RealSizeModel); the step is the engine's own: the
backbone's predict_noise / decode_frames / decode_window and its checkpointing switches, pv's
adapter (peft), AdamW. Phases, each with what is resident on the GPU at that time:
  load            every parameter the backbone holds when it has loaded;
  prompt encoding the text encoders' forward at the real prompt length (no grad);
  sampling        the no-grad denoiser forward at the CFG batch, the adapter and AdamW state resident;
  gradient step   grad_steps denoiser forwards under grad, the decoder under grad on the decoded
                  window, the face network on the face crops, backward, AdamW's step.
pv generate's clip is traced apart (trace_generation: load, prompt encoding, denoising, decode),
at the generate settings, without gradient, every component resident as generation holds it.
Attention is counted as the fused CUDA kernels hold it (flash attention: O(N), no N x N matrix);
CPU SDPA would hold the matrix. The denoiser's repeated blocks are traced with 1 and 2 units and
scaled linearly to the full depth (parameters, saved inputs and a checkpointed block's recompute are
linear in blocks); a denoiser of 1 or 2 units is traced whole, once. Block offload
(`tune.offload=blocks`) is modelled, not traced: the offloaded blocks' parameters leave the GPU
except two (the running and the prefetched one)."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

GIB = 2**30
ATTENTION_NOTE = "attention counted as the fused CUDA kernels hold it (flash: O(N) per head, no N x N matrix)"
PHASES = ("load", "prompt_encoding", "sampling", "gradient_step")
FACE_PX = 160  # the face a step's face_decode=faces window holds (the face network's crop side), pixels
RESIDENT_BLOCKS = 2  # tune.offload=blocks: the block that runs and the one being prefetched


@dataclass
class StepShape:
    """What of the settings shapes a tuning step's memory."""

    frames: int
    height: int
    width: int
    grad_steps: int
    supervised_frames: int
    supervised_window: int
    guidance_scale: float
    num_inference_steps: int
    targets: str
    rank: int
    gradient_checkpointing: bool
    offload_text_encoder: bool = True
    # generation (pv generate, trace_generation): the clip it renders
    gen_frames: int = 0
    gen_height: int = 0
    gen_width: int = 0
    gen_guidance_scale: float = 1.0


@dataclass
class Switches:
    """The memory switches (SWITCHES.md names) a trace applies."""

    weights: str = "bf16"  # backbone.options.weights
    decoder_checkpointing: bool = False  # tune.decoder_checkpointing
    decode_dtype: str = "float32"  # tune.decode_dtype
    face_decode: str = "full"  # tune.face_decode
    offload: str = "none"  # tune.offload

    def key(self) -> str:
        return (f"weights={self.weights},decoder_checkpointing={str(self.decoder_checkpointing).lower()},"
                f"decode_dtype={self.decode_dtype},face_decode={self.face_decode},offload={self.offload}")


@contextmanager
def meta_pinned():
    """Modules on the meta device stay there whatever device they are sent to (`.to(HOST)`,
    `.to(cuda)`); a dtype still applies. The backbone's own placement code (the denoiser loaded on the
    host and placed later, an idle expert sent to the host) then runs unchanged on the meta model;
    what leaves the GPU is what the builder leaves out of the trace."""
    import torch

    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        first = next(iter(self.parameters()), None)
        if device is not None and first is not None and first.is_meta and torch.device(device).type != "meta":
            return original(self, dtype) if dtype is not None else self
        return original(self, *args, **kwargs)

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original


def bf16_compute(module):
    """CUDA autocast to bf16 as it acts on a decoder (tune.decode_dtype=bfloat16), for meta tensors,
    which autocast does not take: while `switch["on"]`, each convolution and linear layer of `module`
    casts its input, weight and bias to bf16 at the call (casts of frozen weights are not cached:
    each call makes its own, and backward keeps what it needs); everything else runs in the dtype it
    gets. Returns the switch (the decode under grad and backward, where a checkpointed decoder
    recomputes, turn it on)."""
    import torch
    import torch.nn.functional as F

    switch = {"on": False}

    def cast(x):
        return x.to(torch.bfloat16) if switch["on"] and isinstance(x, torch.Tensor) and x.is_floating_point() else x

    for m in module.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            def conv(x, weight, bias, _orig=m._conv_forward):
                return _orig(cast(x), cast(weight), cast(bias))
            m._conv_forward = conv
        elif isinstance(m, torch.nn.Linear):
            def linear(x, _m=m):
                return F.linear(cast(x), cast(_m.weight), cast(_m.bias))
            m.forward = linear
    return switch


@contextmanager
def _on(switch: dict | None):
    if switch is None:
        yield
        return
    switch["on"] = True
    try:
        yield
    finally:
        switch["on"] = False


def _tracker_class():
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    class Tracker(MemTracker):
        """MemTracker with the global peak only and per segment, and no gradient hooks: torch 2.13's
        hooks fail on frozen parameters (gradients are still counted, as backward's temporaries)."""

        def __init__(self):
            super().__init__()
            self._seen: set[int] = set()
            self.peak = 0
            self.peak_snap: dict[str, int] = {}

        def current(self) -> dict[str, int]:
            out: dict[str, int] = {}
            for snap in self._curr_mem_snap.values():
                for k, v in snap.items():
                    out[str(getattr(k, "value", k))] = out.get(str(getattr(k, "value", k)), 0) + v
            return out

        def total(self) -> int:
            return sum(s.get(_TOTAL_KEY, 0) for s in self._curr_mem_snap.values())

        def _update_peak_stats(self, peak_state) -> None:
            total = self.total()
            if total > self.peak:
                self.peak = total
                self.peak_snap = self.current()

        def reset_peak(self) -> None:
            self.peak = self.total()
            self.peak_snap = self.current()

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

        def _pre_fw_hook(self, module, inputs) -> None:
            if id(module) not in self._seen:
                self._seen.add(id(module))
                self._track_module_params_and_buffers(module)

        def _post_fw_hook(self, module, inputs, outputs) -> None:
            return None

        def _pre_bw_hook(self, module, args) -> None:
            return None

        def _post_bw_hook(self, module, args) -> None:
            return None

    return Tracker


@contextmanager
def fused_attention():
    """F.scaled_dot_product_attention routed to the flash-attention op (it has meta kernels): what a
    GPU's fused kernel keeps (output and log-sum-exp) instead of the math path's N x N matrix. A mask
    (a text padding mask, (B, 1, 1, N)) is dropped: it changes no size."""
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if key.shape[-3] != query.shape[-3]:  # grouped-query attention: the kernel broadcasts the heads
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, 0.0, is_causal, False,
                                                                   scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _units(module, names: list[str]) -> tuple[list, int]:
    """The module's repeated-block lists as they are, and how many units (a unit keeps the lists'
    proportions: 20 double-stream + 40 single-stream blocks are 20 units of 1 + 2)."""
    lists = [list(getattr(module, n)) for n in names]
    return lists, math.gcd(*[len(x) for x in lists])


def _truncate(module, names: list[str], lists: list, full: int, units: int) -> None:
    """Keep `units` units of the module's repeated-block lists."""
    import torch

    for name, blocks in zip(names, lists, strict=True):
        setattr(module, name, torch.nn.ModuleList(blocks[:len(blocks) // full * units]))


def _param_bytes(module) -> int:
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def face_box(bb, h: int, w: int) -> tuple[int, int, int, int]:
    """The latent window tune.face_decode=faces decodes for one FACE_PX face in the middle of the
    frame: the face's latent pixels and the backbone's window_margin on each side, clipped."""
    side = -(-FACE_PX // bb.vae_scale_factor) + 2 * int(getattr(bb, "window_margin", 8))
    sh, sw = min(h, side), min(w, side)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    return y0, y0 + sh, x0, x0 + sw


def decoded_frames(shape: StepShape) -> list[int]:
    """The pixel frames a step decodes under grad in the worst case: the last frame the supervised
    window allows is supervised (a causal decoder then decodes every frame up to it)."""
    window = min(shape.frames, shape.supervised_window or shape.frames)
    k = min(shape.supervised_frames, window)
    return list(range(window - k, window))


@dataclass
class Trace:
    """Peak bytes per phase at full depth (extrapolated), with the breakdown at each peak."""

    phases: dict[str, int]
    breakdown: dict[str, dict[str, int]]
    flops: dict[str, float]
    block_param_bytes: int  # the adapted denoiser's repeated blocks, all of them
    expert_param_bytes: int  # other denoisers (sampling only)
    units: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    text_encoder_bytes: int = 0

    def to_dict(self) -> dict:
        return {"phases": self.phases, "breakdown": self.breakdown, "flops": self.flops,
                "block_param_bytes": self.block_param_bytes, "expert_param_bytes": self.expert_param_bytes,
                "units": self.units, "seconds": round(self.seconds, 1), "notes": self.notes,
                "text_encoder_bytes": self.text_encoder_bytes}

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        return cls(d["phases"], d["breakdown"], d["flops"], d["block_param_bytes"], d["expert_param_bytes"], d["units"],
                   d["seconds"], list(d.get("notes", [])), d.get("text_encoder_bytes", 0))


def _prepare(model, shape: StepShape, switches: Switches) -> None:
    """The step's adapter and switches on the full-depth model, as the Tuner applies them."""
    from .adapter import add_adapter

    bb = model.backbone
    add_adapter(bb, shape.targets, shape.rank, float(shape.rank))
    if shape.gradient_checkpointing:
        bb.enable_gradient_checkpointing()
    if switches.decoder_checkpointing:
        bb.enable_decoder_checkpointing()
    model.bf16 = bf16_compute(bb.vae) if switches.decode_dtype == "bfloat16" else None


def _run(model, encoder_network, shape: StepShape, switches: Switches) -> tuple[dict, dict, dict, int, int, int]:
    """One traced step of the model as it is (its blocks cut to some units): per phase (peak bytes,
    breakdown, flops), the blocks', experts' and text encoders' parameter bytes."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from .adapter import trainable_parameters

    bb = model.backbone
    block_bytes = sum(_param_bytes(getattr(bb.denoiser, n)) for n in model.blocks)
    expert_bytes = sum(_param_bytes(e) for e in model.experts.values())
    params = trainable_parameters(bb.adapted)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    face, face_size = encoder_network() if encoder_network is not None else (None, 0)
    meta = torch.device("meta")
    peaks, snaps, flops = {}, {}, {}
    tracker = _tracker_class()()
    encoders = list(model.text_encoders.values())
    everything = [bb.denoiser, *model.experts.values(), bb.vae, *encoders, *([face] if face is not None else [])]
    for module in everything:
        tracker.track_external(module)
    with tracker, fused_attention():
        # load: everything the backbone holds once loaded
        peaks["load"], snaps["load"] = tracker.total(), tracker.current()
        tracker.reset_peak()
        with torch.no_grad():
            model.encode()
        peaks["prompt_encoding"], snaps["prompt_encoding"] = tracker.peak, tracker.peak_snap
        extra = {"guidance": shape.guidance_scale} if bb.embedded_guidance else {}
        # the adapter's AdamW state exists from the first step on
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        cfg = 1 if bb.embedded_guidance or shape.guidance_scale <= 1 else 2
        h, w = shape.height // bb.vae_scale_factor, shape.width // bb.vae_scale_factor
        lat_frames = bb.latent_frames(shape.frames)
        # sampling: the no-grad denoiser at the CFG batch (the text encoders off the GPU by now)
        off = sum(_param_bytes(e) for e in encoders) if shape.offload_text_encoder else 0
        tracker.reset_peak()
        with torch.no_grad():
            latents = torch.empty(cfg, bb.latent_channels, lat_frames, h, w, device=meta)
            bb.predict_noise(latents, 500, model.conditioning(cfg), **extra)
            del latents
        peaks["sampling"], snaps["sampling"] = tracker.peak - off, tracker.peak_snap
        # the gradient step
        tracker.reset_peak()
        x = torch.empty(1, bb.latent_channels, lat_frames, h, w, device=meta)
        embeds = model.conditioning(cfg)
        for _ in range(shape.grad_steps):  # at the CFG batch, as pv's sampler runs the grad tail
            v = bb.predict_noise(torch.cat([x] * cfg) if cfg > 1 else x, 500, embeds, **extra)
            if cfg > 1:
                v = v[:1] + shape.guidance_scale * (v[1:] - v[:1])
            x = x - 0.1 * v
        del v
        idx = decoded_frames(shape)

        def cast():  # backward too: a checkpointed decoder recomputes in it, as autocast would
            return _on(model.bf16)

        if switches.face_decode == "faces":  # the faces found on a decode without grad, then their window
            with torch.no_grad():
                bb.decode_frames(x.detach(), idx)
            with cast():
                frames = bb.decode_window(x, idx, face_box(bb, h, w))
        else:
            with cast():
                frames = bb.decode_frames(x, idx)
        frames = frames[0].float()
        if face is not None:
            crops = F.interpolate(frames, size=(face_size, face_size), mode="bilinear", align_corners=False)
            embedding = F.normalize(face(crops).float(), dim=-1)
            loss = (1 - embedding @ torch.empty(embedding.shape[-1], device=meta)).mean()
        else:
            loss = frames.mean()
        del frames, x
        with cast():
            loss.backward()
        del loss
        optimizer.step()
        peaks["gradient_step"], snaps["gradient_step"] = tracker.peak - off, tracker.peak_snap
    for p in params:
        p.grad = None
    # FLOPs in a pass of their own (a FlopCounterMode beside the tracker keeps backward's tensors alive):
    # forwards without grad; backward counted as twice its forward, a checkpointed recompute as one more
    with torch.no_grad(), fused_attention():
        def count(fn) -> float:
            with FlopCounterMode(display=False) as fc:
                fn()
            return float(fc.get_total_flops())

        lat = torch.empty(cfg, bb.latent_channels, lat_frames, h, w, device=meta)
        flops["sampling"] = count(lambda: bb.predict_noise(lat, 500, model.conditioning(cfg), **extra))
        flops["prompt_encoding"] = count(model.encode)
        one = lat[:1]
        idx = decoded_frames(shape)
        box = face_box(bb, h, w) if switches.face_decode == "faces" else None
        decode = count(lambda: bb.decode_frames(one, idx) if box is None else bb.decode_window(one, idx, box))
        seen = count(lambda: bb.decode_frames(one, idx)) if box is not None else 0.0
        faces = count(lambda: face(torch.empty(len(idx), 3, face_size, face_size, device=meta))) if face is not None else 0.0
        recompute = int(shape.gradient_checkpointing)
        dec_recompute = int(bool(getattr(bb, "decoder_checkpointing", False) or switches.decoder_checkpointing))
        flops["gradient_step"] = (shape.grad_steps * flops["sampling"] * (3 + recompute) + decode * (3 + dec_recompute)
                                  + seen + faces * 3)
        flops["load"] = 0.0
    return peaks, snaps, flops, block_bytes, expert_bytes, sum(_param_bytes(e) for e in encoders)


def _scaled(model_of, run, notes: list[str] | None, start: float) -> Trace:
    """Run `run(model)` with 1 and 2 units of the denoisers' blocks (`model_of()` builds the prepared
    model) and scale every count to the full depth."""
    with meta_pinned():
        model = model_of()
        mods = [model.backbone.denoiser, *model.experts.values()]
        cut = [_units(m, model.blocks) for m in mods]
        full = cut[0][1]
        runs = []
        # with 2 units or fewer the full depth is traced once: a 1-unit run would scale back to it exactly
        for units in ((1, 2) if full > 2 else (full,)):
            for m, (lists, n) in zip(mods, cut, strict=True):
                _truncate(m, model.blocks, lists, n, units)
            runs.append(run(model))
    p1, s1, f1, b1, e1, t1 = runs[0]
    p2, s2, f2, b2, e2, _ = runs[-1]

    def scale(a, b):
        return int(round(a + (full - 1) * (b - a))) if full > 1 else a

    phases = {k: scale(p1[k], p2[k]) for k in p1}
    breakdown = {k: {c: scale(s1[k].get(c, 0), s2[k].get(c, 0)) for c in set(s1[k]) | set(s2[k])} for k in s1}
    flops = {k: float(scale(f1[k], f2[k])) for k in f1}
    return Trace(phases, breakdown, flops, scale(b1, b2), scale(e1, e2), full, time.perf_counter() - start,
                 list(notes or []), text_encoder_bytes=t1)


def trace_step(build, encoder_network, shape: StepShape, switches: Switches, notes: list[str] | None = None) -> Trace:
    """Trace one tuning step with 1 and 2 units of the denoiser's blocks and scale to the full
    depth; `build()` returns contracts.RealSizeModel (with `switches.weights` applied)."""
    start = time.perf_counter()

    def model_of():
        model = build()
        _prepare(model, shape, switches)
        return model

    trace = _scaled(model_of, lambda m: _run(m, encoder_network, shape, switches), notes, start)
    if switches.offload == "blocks":
        trace = offloaded(trace)
    return trace


GEN_PHASES = ("load", "prompt_encoding", "denoising", "decode")
GEN_NOTE = ("generation: every component on the GPU as pv generate holds it (text encoders, VAE, the adapted "
            "denoiser; with swap_experts only the expert at work), classifier-free guidance's two forwards one "
            "after the other as the pipelines run them, the whole clip decoded at once in the VAE's dtype")


def _generate(model, shape: StepShape) -> tuple[dict, dict, dict, int, int, int]:
    """One traced generation step (no gradient) at the generate settings: per phase (peak bytes,
    breakdown, flops), as _run gives them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    bb = model.backbone
    block_bytes = sum(_param_bytes(getattr(bb.denoiser, n)) for n in model.blocks)
    expert_bytes = sum(_param_bytes(e) for e in model.experts.values())
    encoders = list(model.text_encoders.values())
    meta = torch.device("meta")
    cfg = not bb.embedded_guidance and shape.gen_guidance_scale > 1
    extra = {"guidance": shape.gen_guidance_scale} if bb.embedded_guidance else {}
    lat = (1, bb.latent_channels, bb.latent_frames(shape.gen_frames), shape.gen_height // bb.vae_scale_factor,
           shape.gen_width // bb.vae_scale_factor)
    peaks, snaps, flops = {}, {}, {}
    tracker = _tracker_class()()
    for module in [bb.denoiser, *model.experts.values(), bb.vae, *encoders]:
        tracker.track_external(module)

    def denoise(latents):
        v = bb.predict_noise(latents, 500, model.conditioning(1), **extra)
        if cfg:  # the unconditional forward while the conditional velocity is held
            u = bb.predict_noise(latents, 500, model.conditioning(1), **extra)
            v = u + shape.gen_guidance_scale * (v - u)
        return v

    with tracker, fused_attention(), torch.no_grad():
        peaks["load"], snaps["load"] = tracker.total(), tracker.current()
        tracker.reset_peak()
        model.encode()
        peaks["prompt_encoding"], snaps["prompt_encoding"] = tracker.peak, tracker.peak_snap
        tracker.reset_peak()
        latents = torch.empty(*lat, device=meta)
        v = denoise(latents)
        latents = latents - 0.1 * v
        del v
        peaks["denoising"], snaps["denoising"] = tracker.peak, tracker.peak_snap
        tracker.reset_peak()
        bb.decode(latents)
        del latents
        peaks["decode"], snaps["decode"] = tracker.peak, tracker.peak_snap
    with torch.no_grad(), fused_attention():
        def count(fn) -> float:
            with FlopCounterMode(display=False) as fc:
                fn()
            return float(fc.get_total_flops())

        one = torch.empty(*lat, device=meta)
        flops["load"] = 0.0
        flops["prompt_encoding"] = count(model.encode)
        flops["denoising"] = count(lambda: denoise(one))
        flops["decode"] = count(lambda: bb.decode(one))
    return peaks, snaps, flops, block_bytes, expert_bytes, sum(_param_bytes(e) for e in encoders)


def trace_generation(build, shape: StepShape, notes: list[str] | None = None) -> Trace:
    """Trace one clip of pv generate at the generate settings (gen_frames x gen_height x gen_width):
    the resident components, the prompt's encoding, one denoising step (flops: per step) and the
    whole clip's decode, with the identity adapter in the denoiser; `build()` as for trace_step."""
    from .adapter import add_adapter

    start = time.perf_counter()

    def model_of():
        model = build()
        add_adapter(model.backbone, shape.targets, shape.rank, float(shape.rank))
        return model

    return _scaled(model_of, lambda m: _generate(m, shape), [GEN_NOTE, *(notes or [])], start)


def offloaded(trace: Trace) -> Trace:
    """tune.offload=blocks, modelled: the denoisers' repeated blocks wait on the host but two
    (the one that runs and the one being prefetched); every other byte is the trace's."""
    per_block = trace.block_param_bytes / max(trace.units, 1)
    saved = trace.block_param_bytes - RESIDENT_BLOCKS * per_block + trace.expert_param_bytes
    # the blocks never reach the GPU whole while tuning (generation does not offload)
    phases = {k: int(v - saved) if k != "generation" else v for k, v in trace.phases.items()}
    return Trace(phases, trace.breakdown, trace.flops, trace.block_param_bytes, trace.expert_param_bytes, trace.units,
                 trace.seconds, [*trace.notes, "tune.offload=blocks modelled (not traced): the transformer blocks on "
                                 "the host but the running and the prefetched one"], trace.text_encoder_bytes)
