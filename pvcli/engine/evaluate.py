"""The metrics the papers report, computed the way public eval code (ConsisID's) does:
Face Sim (16 uniformly sampled frames, largest face, retry on a grey-padded frame, max(0, cos),
faceless frames skipped), CLIP-T (100 x CLIP cosine), Dynamic Degree (optical-flow magnitude:
mean of the top 5% per frame pair), temporal consistency (cosine of consecutive frames' image
embeddings). Each metric says which model computed it; one that cannot run is None + a reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..contracts import FrameScorer, IdentityEncoder
from ..faces import Face, box_transform
from .identity import face_matrix, warp_faces

SAMPLED_FRAMES = 16
PAD_RETRY = 1.25


def sample_indices(n: int, k: int = SAMPLED_FRAMES) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


def detect_largest(encoder: IdentityEncoder, frame: np.ndarray) -> Face | None:
    """The largest face; if none, retry on the frame padded to 1.25x with grey (as ConsisID does)."""
    faces = encoder.detect(frame)
    if not faces:
        h, w = frame.shape[:2]
        ph, pw = int(h * (PAD_RETRY - 1) / 2), int(w * (PAD_RETRY - 1) / 2)
        padded = np.pad(frame, ((ph, ph), (pw, pw), (0, 0)), constant_values=127)
        faces = encoder.detect(padded)
        for f in faces:
            x1, y1, x2, y2 = f.box
            f.box = (x1 - pw, y1 - ph, x2 - pw, y2 - ph)
            f.landmarks = f.landmarks - np.array([pw, ph])
    return max(faces, key=lambda f: f.area) if faces else None


@dataclass
class FaceSim:
    value: float | None
    detect_rate: float
    per_frame: list = field(default_factory=list)  # (frame index, Face | None, score | None)


@torch.no_grad()
def face_similarity(frames: np.ndarray, encoder: IdentityEncoder, reference: torch.Tensor,
                    no_face: str = "skip") -> FaceSim:
    """`no_face=skip` is the papers' protocol; `center` scores faceless frames on their centre
    crop (what tuning falls back to), for models that draw no detectable face."""
    idx = sample_indices(len(frames))
    found = [(i, detect_largest(encoder, frames[i])) for i in idx]
    hits = sum(f is not None for _, f in found)
    h, w = frames.shape[1:3]
    scored = [(i, f) for i, f in found if f is not None or no_face == "center"]
    per_frame = {i: (i, None, None) for i in idx}
    scores = []
    if scored:
        mats = [face_matrix(f, encoder) if f is not None else box_transform((0, 0, w, h), encoder.input_size, 0.0)
                for _, f in scored]
        crops = warp_faces(_to_tensor(frames[[i for i, _ in scored]]), np.stack(mats), encoder.input_size)
        cos = (encoder.embed(crops).float().cpu() @ reference.float().cpu()).clamp(min=0)
        for (i, f), c in zip(scored, cos.tolist(), strict=True):
            per_frame[i] = (i, f, c)
            scores.append(c)
    return FaceSim(float(np.mean(scores)) if scores else None, hits / max(1, len(idx)),
                   [per_frame[i] for i in idx])


@torch.no_grad()
def clip_t(frames: np.ndarray, scorer: FrameScorer, prompt: str) -> float:
    return float(scorer.score(_to_tensor(frames[sample_indices(len(frames))]), prompt).mean())


@torch.no_grad()
def temporal_consistency(frames: np.ndarray, scorer: FrameScorer) -> float | None:
    if len(frames) < 2:
        return None
    emb = scorer.image_embedding(_to_tensor(frames))
    return float((emb[:-1] * emb[1:]).sum(-1).mean())


def farneback_dynamic_degree(frames: np.ndarray) -> float | None:
    """Mean over consecutive frame pairs of the mean of the top 5% flow magnitudes (px/frame)."""
    import cv2

    if len(frames) < 2:
        return None
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    per_pair = []
    for a, b in zip(grey[:-1], grey[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mag = np.linalg.norm(flow, axis=-1).ravel()
        top = np.sort(mag)[-max(1, int(len(mag) * 0.05)):]
        per_pair.append(float(top.mean()))
    return float(np.mean(per_pair))


def raft_dynamic_degree(frames: np.ndarray) -> float | None:
    """The same statistic with torchvision's RAFT (VBench's choice); needs torchvision and its
    weights in the torch hub cache. Raises ImportError/RuntimeError when unavailable."""
    from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

    weights = Raft_Large_Weights.DEFAULT
    import os

    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.isfile(cached):
        raise RuntimeError(f"RAFT weights not in {cached}")
    model = raft_large(weights=weights).eval()
    x = _to_tensor(frames) * 2 - 1
    h, w = (x.shape[2] // 8) * 8, (x.shape[3] // 8) * 8
    x = x[:, :, :h, :w]
    per_pair = []
    with torch.no_grad():
        for a, b in zip(x[:-1], x[1:], strict=True):
            flow = model(a[None], b[None])[-1][0]
            mag = flow.norm(dim=0).flatten()
            per_pair.append(float(mag.topk(max(1, int(len(mag) * 0.05))).values.mean()))
    return float(np.mean(per_pair)) if per_pair else None


def dynamic_degree(frames: np.ndarray, method: str = "auto") -> tuple[float | None, str, str | None]:
    """(value, method used, note)."""
    note = None
    if method in ("auto", "raft"):
        try:
            return raft_dynamic_degree(frames), "raft(torchvision)", None
        except Exception as exc:  # torchvision missing or weights not cached
            note = f"RAFT unavailable ({str(exc).splitlines()[0][:100] or type(exc).__name__}); used Farneback"
            if method == "raft":
                return None, "raft", note
    return farneback_dynamic_degree(frames), "farneback(opencv)", note
