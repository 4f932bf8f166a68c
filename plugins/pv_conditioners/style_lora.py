"""The `lora` conditioner: a style LoRA (a file, folder or hub id; diffusers/PEFT or kohya/A1111
keys) loaded into the backbone beside the identity adapter, under its own name and weight.
Loaded once per backbone; weight 0 reproduces the clip without it exactly.

A local source is checked before any model loads (`check`): it exists, is a safetensors file
with LoRA tensors, and was made for the identity's base family (see lora_file.py)."""

from __future__ import annotations

import hashlib
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

from pvcli.contracts import Backbone, Conditioner, GenerationPlan
from pvcli.errors import PVError
from pvcli.settings import validate_options

from .lora_file import check_family, inspect_local, is_local

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
            check_family(inspect_local(self.opts.source), self.opts.source, target or {})

    def apply(self, backbone: Backbone, plan: GenerationPlan) -> None:
        source = self.opts.source
        if is_local(source):  # the file itself (a folder's LoRA file), checked against the loaded backbone
            lora = inspect_local(source)
            check_family(lora, source, backbone.describe())
            source = str(lora.path)
        name = adapter_name(source)
        loaded = _LOADED.setdefault(backbone, set())
        if name not in loaded:
            backbone.load_lora(source, name)
            loaded.add(name)
        plan.loras[name] = self.opts.weight
        plan.record.setdefault("loras", []).append({"source": self.opts.source, "weight": self.opts.weight})


def make_lora(options: dict | None = None, device: str | None = None) -> LoraConditioner:
    opts = validate_options(LoraOptions, options or {}, "lora")
    if not opts.source:
        raise PVError("a style LoRA needs a source", "e.g. --lora style.safetensors:0.8")
    if not math.isfinite(opts.weight):
        raise PVError(f"--lora {opts.source}: the weight must be a finite number, got {opts.weight}")
    return LoraConditioner(opts)
