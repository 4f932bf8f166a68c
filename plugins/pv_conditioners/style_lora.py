"""The `lora` conditioner: a style LoRA (a file, folder or hub id; diffusers/PEFT or kohya/A1111
keys) loaded into the backbone beside the identity adapter, under its own name and weight.
Loaded once per backbone; weight 0 reproduces the clip without it exactly.

A local source is checked before any model loads (`check`): it exists, is a safetensors file
with LoRA tensors, was made for the identity's base family, and holds no NaN or infinite value
(see lora_file.py). Once loaded, the layers it adapted are counted: a LoRA that adapts none of
the backbone's layers (keys of another model family) is refused, one that adapts only some of
its layers is loaded with a warning that says how many."""

from __future__ import annotations

import hashlib
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

from pvcli.contracts import Backbone, Conditioner, GenerationPlan
from pvcli.errors import PVError
from pvcli.settings import validate_options

from .lora_file import check_family, check_finite, inspect_local, is_local

_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backbone -> {adapter name}


@dataclass
class LoraOptions:
    source: str = ""
    weight: float = 1.0


def adapter_name(source: str) -> str:
    path = Path(source).expanduser()
    key = f"{path.resolve()}:{path.stat().st_mtime_ns}" if path.exists() else source
    return "style_" + hashlib.sha1(key.encode()).hexdigest()[:12]


class LoraConditioner(Conditioner):
    name = "lora"

    def __init__(self, opts: LoraOptions):
        self.opts = opts

    def check(self, target: dict | None = None) -> None:
        """Before any model loads: a local source is a readable LoRA file made for the backbone's
        family (`target`: what is known of the backbone, e.g. base_model_version)."""
        if is_local(self.opts.source):
            lora = inspect_local(self.opts.source)
            check_family(lora, self.opts.source, target or {})
            check_finite(lora, self.opts.source)

    def apply(self, backbone: Backbone, plan: GenerationPlan) -> None:
        source, lora = self.opts.source, None
        if is_local(source):  # the file itself (a folder's LoRA file), checked against the loaded backbone
            lora = inspect_local(source)
            check_family(lora, source, backbone.describe())
            source = str(lora.path)
        name = adapter_name(source)
        loaded = _LOADED.setdefault(backbone, set())
        if name not in loaded:
            backbone.load_lora(source, name)
            self._count_layers(backbone, name, lora, plan)
            loaded.add(name)
        plan.loras[name] = self.opts.weight
        plan.record.setdefault("loras", []).append({"source": self.opts.source, "weight": self.opts.weight})


    def _count_layers(self, backbone: Backbone, name: str, lora, plan: GenerationPlan) -> None:
        """How many of the backbone's layers the LoRA adapted: none is refused (its keys are
        another model's: it would do nothing), fewer than the file has is a warning."""
        adapted = adapted_layers(backbone, name)
        layers = len(lora.layers) if lora is not None else 0
        if not adapted:
            unload(backbone, name)
            example = f", e.g. {lora.layers[0]!r}" if lora is not None and lora.layers else ""
            raise PVError(f"--lora {self.opts.source} matches no layer of {backbone.name} ({layers or 'its'} layers"
                          f"{example}): it was made for another model and would do nothing",
                          f"use a LoRA made for {backbone.describe().get('base_model') or backbone.name}")
        if adapted < layers:
            plan.warnings.append(f"--lora {self.opts.source}: only {adapted} of its {layers} layers match "
                                 f"{backbone.name}; the other {layers - adapted} are ignored (a LoRA made for a "
                                 "related model?)")


def adapted_layers(backbone: Backbone, name: str) -> int:
    """Layers of the backbone's LoRA modules that hold adapter `name` (PEFT's LoRA layers)."""
    count = 0
    for module in backbone.lora_modules():
        for layer in module.modules():
            weights = getattr(layer, "lora_A", None)
            if weights is not None and hasattr(weights, "keys") and name in weights.keys():
                count += 1
    return count


def unload(backbone: Backbone, name: str) -> None:
    """Take adapter `name` out again (a refused LoRA leaves nothing behind in a kept backbone)."""
    for module in backbone.lora_modules():
        if name in (getattr(module, "peft_config", None) or {}):
            delete = getattr(module, "delete_adapters", None) or getattr(module, "delete_adapter", None)
            if delete is not None:
                delete(name)


def make_lora(options: dict | None = None, device: str | None = None) -> LoraConditioner:
    opts = validate_options(LoraOptions, options or {}, "lora")
    if not opts.source:
        raise PVError("a style LoRA needs a source", "e.g. --lora style.safetensors:0.8")
    if not math.isfinite(opts.weight):
        raise PVError(f"--lora {opts.source}: the weight must be a finite number, got {opts.weight}")
    return LoraConditioner(opts)
