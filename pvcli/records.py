"""The records pv reads back and did not necessarily write itself: an identity's `identity.json`
and its adapter's metadata (from a bundle made on another machine, or edited by hand), checked
field by field, by type and range, the way `pv import` checks tensors. A crafted value is refused
in one line that names the field, instead of crashing a command that reads it later. Text stays
data wherever it goes: the pages escape it, the terminal prints it as plain text."""

from __future__ import annotations

import json
import math
import re

MAX_TEXT = 4096  # characters of one text field (pv's longest, an identity's note, is ~300)
MAX_ITEMS = 1000  # photos of an identity
MAX_COUNT = 2**53  # exact in every JSON reader

# identity.json: the fields pv writes (pvcli/jobs/tune.py, bundle import), each (kind, low, high)
COUNTS = {"adapter_layers": (0, MAX_COUNT), "adapter_parameters": (0, MAX_COUNT), "steps": (0, MAX_COUNT),
          "resumed_at": (0, MAX_COUNT), "processes": (1, 2**16)}
NUMBERS = {"seconds": (0.0, 1e12), "seconds_per_step": (0.0, 1e12), "peak_memory_mb": (0.0, 1e12),
           "id_sim_first": (-1.0, 1.0), "id_sim_last": (-1.0, 1.0), "held_out_id_sim_before": (-1.0, 1.0),
           "held_out_id_sim_after": (-1.0, 1.0), "face_hit_rate": (0.0, 1.0), "active_fraction": (0.0, 1.0),
           "gate_noise_level": (0.0, 1.0)}
MAPPINGS = {"memory_plan"}
# the size the held-out clips were rendered at: each a positive integer
SIZES = {"held_out_at": ("frames", "height", "width", "steps")}  # what tune.memory chose: names, numbers and settings, nested a few levels
TEXTS = {"name", "created", "pv_version", "profile", "backbone", "base_model", "base_model_version", "architecture",
         "encoder", "encoder_weights", "encoder_crop", "note", "imported_from", "imported_name", "path"}
MAY_BE_NULL = {"resumed_at", "id_sim_first", "id_sim_last", "held_out_id_sim_before", "held_out_id_sim_after",
               "face_hit_rate", "imported_name", "memory_plan", "held_out_at"}
