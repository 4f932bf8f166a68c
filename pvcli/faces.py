"""Face records and the geometry of aligning them (no torch import here)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Face:
    """One detected face: box (x1, y1, x2, y2) in pixels, confidence, 5 landmarks (x, y)
    in the order left eye, right eye, nose, left mouth corner, right mouth corner."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def size(self) -> float:
        x1, y1, x2, y2 = self.box
        return min(x2 - x1, y2 - y1)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points to
    dst points (Umeyama 1991). Returns the 2x3 matrix M with dst ~= M @ [x, y, 1]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s_c**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def box_transform(box: tuple[float, float, float, float], size: int, margin: float) -> np.ndarray:
    """2x3 matrix mapping a square around `box` (enlarged by `margin` per side) onto size x size."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    s = size / side
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
