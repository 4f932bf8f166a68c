"""Run an ONNX face-recognition graph (ArcFace-style ResNets) as a differentiable torch module,
so the paper's face network can supervise tuning. Initialisers become frozen buffers; nodes are
replayed in file order (ONNX requires topological order). Unsupported ops are refused when the
graph is loaded, naming them. (onnx2torch would do this too, but needs torchvision.)"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pvcli.errors import PVError

SUPPORTED = {"Conv", "BatchNormalization", "PRelu", "Relu", "LeakyRelu", "Sigmoid", "Add", "Sub", "Mul", "Div",
             "Flatten", "Gemm", "MatMul", "Reshape", "Identity", "Dropout", "MaxPool", "AveragePool",
             "GlobalAveragePool", "Concat", "Transpose", "Constant", "Softmax"}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class OnnxModule(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load(path)
        graph = model.graph
        ops = {n.op_type for n in graph.node}
        if ops - SUPPORTED:
            raise PVError(f"{path}: unsupported ONNX ops for the torch conversion: {', '.join(sorted(ops - SUPPORTED))}")
        self._names: dict[str, str] = {}
        self._np: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            self._np[init.name] = arr
            self._buffer(init.name, arr)
        self.nodes = []
        for node in graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                arr = numpy_helper.to_array(attrs["value"])
                self._np[node.output[0]] = arr
                self._buffer(node.output[0], arr)
                continue
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs))
        init_names = set(self._np)
        self.input_name = next(i.name for i in graph.input if i.name not in init_names)
        self.output_name = graph.output[0].name
        self.requires_grad_(False)

    def _buffer(self, name: str, arr: np.ndarray) -> None:
        key = f"b{len(self._names)}"
        t = torch.from_numpy(np.array(arr))
        self.register_buffer(key, t.float() if t.is_floating_point() else t, persistent=True)
        self._names[name] = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input_name: x}

        def v(name):
            return env[name] if name in env else getattr(self, self._names[name])

        for op, ins, outs, a in self.nodes:
            if op == "Conv":
                w = v(ins[1])
                b = v(ins[2]) if len(ins) > 2 and ins[2] else None
                pads = a.get("pads", [0, 0, 0, 0])
                inp = v(ins[0])
                if pads[0] != pads[2] or pads[1] != pads[3]:
                    inp, pad = F.pad(inp, (pads[1], pads[3], pads[0], pads[2])), 0
                else:
                    pad = (pads[0], pads[1])
                y = F.conv2d(inp, w, b, stride=a.get("strides", [1, 1]), padding=pad,
                             dilation=a.get("dilations", [1, 1]), groups=a.get("group", 1))
            elif op == "BatchNormalization":
                y = F.batch_norm(v(ins[0]), v(ins[3]), v(ins[4]), v(ins[1]), v(ins[2]), False, 0.0,
                                 a.get("epsilon", 1e-5))
            elif op == "PRelu":
                xin, slope = v(ins[0]), v(ins[1])
                y = torch.where(xin >= 0, xin, xin * slope.reshape(1, -1, *([1] * (xin.dim() - 2))))
            elif op == "Relu":
                y = F.relu(v(ins[0]))
            elif op == "LeakyRelu":
                y = F.leaky_relu(v(ins[0]), a.get("alpha", 0.01))
            elif op == "Sigmoid":
                y = torch.sigmoid(v(ins[0]))
            elif op in ("Add", "Sub", "Mul", "Div"):
                p, q = v(ins[0]), v(ins[1])
                y = p + q if op == "Add" else p - q if op == "Sub" else p * q if op == "Mul" else p / q
            elif op == "Flatten":
                y = torch.flatten(v(ins[0]), a.get("axis", 1))
            elif op == "Gemm":
                p, q = v(ins[0]), v(ins[1])
                p = p.t() if a.get("transA") else p
                q = q.t() if a.get("transB") else q
                y = a.get("alpha", 1.0) * (p @ q)
                if len(ins) > 2 and ins[2]:
                    y = y + a.get("beta", 1.0) * v(ins[2])
            elif op == "MatMul":
                y = v(ins[0]) @ v(ins[1])
            elif op == "Reshape":
                xin, shape = v(ins[0]), [int(s) for s in v(ins[1]).tolist()]
                shape = [xin.shape[i] if s == 0 else s for i, s in enumerate(shape)]
                y = xin.reshape(shape)
            elif op in ("Identity", "Dropout"):
                y = v(ins[0])
            elif op in ("MaxPool", "AveragePool"):
                k, s = a["kernel_shape"], a.get("strides", [1, 1])
                pads = a.get("pads", [0, 0, 0, 0])
                pool = F.max_pool2d if op == "MaxPool" else F.avg_pool2d
                y = pool(v(ins[0]), k, s, (pads[0], pads[1]))
            elif op == "GlobalAveragePool":
                y = v(ins[0]).mean(dim=(2, 3), keepdim=True)
            elif op == "Concat":
                y = torch.cat([v(i) for i in ins], dim=a["axis"])
            elif op == "Transpose":
                y = v(ins[0]).permute(*a["perm"])
            elif op == "Softmax":
                y = torch.softmax(v(ins[0]), dim=a.get("axis", -1))
            else:  # pragma: no cover - refused in __init__
                raise PVError(f"unsupported op {op}")
            env[outs[0]] = y
        return env[self.output_name]