# the adapter's safetensors metadata (every value is text there): the fields pv parses
ADAPTER_INTS = {"rank": (1, 1024), "steps": (0, MAX_COUNT), "seed": (-(2**63), 2**64 - 1)}
ADAPTER_FLOATS = {"alpha": (1e-6, 1e6), "active_fraction": (1e-6, 1.0)}
ADAPTER_WORDS = ("token", "class_word", "targets")  # read into prompts and layer choices: one line each
HEX64 = re.compile(r"[0-9a-f]{64}")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def _text(value, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return f"must be text, got {_show(value)}"
    if len(value) > limit:
        return f"is {len(value)} characters long, over the {limit} a record keeps"
    if CONTROL.search(value):  # e.g. ESC: terminal escape sequences when `pv show` prints the record
        return f"holds a control character ({CONTROL.search(value).group()!r})"
    return None


def _plain(value, depth: int = 0) -> str | None:
    """A JSON value of plain data: text, finite numbers, booleans and null, in mappings and lists at
    most 4 deep; what is wrong with it, or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) else f"holds a non-finite number {_show(value)}"
    if isinstance(value, str):
        return _text(value)
    if depth >= 4 or not isinstance(value, (dict, list)) or len(value) > MAX_ITEMS:
        return f"must be plain data (text, numbers, mappings), got {_show(value)}"
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        fault = (_text(k) if isinstance(k, str) else None) or _plain(v, depth + 1)
        if fault:
            return f"[{k!r}] {fault}"
    return None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bound(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _number(value, low, high, integer: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        return f"must be {'an integer' if integer else 'a number'}, got {_show(value)}"
    if not math.isfinite(value) or not low <= value <= high:
        return f"must be between {_bound(low)} and {_bound(high)}, got {_show(value)}"
    return None


def held_out_at_text(info: dict) -> str:
    """The size an identity's held-out clips were rendered at, as the summary line and the report
    say it ("" for an identity from before pv recorded it)."""
    at = info.get("held_out_at")
    return f"{at['frames']} frames {at['height']}x{at['width']}, {at['steps']} steps" if at else ""


def _size(value, keys: tuple[str, ...]) -> str | None:
    if not isinstance(value, dict) or set(value) != set(keys):
        return f"must be a mapping of {', '.join(keys)}, got {_show(value)}"
    return next((f"{k} {f}" for k in keys if (f := _number(value[k], 1, MAX_COUNT, integer=True))), None)


def identity_fault(info) -> str | None:
    """What is wrong with an identity record (parsed identity.json), as "FIELD must be ...", or None."""
    if not isinstance(info, dict):
        return f"must be a JSON object, got {type(info).__name__}"
    for key, value in info.items():
        if value is None and key in MAY_BE_NULL:
            continue
        if key in COUNTS:
            fault = _number(value, *COUNTS[key], integer=True)
        elif key in NUMBERS:
            fault = _number(value, *NUMBERS[key], integer=False)
        elif key == "photos":
            fault = (f"must be a list of file names, got {_show(value)}" if not isinstance(value, list)
                     else f"lists {len(value)} photos, over {MAX_ITEMS}" if len(value) > MAX_ITEMS
                     else next((f"[{i}] {f}" for i, f in enumerate(map(_text, value)) if f), None))
        elif key in SIZES:
            fault = _size(value, SIZES[key])
        elif key in MAPPINGS:
            fault = _plain(value)
        elif key == "tracker":
            fault = (f"must be a mapping, got {_show(value)}" if not isinstance(value, dict)
                     else next((f"{k} {f}" for k, f in ((k, v is not None and _text(v)) for k, v in value.items())
                                if f), None))
        elif key in TEXTS or isinstance(value, (str, list, dict)):  # names, versions, notes, descriptions
            fault = _text(value)
        else:  # a plugin's own scalar (what a backbone or encoder describes)
            fault = (_number(value, -(2**63), 2**63, integer=isinstance(value, int))
                     if isinstance(value, (int, float)) and not isinstance(value, bool) else None)
        if fault:
            return f"{key} {fault}"
    return None


def adapter_fault(meta: dict) -> str | None:
    """What is wrong with an adapter's metadata (safetensors `__metadata__`, all text), or None."""
    for key, (low, high) in ADAPTER_INTS.items():
        if key in meta:
            try:
                value = int(meta[key])
            except (TypeError, ValueError):
                return f"{key} must be an integer, got {_show(meta[key])}"
            if not low <= value <= high:
                return f"{key} must be between {_bound(low)} and {_bound(high)}, got {_show(meta[key])}"
    for key, (low, high) in ADAPTER_FLOATS.items():
        if key in meta:
            try:
                value = float(meta[key])
            except (TypeError, ValueError):
                return f"{key} must be a number, got {_show(meta[key])}"
            if not math.isfinite(value) or not low <= value <= high:
                return f"{key} must be between {_bound(low)} and {_bound(high)}, got {_show(meta[key])}"
    for key in ADAPTER_WORDS:
        if key in meta and (_text(meta[key], 256) or "\n" in meta[key] or not meta[key].strip()):
            return f"{key} must be one line of text, got {_show(meta[key])}"
    if "tensors_sha256" in meta and not HEX64.fullmatch(str(meta["tensors_sha256"])):
        return f"tensors_sha256 must be a sha256 in hex, got {_show(meta['tensors_sha256'])}"
    if "lora_adapter_metadata" in meta:
        try:
            lora = json.loads(meta["lora_adapter_metadata"])
        except (TypeError, ValueError):
            return "lora_adapter_metadata must be JSON"
        if not isinstance(lora, dict):
            return f"lora_adapter_metadata must be a JSON object, got {_show(lora)}"
    for key, value in meta.items():
        fault = _text(value, 2**16 if key == "lora_adapter_metadata" else MAX_TEXT)
        if fault:
            return f"{key} {fault}"
    return None
