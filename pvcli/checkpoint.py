"""Checkpoints without pickle: a nested state (dicts, lists, tuples, numbers, strings, tensors) as
one safetensors file. Tensors are stored as tensors; everything else is JSON in the file's
header (`pv_state`), with tensors, tuples and non-string dict keys marked so they come back as
they were. Loading parses only safetensors and JSON, so a checkpoint can never run code."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PVError

STATE_KEY = "pv_state"
FORMAT_KEY = "pv_checkpoint"
FORMAT = "1"


def _pack(obj, tensors: dict, path: str):
    import torch

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _pack(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        return {"__items__": [[_pack(k, tensors, path), _pack(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors, path) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors, path) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint {type(obj).__name__} at {path or 'the top'}")


def _unpack(obj, tensors: dict):
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__items__"]}
    return {k: _unpack(v, tensors) for k, v in obj["__dict__"].items()}


def save_state(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict = {}
    header = json.dumps(_pack(state, tensors, ""))
    save_file(tensors, str(path), metadata={FORMAT_KEY: FORMAT, STATE_KEY: header})


def load_state(path: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if meta.get(FORMAT_KEY) != FORMAT:
            raise ValueError(f"not a pv checkpoint (format {meta.get(FORMAT_KEY)!r})")
        return _unpack(json.loads(meta[STATE_KEY]), load_file(str(path)))
    except Exception as exc:
        raise PVError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc}",
                      "delete it to resume from the one before") from None
