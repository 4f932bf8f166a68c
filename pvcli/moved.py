"""Modules that moved in pv 0.2.0, importable under their old names for one release, with a
DeprecationWarning that names the new home. Attributes are looked up in the new modules in order.

    pvcli.identity        -> pvcli.identity_files      (the files of a stored identity)
    pvcli.engine.identity -> pvcli.engine.face_crops   (reference faces, crops of generated faces)
                             and pvcli.images          (image files: load_image, expand_photos)
    pvcli.engine.evaluate -> pvcli.engine.metrics      (Face Sim, CLIP-T, Dynamic Degree, ...)
    pvcli.evaluation      -> pvcli.jobs.scoring        (clips and references of `pv eval`)
    pvcli.jobs.common     -> pvcli.jobs.resources      (building plugins, memory accounting)
    pvcli.tiny            -> pv_tiny                   (the tiny models' offline tokenizer)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED: dict[str, tuple[str, ...]] = {
    "pvcli.identity": ("pvcli.identity_files",),
    "pvcli.engine.identity": ("pvcli.engine.face_crops", "pvcli.images"),
    "pvcli.engine.evaluate": ("pvcli.engine.metrics",),
    "pvcli.evaluation": ("pvcli.jobs.scoring",),
    "pvcli.jobs.common": ("pvcli.jobs.resources",),
    "pvcli.tiny": ("pv_tiny",),
}


class _Alias(importlib.abc.Loader):
    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        targets = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {' and '.join(targets)}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        homes = [importlib.import_module(t) for t in targets]

        def __getattr__(name: str):
            for home in homes:
                if hasattr(home, name):
                    return getattr(home, name)
            raise AttributeError(f"module {module.__name__!r} (moved to {', '.join(targets)}) has no attribute {name!r}")

        module.__getattr__ = __getattr__
        module.__all__ = sorted({n for home in homes for n in dir(home) if not n.startswith("_")})


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, _Alias())
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
