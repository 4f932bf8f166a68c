"""Run a frozen TensorFlow inference graph as a differentiable torch module.

The graph is read with `graphdef.read_graphdef`, its constants become frozen buffers and
its ops are replayed in topological order. Activations are kept NCHW internally; ops whose
meaning depends on the axis order (ConcatV2, Reshape, FusedBatchNorm, Sum) translate TF's
NHWC axes. Only the op set of inference CNNs is supported; anything else is refused when
the graph is loaded, not at the first forward.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .graphdef import GraphDefError, Node

_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1, -1: 1}
SUPPORTED_OPS = {
    "Const", "Placeholder", "Identity", "Conv2D", "BiasAdd", "Relu", "ConcatV2", "Mul", "Add",
    "MaxPool", "AvgPool", "Reshape", "MatMul", "FusedBatchNorm", "Square", "Sum", "Maximum",
    "Rsqrt",
}


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def _from_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


class FrozenTFGraph(nn.Module):
    """Evaluate `output` of a frozen graph given NCHW input for its single Placeholder."""

    def __init__(self, nodes: list[Node], output: str):
        super().__init__()
        by_name = {n.name: n for n in nodes}
        if output not in by_name:
            raise GraphDefError(f"output node {output!r} is not in the graph")
        unsupported = sorted({n.op for n in nodes} - SUPPORTED_OPS)
        if unsupported:
            raise GraphDefError(f"unsupported ops in graph: {', '.join(unsupported)}")
        self._plan: list[Node] = []
        self._const: dict[str, str] = {}  # node name -> buffer name
        self._values: dict[str, np.ndarray] = {}
        self.input_name = ""
        seen: set[str] = set()

        def visit(name: str) -> None:  # iterative post-order DFS (graphs can be deep)
            stack = [(name, False)]
            while stack:
                cur, done = stack.pop()
                if cur in seen:
                    continue
                node = by_name[cur]
                if done:
                    seen.add(cur)
                    self._plan.append(node)
                    continue
                stack.append((cur, True))
                stack.extend((i, False) for i in node.data_inputs if i not in seen)

        visit(output)
        for node in self._plan:
            if node.op == "Const":
                self._values[node.name] = node.attrs["value"]
            elif node.op == "Placeholder":
                self.input_name = node.name
        for node in self._plan:
            if node.op == "Conv2D":
                w = node.data_inputs[1]  # HWIO -> OIHW, registered once per weight
                self._register(w, torch.from_numpy(self._values[w].transpose(3, 2, 0, 1).copy()))
            for inp in node.data_inputs:
                if inp in self._values and inp not in self._const:
                    self._register(inp, torch.from_numpy(np.ascontiguousarray(self._values[inp])))
        self._plan = [n for n in self._plan if n.op != "Const"]
        self.output = output
        self.requires_grad_(False)

    def _register(self, node_name: str, tensor: torch.Tensor) -> None:
        buf = f"c{len(self._const)}"
        self.register_buffer(buf, tensor, persistent=True)
        self._const[node_name] = buf

    def _const_np(self, name: str) -> np.ndarray:
        return self._values[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input_name: x}

        def val(name: str) -> torch.Tensor:
            if name in env:
                return env[name]
            return getattr(self, self._const[name])

        for n in self._plan:
            ins = n.data_inputs
            op = n.op
            if op == "Placeholder":
                continue
            if op == "Identity":
                out = val(ins[0])
            elif op == "Conv2D":
                inp, w = val(ins[0]), val(ins[1])
                _, sh, sw, _ = n.attrs["strides"]
                dil = n.attrs.get("dilations") or [1, 1, 1, 1]
                if n.attrs.get("padding") == "SAME":
                    kh, kw = (w.shape[2] - 1) * dil[1] + 1, (w.shape[3] - 1) * dil[2] + 1
                    pt, pb = _same_pads(inp.shape[2], kh, sh)
                    pl, pr = _same_pads(inp.shape[3], kw, sw)
                    inp = F.pad(inp, (pl, pr, pt, pb))
                out = F.conv2d(inp, w, stride=(sh, sw), dilation=(dil[1], dil[2]))
            elif op == "BiasAdd":
                a, b = val(ins[0]), val(ins[1])
                out = a + (b.view(1, -1, 1, 1) if a.dim() == 4 else b)
            elif op == "Relu":
                out = F.relu(val(ins[0]))
            elif op == "ConcatV2":
                axis = int(self._const_np(ins[-1]))
                parts = [val(i) for i in ins[:-1]]
                if parts[0].dim() == 4:
                    axis = _NHWC_TO_NCHW_AXIS[axis]
                out = torch.cat(parts, dim=axis)
            elif op in ("Mul", "Add", "Maximum"):
                a, b = val(ins[0]), val(ins[1])
                out = a * b if op == "Mul" else a + b if op == "Add" else torch.maximum(a, b)
            elif op in ("MaxPool", "AvgPool"):
                if n.attrs.get("padding") != "VALID":
                    raise GraphDefError(f"{op} with padding {n.attrs.get('padding')} is not supported")
                _, kh, kw, _ = n.attrs["ksize"]
                _, sh, sw, _ = n.attrs["strides"]
                pool = F.max_pool2d if op == "MaxPool" else F.avg_pool2d
                out = pool(val(ins[0]), (kh, kw), (sh, sw))
            elif op == "Reshape":
                a = _to_nhwc(val(ins[0]))
                rest = [int(s) for s in self._const_np(ins[1])][1:]  # frozen graphs bake batch 1 in
                if -1 in rest:
                    known = math.prod(d for d in rest if d != -1)
                    rest[rest.index(-1)] = a[0].numel() // known
                out = _from_nhwc(a.reshape([a.shape[0], *rest]))
            elif op == "MatMul":
                a, b = val(ins[0]), val(ins[1])
                a = a.t() if n.attrs.get("transpose_a") else a
                b = b.t() if n.attrs.get("transpose_b") else b
                out = a @ b
            elif op == "FusedBatchNorm":
                x_, scale, offset, mean, var = (val(i) for i in ins)
                eps = n.attrs.get("epsilon", 1e-3)
                view = (1, -1, 1, 1) if x_.dim() == 4 else (1, -1)
                out = (x_ - mean.view(view)) * torch.rsqrt(var.view(view) + eps) * scale.view(view) + offset.view(view)
            elif op == "Square":
                out = val(ins[0]) ** 2
            elif op == "Sum":
                a = val(ins[0])
                axes = np.atleast_1d(self._const_np(ins[1])).tolist()
                if a.dim() == 4:
                    axes = [_NHWC_TO_NCHW_AXIS[int(ax)] for ax in axes]
                out = a.sum(dim=axes, keepdim=bool(n.attrs.get("keep_dims")))
            elif op == "Rsqrt":
                out = torch.rsqrt(val(ins[0]))
            else:  # pragma: no cover - refused in __init__
                raise GraphDefError(f"unsupported op {op}")
            env[n.name] = out
        return env[self.output]
