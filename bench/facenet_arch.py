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

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from pv_facenet.encoder import FACENET_MARGIN, FACENET_TEMPLATE, FaceNetEncoder
from torch import nn

from pvcli.faces import Face

FACENET_WEIGHTS = 23_469_360  # conv weights and biases, bottleneck projection, its batch norm (pv_facenet's port)
EMBEDDING_EPS = 1e-10  # the graph's l2_normalize epsilon


class Unit(nn.Module):
    """conv + bias (a conv + batch norm folded) + ReLU; `same`: TF's SAME padding at stride 1."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, same: bool = False, relu: bool = True):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.conv = nn.Conv2d(cin, cout, (kh, kw), stride, padding=(kh // 2, kw // 2) if same else 0, bias=True)
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        return F.relu(x) if self.relu else x


def _branch(*units: tuple[str, Unit]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(units))


class Residual(nn.Module):
    """Block35 / Block17 / Block8: parallel branches, concatenated, a 1x1 conv back to the input's
    width, scaled and added to the input, then ReLU (except the last Block8)."""

    def __init__(self, branches: dict[str, nn.Sequential], width_in: int, width: int, scale: float,
                 relu: bool = True):
        super().__init__()
        for name, branch in branches.items():
            self.add_module(name, branch)
        self.names = list(branches)
        self.Conv2d_1x1 = Unit(width_in, width, 1, same=True, relu=False)
        self.scale = scale
        self.relu = relu

    def forward(self, x):
        mixed = torch.cat([getattr(self, n)(x) for n in self.names], dim=1)
        x = x + self.scale * self.Conv2d_1x1(mixed)
        return F.relu(x) if self.relu else x


def block35() -> Residual:
    return Residual({
        "Branch_0": _branch(("Conv2d_1x1", Unit(256, 32, 1, same=True))),
        "Branch_1": _branch(("Conv2d_0a_1x1", Unit(256, 32, 1, same=True)), ("Conv2d_0b_3x3", Unit(32, 32, 3, same=True))),
        "Branch_2": _branch(("Conv2d_0a_1x1", Unit(256, 32, 1, same=True)), ("Conv2d_0b_3x3", Unit(32, 32, 3, same=True)),
                            ("Conv2d_0c_3x3", Unit(32, 32, 3, same=True))),
    }, 96, 256, 0.17)


def block17() -> Residual:
    return Residual({
        "Branch_0": _branch(("Conv2d_1x1", Unit(896, 128, 1, same=True))),
        "Branch_1": _branch(("Conv2d_0a_1x1", Unit(896, 128, 1, same=True)),
                            ("Conv2d_0b_1x7", Unit(128, 128, (1, 7), same=True)),
                            ("Conv2d_0c_7x1", Unit(128, 128, (7, 1), same=True))),
    }, 256, 896, 0.10)


def block8(scale: float = 0.20, relu: bool = True) -> Residual:
    return Residual({
        "Branch_0": _branch(("Conv2d_1x1", Unit(1792, 192, 1, same=True))),
        "Branch_1": _branch(("Conv2d_0a_1x1", Unit(1792, 192, 1, same=True)),
                            ("Conv2d_0b_1x3", Unit(192, 192, (1, 3), same=True)),
                            ("Conv2d_0c_3x1", Unit(192, 192, (3, 1), same=True))),
    }, 384, 1792, scale, relu)


class Reduction(nn.Module):
    """Mixed_6a / Mixed_7a: strided conv branches and a max pool, concatenated."""

    def __init__(self, branches: dict[str, nn.Sequential], pool: str):
        super().__init__()
        for name, branch in branches.items():
            self.add_module(name, branch)
        self.names = list(branches)
        self.pool = pool  # the max-pool branch's name (no weights)

    def forward(self, x):
        parts = [getattr(self, n)(x) for n in self.names]
        return torch.cat([*parts, F.max_pool2d(x, 3, 2)], dim=1)


class InceptionResnetV1(nn.Module):
    input_size = 160
    dim = 512

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Unit(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Unit(32, 32, 3)
        self.Conv2d_2b_3x3 = Unit(32, 64, 3, same=True)
        self.Conv2d_3b_1x1 = Unit(64, 80, 1)
        self.Conv2d_4a_3x3 = Unit(80, 192, 3)
        self.Conv2d_4b_3x3 = Unit(192, 256, 3, stride=2)
        self.Repeat = nn.Sequential(OrderedDict((f"block35_{i}", block35()) for i in range(1, 6)))
        self.Mixed_6a = Reduction({
            "Branch_0": _branch(("Conv2d_1a_3x3", Unit(256, 384, 3, stride=2))),
            "Branch_1": _branch(("Conv2d_0a_1x1", Unit(256, 192, 1, same=True)),
                                ("Conv2d_0b_3x3", Unit(192, 192, 3, same=True)),
                                ("Conv2d_1a_3x3", Unit(192, 256, 3, stride=2))),
        }, pool="Branch_2")
        self.Repeat_1 = nn.Sequential(OrderedDict((f"block17_{i}", block17()) for i in range(1, 11)))
        self.Mixed_7a = Reduction({
            "Branch_0": _branch(("Conv2d_0a_1x1", Unit(896, 256, 1, same=True)),
                                ("Conv2d_1a_3x3", Unit(256, 384, 3, stride=2))),
            "Branch_1": _branch(("Conv2d_0a_1x1", Unit(896, 256, 1, same=True)),
                                ("Conv2d_1a_3x3", Unit(256, 256, 3, stride=2))),
            "Branch_2": _branch(("Conv2d_0a_1x1", Unit(896, 256, 1, same=True)),
                                ("Conv2d_0b_3x3", Unit(256, 256, 3, same=True)),
                                ("Conv2d_1a_3x3", Unit(256, 256, 3, stride=2))),
        }, pool="Branch_3")
        self.Repeat_2 = nn.Sequential(OrderedDict((f"block8_{i}", block8()) for i in range(1, 6)))
        self.Block8 = block8(scale=1.0, relu=False)
        self.Bottleneck = nn.Linear(1792, 512, bias=False)
        self.BatchNorm = nn.BatchNorm1d(512, eps=1e-3)  # the graph's Bottleneck/BatchNorm: scale fixed at 1
        self.BatchNorm.weight.data.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 160, 160) standardised RGB -> (N, 512) L2-normalised embeddings."""
        for stem in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3):
            x = stem(x)
        x = F.max_pool2d(x, 3, 2)
        for stem in (self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.Conv2d_4b_3x3):
            x = stem(x)
        x = self.Block8(self.Repeat_2(self.Mixed_7a(self.Repeat_1(self.Mixed_6a(self.Repeat(x))))))
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)  # the whole final map (3x3 at 160 px)
        x = F.batch_norm(self.Bottleneck(x), self.BatchNorm.running_mean, self.BatchNorm.running_var,
                         self.BatchNorm.weight, self.BatchNorm.bias, False, 0.0, self.BatchNorm.eps)
        return x * torch.rsqrt(torch.clamp(x.pow(2).sum(1, keepdim=True), min=EMBEDDING_EPS))


def weight_count(net: nn.Module) -> int:
    """Every learned or frozen tensor of the network (parameters and the batch norm's statistics),
    counted as pv_facenet's port holds them."""
    return sum(t.numel() for k, t in net.state_dict().items() if t.is_floating_point())


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
