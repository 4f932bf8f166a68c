from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvcli.contracts import IdentityEncoder
from pvcli.errors import PVError
from pvcli.faces import Face, similarity_transform
from pvcli.settings import validate_options

RECOGNIZER = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS = "shape_predictor_5_face_landmarks.dat"
# dlib's face chip, as its recogniser was trained on and `compute_face_descriptor` documents it:
# dlib.get_face_chip(image, shape, size=150, padding=0.25) of the 5-point landmarks.
CHIP_SIZE, CHIP_PADDING = 150, 0.25
# Where pv's landmarks (left eye, right eye, nose; see DlibFace for the mouth) fall, on average, in
# that chip: the mean over the 11 faces of the real photos shipped with scikit-image, insightface
# (t1.jpg) and face_recognition (tests/data/faces). align_matrix uses dlib's own chip; this is the
# contract's description of it, and the fallback for faces another detector found.
DLIB_TEMPLATE = np.array(
    [[47.9, 46.8], [99.8, 45.8], [72.0, 88.6], [np.nan, np.nan], [np.nan, np.nan]], dtype=np.float64
)


@dataclass
class DlibOptions:
    model_dir: str = ""  # folder with the two .dat files; default: inside face-recognition-models
    # HOG detection at dlib's own default scale (no upsampling: frontal faces from about 70 px) and,
    # where that finds none, upsampled up to `max_upsample` times (x2 each: 1 finds faces from about
    # 40 px, face_recognition's default, at 4x the time and with more false positives; tried only
    # when the native scale found nothing, so a face found there is never outvoted by one)
    upsample: int = 0
    max_upsample: int = 1
    threshold: float = 0.0  # dlib's detection score threshold


@dataclass
class DlibFace(Face):
    """A face as dlib found it. `landmarks` in pv's order: the eye centres (the midpoints of dlib's
    eye corners), dlib's nose point, and NaN for the mouth corners, which dlib's 5-point model does
    not mark. `shape` keeps dlib's own 5 points (two corners of each eye, the base of the nose)
    relative to the box's top-left corner, so a face moved with its box (metrics.detect_largest's
    padded retry) keeps its chip."""

    shape: np.ndarray = None  # (5, 2), dlib's order, relative to (box[0], box[1])

    @property
    def points(self) -> np.ndarray:
        return self.shape + np.asarray(self.box[:2], dtype=np.float64)


def _model_dir(opts: DlibOptions) -> Path:
    if opts.model_dir:
        return Path(opts.model_dir).expanduser()
    # face_recognition_models' own __init__ imports pkg_resources; find its folder without running it
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PVError("the face-recognition-models package is not installed (dlib's model files)",
                      "pip install face-recognition-models (in pv's judge extra), or set encoder.options.model_dir")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _stamp(*files: Path) -> tuple:
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


# Per process: every eval (the Python API, the test suite) shares one set of dlib models; nothing
# mutates them.
@functools.lru_cache(maxsize=2)
def _load(folder: str, stamp: tuple):
    import dlib

    folder = Path(folder)
    digest = hashlib.sha256((folder / RECOGNIZER).read_bytes()).hexdigest()[:16]
    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(folder / LANDMARKS)),
            dlib.face_recognition_model_v1(str(folder / RECOGNIZER)), digest)


