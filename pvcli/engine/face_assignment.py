"""Several identities in one clip: which face is whose, and whether it stands where it should.

A max over all (face, identity) pairs, as multi-subject benchmarks score, rewards a swap (alice's face
where bob should be) and a blend (one face halfway between both) as much as a right answer. Here each
sampled frame's faces are matched one to one with the identities by the Hungarian assignment on their
similarity (scipy's `linear_sum_assignment`), and each identity gets:

- `own_sim`: the similarity of the face assigned to it (mean over the frames where it got one);
- `margin`: that similarity minus the best similarity of the same face to any other identity (a
  blended face has a small margin; a negative one means the face looks more like someone else);
- `swap_rate`: the share of its assigned faces whose centre lies outside its region;
- `presence`: the share of sampled frames where it got a face.

and the clip gets `exact_count_rate`, the share of sampled frames with exactly as many faces as
identities. Regions are normalised boxes (x1, y1, x2, y2) in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..contracts import IdentityEncoder
from ..errors import PVError
from .face_crops import face_matrix, warp_faces
from .metrics import _to_tensor, detect_faces, sample_indices

Box = tuple[float, float, float, float]
LAYOUTS = ("left-right", "top-bottom")


def layout_regions(n: int, layout: str = "left-right") -> list[Box]:
    """n equal strips, in order: left to right (columns) or top to bottom (rows)."""
    if layout not in LAYOUTS:
        raise PVError(f"unknown layout {layout!r}", f"layouts: {', '.join(LAYOUTS)}")
    if layout == "left-right":
        return [(k / n, 0.0, (k + 1) / n, 1.0) for k in range(n)]
    return [(0.0, k / n, 1.0, (k + 1) / n) for k in range(n)]


def check_regions(regions: list[Box], what: str = "region") -> list[Box]:
    """Normalised boxes with x1 < x2, y1 < y2, inside [0, 1]; one line naming the first bad one."""
    out = []
    for k, box in enumerate(regions):
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise PVError(f"{what} {k + 1} is not four numbers x1,y1,x2,y2: {box!r}") from None
        if not all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
            raise PVError(f"{what} {k + 1} ({x1:g},{y1:g},{x2:g},{y2:g}) must lie in [0, 1] (fractions of the frame)")
        if not (x1 < x2 and y1 < y2):
            raise PVError(f"{what} {k + 1} ({x1:g},{y1:g},{x2:g},{y2:g}) is empty: it needs x1 < x2 and y1 < y2")
        out.append((x1, y1, x2, y2))
    return out


def assign(sim: np.ndarray) -> list[tuple[int, int]]:
    """(face, identity) pairs maximising the summed similarity, each face and identity used at most once."""
    from scipy.optimize import linear_sum_assignment

    if sim.size == 0:
        return []
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def _inside(box: Box, x: float, y: float) -> bool:
    x1, y1, x2, y2 = box
    return x1 <= x <= x2 and y1 <= y <= y2


@dataclass
class FrameAssignment:
    index: int  # the frame's index in the clip
    faces: list  # [{"box": [x1, y1, x2, y2] (px), "identity": name or None, "sim": {name: cos}}]


@dataclass
class Assignment:
    identities: list[str]
    per_identity: dict[str, dict] = field(default_factory=dict)
    exact_count_rate: float = 0.0
    faces_per_frame: float = 0.0
    swap_rate: float = 0.0  # over every assigned face of every identity
    frames: list[FrameAssignment] = field(default_factory=list)

    def as_dict(self, per_frame: bool = True) -> dict:
        out = {"identities": self.per_identity, "exact_count_rate": self.exact_count_rate,
               "faces_per_frame": self.faces_per_frame, "swap_rate": self.swap_rate}
        if per_frame:
            out["per_frame"] = [{"frame": f.index, "faces": f.faces} for f in self.frames]
        return out


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


@torch.no_grad()
def assign_identities(frames: np.ndarray, encoder: IdentityEncoder, references: dict[str, torch.Tensor],
                      regions: list[Box]) -> Assignment:
    """Score a clip (N, H, W, 3) uint8 against several identities (name -> unit embedding), one region
    each (in the same order), over the 16 frames Face Sim samples."""
    names = list(references)
    if len(regions) != len(names):
        raise PVError(f"{len(names)} identities but {len(regions)} regions")
    refs = torch.stack([references[n].float().cpu() for n in names])  # (N, D)
    h, w = frames.shape[1:3]
    idx = sample_indices(len(frames))
    found = {i: detect_faces(encoder, frames[i]) for i in sorted(set(idx))}
    own = {n: [] for n in names}
    margin = {n: [] for n in names}
    swaps = {n: 0 for n in names}
    exact = 0
    counted = 0
    result = Assignment(names)
    for i in idx:  # repeated frames of a short clip count again, as in Face Sim
        faces = found[i]
        counted += len(faces)
        exact += len(faces) == len(names)
        record = FrameAssignment(i, [])
        if faces:
            crops = warp_faces(_to_tensor(frames[[i] * len(faces)]),
                               np.stack([face_matrix(f, encoder) for f in faces]), encoder.input_size)
            sim = (encoder.embed(crops).float().cpu() @ refs.T).numpy()  # (faces, identities)
            owner = dict(assign(sim))
            for k, face in enumerate(faces):
                x1, y1, x2, y2 = (float(v) for v in face.box)
                j = owner.get(k)
                record.faces.append({"box": [round(v, 1) for v in (x1, y1, x2, y2)],
                                     "identity": None if j is None else names[j],
                                     "sim": {n: round(float(sim[k, m]), 4) for m, n in enumerate(names)}})
                if j is None:
                    continue
                name = names[j]
                own[name].append(float(sim[k, j]))
                if len(names) > 1:
                    margin[name].append(float(sim[k, j] - np.delete(sim[k], j).max()))
                if not _inside(regions[j], (x1 + x2) / 2 / w, (y1 + y2) / 2 / h):
                    swaps[name] += 1
        if i not in {f.index for f in result.frames}:
            result.frames.append(record)
    for n, box in zip(names, regions, strict=True):
        result.per_identity[n] = {"region": [round(v, 4) for v in box], "own_sim": _mean(own[n]),
                                  "margin": _mean(margin[n]), "min_margin": round(min(margin[n]), 4) if margin[n] else None,
                                  "swap_rate": _rate(swaps[n], len(own[n])), "presence": _rate(len(own[n]), len(idx))}
    assigned = sum(len(v) for v in own.values())
    result.exact_count_rate = _rate(exact, len(idx)) or 0.0
    result.faces_per_frame = round(counted / max(1, len(idx)), 4)
    result.swap_rate = _rate(sum(swaps.values()), assigned) or 0.0
    return result
