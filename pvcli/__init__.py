"""pv: identity-customised text-to-video (PersonalVideo). Import-light: no torch here.

The Python API (see `pvcli.api`) loads on first use:

    import pvcli as pv
    alice = pv.tune(["face.jpg"], name="alice", profile="tiny")
    alice.generate("surfing at sunset", output="surf.mp4")
"""

import pluggy

from . import footprint, moved

__version__ = "0.2.0"
moved.install()  # old module names of pv 0.1 still import, with a DeprecationWarning
footprint.contain()  # no telemetry, and library caches under PV_HOME (before any library loads)

hookimpl = pluggy.HookimplMarker("pv")
"""Decorator for plugin hook implementations: `from pvcli import hookimpl`."""

_API = {"AddOn", "ClipRequest", "tune", "resume", "Identity", "evaluate", "evaluate_identities", "list_identities", "export", "import_identity", "Video",
        "ProgressEvent", "PVError", "Context"}
__all__ = ["__version__", "hookimpl", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pvcli' has no attribute {name!r}")
