"""The `lora` conditioner: a style LoRA (a file, folder or hub id; diffusers/PEFT or kohya/A1111
keys) loaded into the backbone beside the identity adapter, under its own name and weight.
Loaded once per backbone; weight 0 reproduces the clip without it exactly."""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from pathlib import Path

from pvcli.contracts import Backbone, Conditioner, GenerationPlan
from pvcli.errors import PVError
from pvcli.settings import validate_options

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

    def apply(self, backbone: Backbone, plan: GenerationPlan) -> None:
        name = adapter_name(self.opts.source)
        loaded = _LOADED.setdefault(backbone, set())
        if name not in loaded:
            backbone.load_lora(self.opts.source, name)
            loaded.add(name)
        plan.loras[name] = self.opts.weight
        plan.record.setdefault("loras", []).append({"source": self.opts.source, "weight": self.opts.weight})


def make_lora(options: dict | None = None, device: str | None = None) -> LoraConditioner:
    opts = validate_options(LoraOptions, options or {}, "lora")
    if not opts.source:
        raise PVError("a style LoRA needs a source", "e.g. --lora style.safetensors:0.8")
    return LoraConditioner(opts)