class DlibEncoder(IdentityEncoder):
    name = "dlib"
    input_size = CHIP_SIZE
    dim = 128
    template = DLIB_TEMPLATE
    differentiable = False

    def __init__(self, opts: DlibOptions, device: str = "cpu"):
        import torch

        if importlib.util.find_spec("dlib") is None:
            raise PVError("dlib is not installed", "pip install dlib-bin, or pv's judge extra: pip install 'pv[judge]'")
        for key in ("upsample", "max_upsample"):
            if not 0 <= getattr(opts, key) <= 3:
                raise PVError(f"encoder.options.{key} must be 0 to 3, got {getattr(opts, key)}")
        folder = _model_dir(opts)
        missing = [f for f in (RECOGNIZER, LANDMARKS) if not (folder / f).is_file()]
        if missing:
            raise PVError(f"dlib model files missing in {folder}: {', '.join(missing)}",
                          "reinstall face-recognition-models, or set encoder.options.model_dir")
        files = [folder / RECOGNIZER, folder / LANDMARKS]
        self.detector, self.predictor, self.recognizer, self.weights_sha256 = _load(str(folder.resolve()),
                                                                                      _stamp(*files))
        self.upsample, self.threshold = int(opts.upsample), float(opts.threshold)
        self.max_upsample = max(self.upsample, int(opts.max_upsample))
        self.device = torch.device(device)  # dlib runs on the CPU; embeddings are handed back here

    def detect(self, image: np.ndarray) -> list[Face]:
        img = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        for upsample in range(self.upsample, self.max_upsample + 1):
            rects, scores, _ = self.detector.run(img, upsample, self.threshold)
            if len(rects):
                break
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            parts = self.predictor(img, rect).parts()
            pts = np.array([[p.x, p.y] for p in parts], dtype=np.float64)
            box = (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))
            # dlib's order: image-right eye (outer, inner corner), image-left eye (outer, inner), nose
            landmarks = np.array([pts[2:4].mean(0), pts[0:2].mean(0), pts[4], [np.nan] * 2, [np.nan] * 2])
            faces.append(DlibFace(box=box, score=float(score), landmarks=landmarks, shape=pts - np.array(box[:2])))
        return sorted(faces, key=lambda f: -f.score)

    def align_matrix(self, face: Face) -> np.ndarray:
        """dlib's face chip (get_face_chip_details: its 5 points fitted to dlib's mean face, 150 px,
        padding 0.25) as the 2x3 matrix from image pixels to chip pixels: the chip's rectangle,
        rotated by its angle about its centre, onto the chip's corners. A face found by another
        detector is aligned by its eye centres and nose to `template`."""
        if not isinstance(face, DlibFace):
            known = np.isfinite(face.landmarks).all(1) & np.isfinite(self.template).all(1)
            return similarity_transform(face.landmarks[known], self.template[known])
        import dlib

        x1, y1, x2, y2 = (round(v) for v in face.box)
        pts = dlib.points([dlib.point(round(x), round(y)) for x, y in face.points])
        det = dlib.full_object_detection(dlib.rectangle(x1, y1, x2 - 1, y2 - 1), pts)
        chip = dlib.get_face_chip_details(det, CHIP_SIZE, CHIP_PADDING)
        r, a = chip.rect, chip.angle
        centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        src = (np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]]) - centre) @ rot.T + centre
        dst = np.array([[0, 0], [chip.cols - 1, 0], [chip.cols - 1, chip.rows - 1]], dtype=np.float64)
        # the affine map taking the three src corners to dst: solve [x, y, 1] @ M.T = dst
        return np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T

    def embed(self, faces):
        """dlib's 128-d descriptors of 150 px chips (the net reads 8-bit RGB), L2-normalised. dlib
        compares raw descriptors by Euclidean distance (under 0.6: the same person); their norms are
        about 1.4, so that rule is about cosine > 0.9 here. dlib's cosines run high: on the shipped
        photos the same person scores 0.95-0.97 and different people 0.81-0.90 (FaceNet: 0.69+ and
        under 0.11), so compare dlib scores with dlib scores (tuned against base), not with FaceNet's."""
        import torch
        import torch.nn.functional as F

        if torch.is_grad_enabled() and faces.requires_grad:
            raise PVError("the dlib encoder is not differentiable: it judges identities, it cannot train them",
                          "tune with a differentiable encoder, e.g. --encoder facenet")
        if faces.shape[-2:] != (CHIP_SIZE, CHIP_SIZE):
            raise PVError(f"dlib embeds {CHIP_SIZE}x{CHIP_SIZE} face chips, got {tuple(faces.shape[-2:])}")
        if not len(faces):
            return torch.zeros((0, self.dim), device=self.device)
        chips = (faces.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = self.recognizer.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return F.normalize(torch.tensor(np.array(out), dtype=torch.float32), dim=-1).to(self.device)

    def describe(self) -> dict[str, str]:
        return {"encoder": self.name,
                "encoder_weights": f"face-recognition-models {RECOGNIZER} sha256:{self.weights_sha256}",
                "encoder_crop": f"dlib HOG detector (upsample {self.upsample}-{self.max_upsample}), 5-point landmarks, "
                                f"dlib face chip "
                                f"{CHIP_SIZE} px padding {CHIP_PADDING}"}


def make_dlib(options: dict | None = None, device: str = "cpu") -> DlibEncoder:
    return DlibEncoder(validate_options(DlibOptions, options or {}, "encoder.options"), device)
