"""FaceNet's Inception-ResNet-v1 (D. Sandberg's facenet, release 20180408-102900: 160x160 RGB in, a
512-d L2-normalised embedding out) as a torch module without its weights, layer for layer as
encoder.py replays the frozen graph (batch norms folded into conv biases; module names are the
graph's scopes). For measuring: the memory trace runs it on the meta device (`network()`), and
bench/gpu.py tunes with it at random weights where the graph is not carried."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

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


def network():
    """The face network at real size on the meta device and its input side (the memory trace's)."""
    with torch.device("meta"):
        net = InceptionResnetV1()
    return net.eval().requires_grad_(False), 160
