"""What is installed: plugins, shipped profiles, and the environment (for bug reports)."""

from __future__ import annotations

import platform

from .. import __version__
from ..context import Context

PACKAGES = ("torch", "diffusers", "transformers", "peft", "onnxruntime", "onnxruntime-gpu", "insightface",
            "opencv-python", "av", "moviepy", "imageio-ffmpeg")


def plugins(ctx: Context) -> list[dict]:
    return [{"name": p.name, "version": p.version, "hooks": p.hooks, "registered": p.registered,
             **({"error": p.error} if p.error else {})} for p in ctx.registry.plugins.values()]


def profiles() -> list[dict]:
    from ..settings import default_profile, read_profile, shipped_profiles

    rows, default = [], default_profile()
    for name in sorted(shipped_profiles()):
        _, data = read_profile(name)
        rows.append({"name": name, "default": name == default, "description": data.get("description", ""),
                     "tuning_memory": tuning_memory(name)})
    return rows


def tuning_memory(profile: str) -> dict | None:
    """The profile's tuning step per card class, from the shipped traces (engine/memory_traces.json):
    {"smallest_card_gb", "cards": {GB: {fits, peak_gib, changes}}, "generation": the same for pv generate's
    clip}; None where it was not traced."""
    from ..engine.memplan import CARDS, Planner
    from ..settings import resolve

    planner = Planner(None, cache_only=True)
    _, settings = resolve(profile)
    try:
        cards = {c: planner.plan(settings, c) for c in CARDS}
    except LookupError:
        return None
    fitting = [c for c, p in cards.items() if p["fits"]]
    generating = [c for c, p in cards.items() if p["generation"]["fits"]]
    return {"smallest_card_gb": min(fitting) if fitting else None,
            "cards": {str(c): {"fits": p["fits"], "peak_gib": p["peak_gib"], "changes": p["changes"]}
                      for c, p in cards.items()},
            "generation": {"smallest_card_gb": min(generating) if generating else None,
                           "cards": {str(c): {k: p["generation"][k] for k in ("fits", "peak_gib", "changes")}
                                     for c, p in cards.items()}}}


def environment(ctx: Context) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info = {"pv": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "pv_home": str(ctx.store.home)}
    for pkg in PACKAGES:
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    import torch

    info["cuda"] = torch.cuda.is_available()
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = []
    try:
        import imageio_ffmpeg

        info["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        info["ffmpeg"] = None
    return info
