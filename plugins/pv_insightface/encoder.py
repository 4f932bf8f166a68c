from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvcli.contracts import IdentityEncoder
from pvcli.errors import PVError
from pvcli.faces import Face
from pvcli.settings import validate_options


@dataclass
class InsightFaceOptions:
    model_root: str = ""  # folder holding <pack>/ (default ~/.insightface/models)
    det_size: int = 640
    det_thresh: float = 0.5


def _providers(device: str) -> list[str]:
    from pvcli.footprint import onnxruntime

    ort = onnxruntime()

    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _classify(pack_dir: Path) -> tuple[Path, Path]:
    """The pack's SCRFD detector (>= 5 outputs) and recognition model (112x112 input, 1 output)."""
    from pvcli.footprint import onnxruntime

    ort = onnxruntime()

    det = rec = None
    for path in sorted(pack_dir.glob("*.onnx")):
        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception:
            continue
        shape = sess.get_inputs()[0].shape
        if len(sess.get_outputs()) >= 5 and det is None:
            det = path
        elif len(shape) == 4 and shape[2] == shape[3] == 112 and len(sess.get_outputs()) == 1 and rec is None:
            rec = path
    if det is None or rec is None:
        missing = " and ".join(n for n, p in (("a detection (SCRFD)", det), ("a recognition", rec)) if p is None)
        raise PVError(f"{pack_dir} has no {missing} model")
    return det, rec


class InsightFaceEncoder(IdentityEncoder):
    input_size = 112

    def __init__(self, pack: str, opts: InsightFaceOptions, device: str = "cpu"):
        import torch
        from insightface.model_zoo import model_zoo
        from insightface.utils import face_align

        root = Path(opts.model_root).expanduser() if opts.model_root else Path("~/.insightface/models").expanduser()
        pack_dir = root / pack
        if not pack_dir.is_dir() or not any(pack_dir.glob("*.onnx")):
            raise PVError(f"insightface model pack {pack!r} not found in {pack_dir}",
                          f"unzip {pack}.zip from the insightface releases into {root}/, or set "
                          "encoder.options.model_root (pv does not download it)")
        self.name = pack
        self.det_path, self.rec_path = _classify(pack_dir)
        providers = _providers(device)
        self.detector = model_zoo.get_model(str(self.det_path), providers=providers)
        ctx = 0 if providers[0].startswith("CUDA") else -1
        self.detector.prepare(ctx, input_size=(opts.det_size, opts.det_size), det_thresh=opts.det_thresh)
        self.recognizer = model_zoo.get_model(str(self.rec_path), providers=providers)
        self.recognizer.prepare(ctx)
        self.template = np.asarray(face_align.arcface_dst, dtype=np.float64)
        self.dim = int(self.recognizer.session.get_outputs()[0].shape[1])
        self._torch = None
        self.device = torch.device(device)

    def align_matrix(self, face: Face) -> np.ndarray:
        from insightface.utils import face_align

        return face_align.estimate_norm(np.asarray(face.landmarks, dtype=np.float32), self.input_size)

    def detect(self, image: np.ndarray) -> list[Face]:
        bboxes, kpss = self.detector.detect(np.ascontiguousarray(image[:, :, ::-1]), max_num=0)  # insightface is BGR
        faces = [Face(box=tuple(float(v) for v in b[:4]), score=float(b[4]),
                      landmarks=np.asarray(k, dtype=np.float64) if k is not None else np.zeros((5, 2)))
                 for b, k in zip(bboxes, kpss if kpss is not None else [None] * len(bboxes), strict=True)]
        return sorted(faces, key=lambda f: -f.score)

    def _normalise(self, faces):
        x = faces * 255.0
        return (x - self.recognizer.input_mean) / self.recognizer.input_std

    def embed(self, faces):
        """onnxruntime when no gradient is needed (evaluation), the torch conversion otherwise."""
        import torch
        import torch.nn.functional as F

        x = self._normalise(faces.to(self.device, torch.float32))
        if torch.is_grad_enabled() and faces.requires_grad:
            if self._torch is None:
                from .onnx_torch import OnnxModule

                self._torch = OnnxModule(str(self.rec_path)).to(self.device).eval()
            return F.normalize(self._torch(x), dim=-1)
        sess = self.recognizer.session
        out = sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy()})[0]
        return F.normalize(torch.from_numpy(out).float(), dim=-1).to(self.device)

    def describe(self) -> dict[str, str]:
        return {"encoder": self.name, "encoder_weights": f"insightface {self.name}/{self.rec_path.name}"}


def make_insightface(pack: str, options: dict | None = None, device: str = "cpu") -> InsightFaceEncoder:
    return InsightFaceEncoder(pack, validate_options(InsightFaceOptions, options or {}, "encoder.options"), device)
