"""Identity encoders from insightface model packs: `antelopev2` (the paper's network: ResNet-100
trained on Glint360K, glintr100.onnx, with SCRFD-10G detection) and `buffalo_l` (ResNet-50 on
WebFace600K). Packs are read from `~/.insightface/models/<pack>` or `encoder.options.model_root`;
pv never downloads them. Embeddings run in onnxruntime for evaluation and through a torch
conversion of the same graph for the differentiable tuning loss."""

from __future__ import annotations

from pvcli import hookimpl


def antelopev2(**kwargs):
    from .encoder import make_insightface

    return make_insightface("antelopev2", **kwargs)


def buffalo_l(**kwargs):
    from .encoder import make_insightface

    return make_insightface("buffalo_l", **kwargs)


@hookimpl
def register_encoders(register):
    register("antelopev2", antelopev2, description="insightface antelopev2: ArcFace R100 (Glint360K) + SCRFD; the paper's")
    register("buffalo_l", buffalo_l, description="insightface buffalo_l: ArcFace R50 (WebFace600K) + SCRFD")
