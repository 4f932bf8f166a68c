"""Control maps from RGB frames. canny runs offline (OpenCV); depth loads a depth model from
transformers (local files first, like any model); pose and lineart use controlnet_aux's
annotators when that package is installed. Each fails with one line saying what to get, or to
pass ready maps with --control-raw."""

from __future__ import annotations

import functools

import numpy as np

from pvcli.errors import PVError
from pvcli.hub import load_pretrained

DEPTH_MODEL = "Intel/dpt-hybrid-midas"
ANNOTATORS = "lllyasviel/Annotators"


def canny(frames: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    import cv2

    edges = [cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), low, high) for f in frames]
    return np.stack([np.repeat(e[..., None], 3, axis=-1) for e in edges])


@functools.lru_cache(maxsize=4)
def _depth_estimator(model: str):
    """Loaded once per process and model: a batch of clips does not reload it per clip."""
    from transformers import pipeline

    return load_pretrained("generate.conditioners.controlnet.depth_model", model,
                                lambda ref, local_files_only, **kw: pipeline(
                                    "depth-estimation", model=ref, model_kwargs={"local_files_only": local_files_only}),
                                offline_hint="pass ready depth maps with --control-raw depth=DIR",
                                what="depth estimator")


def depth(frames: np.ndarray, model: str = DEPTH_MODEL) -> np.ndarray:
    from PIL import Image

    estimator = _depth_estimator(model)
    out = []
    for f in frames:
        d = np.asarray(estimator(Image.fromarray(f))["depth"], dtype=np.float32)
        d = (255 * (d - d.min()) / max(1e-6, float(d.max() - d.min()))).astype(np.uint8)
        out.append(np.repeat(d[..., None], 3, axis=-1))
    return np.stack(out)


def _annotator(kind: str, cls_name: str, frames: np.ndarray, model: str) -> np.ndarray:
    try:
        import controlnet_aux  # noqa: F401  (present? the detector itself loads in _detector)
    except ImportError:
        raise PVError(f"the {kind} preprocessor needs controlnet_aux",
                      f"pip install controlnet-aux, or pass ready {kind} maps with --control-raw {kind}=DIR") from None
    detector = _detector(kind, cls_name, model)
    from PIL import Image

    h, w = frames.shape[1:3]
    return np.stack([np.asarray(detector(Image.fromarray(f)).convert("RGB").resize((w, h))) for f in frames])


@functools.lru_cache(maxsize=4)
def _detector(kind: str, cls_name: str, model: str):
    import controlnet_aux

    return load_pretrained(f"generate.conditioners.controlnet.{kind}_model", model,
                           lambda ref, local_files_only, **kw: getattr(controlnet_aux, cls_name).from_pretrained(ref),
                           offline_hint=f"pass ready {kind} maps with --control-raw {kind}=DIR",
                           what=f"{kind} annotator")


def pose(frames: np.ndarray, model: str = ANNOTATORS) -> np.ndarray:
    return _annotator("pose", "OpenposeDetector", frames, model)


def lineart(frames: np.ndarray, model: str = ANNOTATORS) -> np.ndarray:
    return _annotator("lineart", "LineartDetector", frames, model)


PREPROCESSORS = {"canny": canny, "depth": depth, "pose": pose, "lineart": lineart}
