"""pv writes nothing outside the output the user asked for and pv's home, and neither do the
libraries it loads. Left alone, they would:

- onnxruntime (MTCNN for `facenet`, the insightface packs): on import, its telemetry writes a
  device id and a database under `~/.cache/Microsoft/DeveloperTools/.onnxruntime/` and a `.ses`
  file in the temp folder, and uploads usage events. `ORT_DISABLE_TELEMETRY=1`, set before
  onnxruntime is first imported, turns all of it off (measured with onnxruntime 1.32);
  `disable_telemetry_events()` only stops events after that point (and Windows' ETW provider),
  so pv does both.
- torch: importing `torch._dynamo` (diffusers and peft do) creates `$TMPDIR/torchinductor_USER`.
- matplotlib (the plots of `pv report`, `pv eval --report`): `~/.config/matplotlib` and a font
  cache in `~/.cache/matplotlib`.
- On a GPU (not measured here: these machines have none), the CUDA driver's JIT cache
  (`~/.nv/ComputeCache`, `CUDA_CACHE_PATH`) and Triton's kernel cache (`~/.triton`,
  `TRITON_CACHE_DIR`), by their documented defaults.

`contain()` runs when pvcli is imported and points these at `PV_HOME/cache/` (or turns them off);
a variable the user has already set is left as it is."""

from __future__ import annotations

import os


def contain() -> None:
    from .store import home

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    cache = home() / "cache"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "torchinductor"))
    os.environ.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))
    os.environ.setdefault("CUDA_CACHE_PATH", str(cache / "cuda"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))


def onnxruntime():
    """The onnxruntime module, with its telemetry events off."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort
