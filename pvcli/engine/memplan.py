"""What pv does to fit a tuning step on a card: the traced peak per phase (memtrace.py) of the
settings as given, and, when it does not fit, the cheapest combination of the memory switches
(SWITCHES.md names) that does. Used by `pv tune --dry-run`, `tune.memory` and `pv profiles`.

Traces are cached per (backbone, options, step shape, switches) in memory_traces.json beside this
file (shipped for the shipped profiles, so `pv profiles` is instant) and in pv's home for the rest."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..errors import PVError
from ..settings import Settings, from_dict, parse_memory  # noqa: F401 (pv's one parser of GiB values)
from .memtrace import (
    ATTENTION_NOTE,
    GEN_PHASES,
    GIB,
    StepShape,
    Switches,
    Trace,
    offloaded,
    trace_generation,
    trace_step,
)

RESERVE_GIB = 2.0  # CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation: kept free on every card
CARDS = (12, 16, 24, 48, 80)  # the card classes BENCHMARKS.md and `pv profiles` report
CACHE = Path(__file__).with_name("memory_traces.json")
WINDOW = 5  # tune.supervised_window the planner sets: the first 2 latent frames

# The switches the planner may turn on, cheapest first (what each costs, in one phrase).
CANDIDATES = (
    ("tune.decoder_checkpointing", True, "recomputes the decoder in backward (time)"),
    ("tune.decode_dtype", "bfloat16", "decodes under gradient in bf16"),
    ("tune.supervised_window", WINDOW, f"supervises only the clip's first {WINDOW} frames"),
    ("tune.face_decode", "faces", "decodes under gradient only the windows around faces"),
    ("backbone.options.weights", "fp8", "stores the frozen transformer weights in fp8"),
    ("tune.offload", "blocks", "streams the transformer blocks from the host (time)"),
)
# sustained bf16 throughput assumed for a card of each memory class (about 40% of the peak of a
# typical card: RTX 3060, RTX 4080, RTX 4090, L40S, H100) and its host link, for the time estimate
THROUGHPUT_TFLOPS = {12: 20.0, 16: 40.0, 24: 65.0, 48: 70.0, 80: 350.0}
HOST_LINK_GBS = 20.0


def detect_gpu_gib(device: str | None = None) -> float | None:
    """The free memory of the CUDA device pv would tune on (mem_get_info), in GiB; None without one."""
    import torch

    if not torch.cuda.is_available() or (device and not str(device).startswith("cuda")):
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device) if device else None)
    return free / GIB


def _get(settings: Settings, path: str, default=None, changes: dict | None = None):
    if changes and path in changes:
        return changes[path]
    section, _, key = path.partition(".")
    if section == "backbone" and key.startswith("options."):
        return settings.backbone.options.get(key.split(".", 1)[1], default)
    return getattr(getattr(settings, section), key, default)


def switches_of(settings: Settings, changes: dict | None = None) -> Switches:
    """The switches the settings (with planner `changes` over them) set; a switch a settings
    version does not have is off."""
    return Switches(weights=str(_get(settings, "backbone.options.weights", "bf16", changes)),
                    decoder_checkpointing=bool(_get(settings, "tune.decoder_checkpointing", False, changes)),
                    decode_dtype=str(_get(settings, "tune.decode_dtype", "float32", changes)),
                    face_decode=str(_get(settings, "tune.face_decode", "full", changes)),
                    offload=str(_get(settings, "tune.offload", "none", changes)))


def shape_of(settings: Settings, changes: dict | None = None) -> StepShape:
    t = settings.tune
    window = int(_get(settings, "tune.supervised_window", 0, changes))
    return StepShape(t.frames, t.height, t.width, t.grad_steps, t.supervised_frames, window,
                     t.guidance_scale, t.num_inference_steps, settings.adapter.targets, settings.adapter.rank,
                     t.gradient_checkpointing, t.offload_text_encoder != "never", settings.generate.frames,
                     settings.generate.height, settings.generate.width, settings.generate.guidance_scale)


def _is_on(settings: Settings, path: str, value) -> bool:
    current = _get(settings, path)
    if path == "tune.supervised_window":
        return bool(current) and current <= value
    return current == value


def with_changes(settings: Settings, changes: dict) -> Settings:
    """The settings with planner changes ({"tune.offload": "blocks", ...}) applied."""
    data = settings.to_dict()
    for path, value in changes.items():
        section, _, key = path.partition(".")
        if section == "backbone":
            data["backbone"]["options"][key.split(".", 1)[1]] = value
        else:
            data[section][key] = value
    return from_dict(data)


class Planner:
    """Traces (cached) and plans for one registry."""

    def __init__(self, registry, home: Path | None = None, status=None, cache_only: bool = False):
        self.registry = registry
        self.cache_only = cache_only  # a trace not in the cache raises LookupError instead of tracing
        self.user_cache = (home / "memory_traces.json") if home is not None else None
        self.status = status or (lambda msg: None)
        self.cache = _read(CACHE)
        if self.user_cache is not None:
            self.cache.update(_read(self.user_cache))
        self.traced = 0

    @staticmethod
    def key(settings: Settings, switches: Switches, changes: dict | None = None) -> str:
        options = {k: v for k, v in sorted(settings.backbone.options.items()) if k != "weights"}
        shape = asdict(shape_of(settings, changes))
        return json.dumps([settings.backbone.name, options, settings.encoder.name, shape, switches.key()],
                          sort_keys=True)

    def trace(self, settings: Settings, changes: dict | None = None) -> Trace:
        """The trace of the settings' step with `changes` (offload modelled on the trace without it)."""
        sw = switches_of(settings, changes)
        offload = sw.offload
        sw.offload = "none"
        key = self.key(settings, sw, changes)
        if key not in self.cache:
            if self.cache_only:
                raise LookupError(key)
            self.cache[key] = self._fresh(settings, sw, changes).to_dict()
            self.traced += 1
            if self.user_cache is not None:
                _write(self.user_cache, {k: v for k, v in self.cache.items() if k not in _read(CACHE)})
        trace = Trace.from_dict(self.cache[key])
        return offloaded(trace) if offload == "blocks" else trace

    def _fresh(self, settings: Settings, sw: Switches, changes: dict | None = None) -> Trace:
        entry = self.registry.get("backbones", settings.backbone.name)
        if entry.memory is None:
            raise PVError(f"backbone {settings.backbone.name!r} has no memory model (its plugin registers no memory=)",
                          "the dry run and tune.memory need one; set the switches yourself")
        options = dict(settings.backbone.options)
        options["weights"] = sw.weights
        encoder = self.registry.get("encoders", settings.encoder.name).factory
        network = getattr(encoder, "network", None)
        notes = [] if network is not None else [f"face network of encoder {settings.encoder.name!r} not traced "
                                                "(its plugin gives no network())"]
        self.status(f"tracing {settings.backbone.name} ({sw.key()}) on the meta device")
        return trace_step(lambda: entry.memory(options), network, shape_of(settings, changes), sw, notes)

    def phases(self, settings: Settings, changes: dict | None = None) -> tuple[dict[str, float], Trace]:
        """Peak GiB per phase, as pv runs them (the text encoders load, encode the prompt pool and
        leave before the denoiser reaches the GPU when they are offloaded)."""
        trace = self.trace(settings, changes)
        p, te = trace.phases, trace.text_encoder_bytes
        encode_act = p["prompt_encoding"] - p["load"]
        rest = p["load"] - te
        if shape_of(settings).offload_text_encoder:
            load = max(te + encode_act, rest)
            encoding = te + encode_act
        else:
            load, encoding = p["load"], p["prompt_encoding"]
        out = {"load": load, "prompt_encoding": encoding, "sampling": p["sampling"], "gradient_step": p["gradient_step"]}
        return {k: round(v / GIB, 2) for k, v in out.items()}, trace

    @staticmethod
    def generation_key(settings: Settings, weights: str) -> str:
        s = shape_of(settings)
        return json.dumps(["generation", settings.backbone.name,
                           {k: v for k, v in sorted(settings.backbone.options.items()) if k != "weights"}, weights,
                           {"frames": s.gen_frames, "height": s.gen_height, "width": s.gen_width,
                            "guidance_scale": s.gen_guidance_scale, "targets": s.targets, "rank": s.rank}],
                          sort_keys=True)

    def generation_trace(self, settings: Settings, weights: str | None = None) -> Trace:
        """The trace of one clip of pv generate at the settings' generate section (cached as tuning
        traces are), with the frozen weights stored as `weights` (default: the settings')."""
        weights = weights or switches_of(settings).weights
        key = self.generation_key(settings, weights)
        if key not in self.cache:
            if self.cache_only:
                raise LookupError(key)
            entry = self.registry.get("backbones", settings.backbone.name)
            if entry.memory is None:
                raise PVError(f"backbone {settings.backbone.name!r} has no memory model (its plugin registers no memory=)",
                              "the dry run and tune.memory need one; set the switches yourself")
            options = {**settings.backbone.options, "weights": weights}
            self.status(f"tracing generation with {settings.backbone.name} (weights={weights}) on the meta device")
            self.cache[key] = trace_generation(lambda: entry.memory(options), shape_of(settings)).to_dict()
            self.traced += 1
            if self.user_cache is not None:
                _write(self.user_cache, {k: v for k, v in self.cache.items() if k not in _read(CACHE)})
        return Trace.from_dict(self.cache[key])

    def generation(self, settings: Settings, gpu_gib: float) -> dict:
        """pv generate's clip on a card: the traced peak per phase as the settings are, or with the
        frozen weights in fp8 (the one switch that acts on generation) when the settings as they are
        do not fit (`changes` says so, whether or not fp8 fits)."""
        usable = gpu_gib - RESERVE_GIB
        current = switches_of(settings).weights
        options = [{}] + ([{"backbone.options.weights": "fp8"}] if current != "fp8" else [])
        for changes in options:
            trace = self.generation_trace(settings, changes.get("backbone.options.weights"))
            phases = {k: round(trace.phases[k] / GIB, 2) for k in GEN_PHASES}
            peak = max(phases.values())
            if peak <= usable:
                break
        g = settings.generate
        steps = g.steps
        tflops = THROUGHPUT_TFLOPS[min(CARDS, key=lambda c: abs(c - gpu_gib))]
        total = trace.flops["denoising"] * steps + trace.flops["decode"]
        return {"fits": peak <= usable, "peak_gib": peak, "phases_gib": phases, "changes": changes, "clip": f"{g.frames}x{g.height}x{g.width}", "steps": steps, "tflop": round(total / 1e12, 1),
                "seconds": round(total / (tflops * 1e12), 1), "notes": trace.notes}

    def plan(self, settings: Settings, gpu_gib: float, generation: bool = True) -> dict:
        """The cheapest switch combination whose traced peak fits `gpu_gib` - RESERVE_GIB; with
        `generation`, pv generate's clip on that card too (`generation`, and its peak in
        `generation_gib`)."""
        usable = gpu_gib - RESERVE_GIB
        steps = [(path, value, cost) for path, value, cost in CANDIDATES if not _is_on(settings, path, value)
                 and self._applies(settings, path, value)]
        tried: list[tuple[dict, dict, Trace]] = []

        def attempt(changes: dict):
            phases, trace = self.phases(settings, changes)
            tried.append((changes, phases, trace))
            return max(phases.values()) <= usable, phases, trace

        changes: dict = {}
        fits, phases, trace = attempt(changes)
        for path, value, _ in steps:
            if fits:
                break
            more = {**changes, path: value}
            ok, p2, t2 = attempt(more)
            if ok or max(p2.values()) < max(phases.values()):  # a switch that lowers nothing here is left off
                changes, fits, phases, trace = more, ok, p2, t2
        if fits and len(changes) > 1:  # drop the cheaper switches the last one made unnecessary
            for path in list(changes)[:-1]:
                fewer = {k: v for k, v in changes.items() if k != path}
                ok, p2, t2 = attempt(fewer)
                if ok:
                    changes, phases, trace = fewer, p2, t2
        return {"fits": fits, "gpu_memory_gib": round(gpu_gib, 2), "usable_gib": round(usable, 2),
                "peak_gib": max(phases.values()), "phases_gib": phases,
                **self._generation_fields(settings, gpu_gib, generation),
                "changes": changes, "switches": asdict(switches_of(settings, changes)),
                "costs": {p: c for p, _, c in CANDIDATES if p in changes},
                **self.timing(settings, changes, trace, gpu_gib),
                "notes": [ATTENTION_NOTE, (f"traced with 1 and 2 of {trace.units} block units, scaled linearly" if trace.units > 2
                                          else f"traced whole ({trace.units} block units)"),
                          f"{RESERVE_GIB:g} GiB of the card kept free (CUDA context, workspaces, fragmentation)",
                          *trace.notes]}

    def _generation_fields(self, settings: Settings, gpu_gib: float, asked: bool) -> dict:
        if not asked:
            return {"generation_gib": None}
        gen = self.generation(settings, gpu_gib)
        return {"generation_gib": gen["peak_gib"], "generation": gen}

    def _applies(self, settings: Settings, path: str, value) -> bool:
        if path == "tune.supervised_window":
            # SCR frames past the window are decoded without gradient: only the ID loss's frames must fit in it
            return settings.tune.frames > value and settings.tune.supervised_frames <= value
        return True

    @staticmethod
    def timing(settings: Settings, changes: dict, trace: Trace, gpu_gib: float) -> dict:
        """A step's time from its traced FLOPs at the card class's assumed throughput (plus the
        host link for offloaded blocks): an estimate, not a measurement."""
        t = settings.tune
        card = min(CARDS, key=lambda c: abs(c - gpu_gib))
        tflops = THROUGHPUT_TFLOPS[card]
        f = trace.flops
        total = f["sampling"] * max(t.num_inference_steps - t.grad_steps, 0) + f["gradient_step"]
        seconds = total / (tflops * 1e12)
        offload = switches_of(settings, changes).offload == "blocks"
        if offload:
            passes = t.num_inference_steps + 2 * t.grad_steps
            per_pass = trace.block_param_bytes / 1e9 / HOST_LINK_GBS
            seconds = max(seconds, passes * per_pass)
        return {"step_tflop": round(total / 1e12, 1), "step_seconds": round(seconds, 1),
                "step_time_assumes": f"{tflops:g} TFLOP/s sustained bf16 for a {card} GB card"
                                     + (f", {HOST_LINK_GBS:g} GB/s to the host" if offload else "")
                                     + " (assumed, not measured)"}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
