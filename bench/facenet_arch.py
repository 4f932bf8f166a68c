"""The tuning encoder's network without its weights, for benchmarks on machines that cannot carry the
94 MB FaceNet graph (bench/gpu.py).

`InceptionResnetV1` is FaceNet's Inception-ResNet-v1 (D. Sandberg's facenet, release 20180408-102900:
160x160 RGB in, a 512-d L2-normalised embedding out) written as a torch module, layer for layer as
pv_facenet replays the frozen graph: its batch norms are folded into conv biases, so each unit is
conv + bias (+ ReLU); the bottleneck is a bias-free 1792 -> 512 projection and a batch norm without
scale. Module names are the graph's scopes (`Repeat_1.block17_3.Branch_1.Conv2d_0b_1x7` is
`InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7`). tests/test_bench_gpu.py loads the
real graph's tensors into it by those names and gets the port's embeddings, and counts the same
23,469,360 weights.

`RandomFaceNet` is the identity encoder bench/gpu.py tunes with: pv_facenet's own crop (MTCNN box +
margin, stretched to 160) and fixed standardisation (`FaceNetEncoder.align_matrix`, `.embed`) on this
network with random weights, and a detector that returns one fixed centred face per frame, because
random-weight video models draw no face for MTCNN to find (and its ONNX files are not carried either).
"""

from __future__ import annotations

import numpy as np
import torch
from pv_facenet.arch import EMBEDDING_EPS, FACENET_WEIGHTS, InceptionResnetV1, weight_count  # noqa: F401 (re-exported)
from pv_facenet.encoder import FACENET_MARGIN, FACENET_TEMPLATE, FaceNetEncoder
from torch import nn

from pvcli.faces import Face


def random_facenet(seed: int = 0) -> InceptionResnetV1:
    """The architecture with random weights that keep activations at a trained network's scale:
    He-normal convs, zero biases, the projection at 1/sqrt(fan-in); frozen, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InceptionResnetV1()
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(net.Bottleneck.weight, std=1792 ** -0.5)
    return net.eval().requires_grad_(False)


class RandomFaceNet(FaceNetEncoder):
    """pv_facenet's encoder (its crop, standardisation and embedding call) on `random_facenet()`,
    with a detector that finds one fixed face: a centred square box, half the frame's short side."""

    name = "facenet-random"

    def __init__(self, device: str = "cpu", seed: int = 0):  # noqa: D107 - FaceNetEncoder.__init__ loads the graph
        self.net = random_facenet(seed).to(device)
        self.margin = FACENET_MARGIN
        self.device = torch.device(device)
        self.weights_sha256 = "random"

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        side = min(h, w) / 2
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        face = Face(box, 1.0, np.zeros((5, 2)))
        m = np.vstack([self.align_matrix(face), [0, 0, 1]])  # the template's landmarks, back in frame pixels
        face.landmarks = (np.linalg.inv(m) @ np.c_[FACENET_TEMPLATE, np.ones(5)].T)[:2].T
        return [face]

    def describe(self) -> dict[str, str]:
        return {"encoder": self.name, "encoder_weights": "random (FaceNet Inception-ResNet-v1 architecture)",
                "encoder_crop": f"fixed centred box + {self.margin:g} margin, stretched to 160, (x - 127.5) / 128"}
