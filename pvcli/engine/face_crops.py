"""Faces in, embeddings out: reference photos, and the differentiable crop of faces in
generated frames (detect on a detached copy, warp the live frames with an affine grid)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..contracts import IdentityEncoder
from ..errors import PVError
from ..faces import Face, box_transform
from ..images import load_image

MIN_REFERENCE_FACE = 40  # px: smaller faces are too blurry to define an identity


def _shrink(image: torch.Tensor, m: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Where the warp shrinks the image (a face of 400 px onto 160), first resize it with an
    antialiased (area-weighted) bilinear filter to about the output's scale, as image resizers do, so
    the bilinear warp samples no aliased detail; returns the smaller image and the matrix from its
    pixels. Differentiable; a no-op when the warp does not shrink by more than 10%."""
    h, w = image.shape[-2:]
    kx = min(1.0, float(np.hypot(m[0, 0], m[1, 0])))  # output px per source px along the source x axis
    ky = min(1.0, float(np.hypot(m[0, 1], m[1, 1])))
    if kx > 0.9 and ky > 0.9:
        return image, m
    nh, nw = max(1, round(h * ky)), max(1, round(w * kx))
    small = F.interpolate(image.float(), size=(nh, nw), mode="bilinear", antialias=True,
                          align_corners=False).to(image.dtype)
    ax, ay = nw / w, nh / h  # small pixel x' = ax * (x + 0.5) - 0.5
    to_small = np.array([[ax, 0, 0.5 * ax - 0.5], [0, ay, 0.5 * ay - 0.5], [0, 0, 1]])
    return small, (np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(to_small))[:2]


def warp_faces(images: torch.Tensor, matrices: np.ndarray, size: int) -> torch.Tensor:
    """Differentiable affine warp: images (N, 3, H, W), matrices (N, 2, 3) mapping source pixels
    to output pixels (dst = M @ [x, y, 1]) -> (N, 3, size, size). Outside the image is black.
    A warp that shrinks the face is antialiased first (`_shrink`)."""
    out = []
    for k in range(images.shape[0]):
        img, m = _shrink(images[k:k + 1], np.asarray(matrices[k], dtype=np.float64))
        h, w = img.shape[-2:]
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))  # output pixel -> source pixel
        # normalised coords (align_corners=False): x_pix = ((x_n + 1) * W - 1) / 2
        to_pix = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])
        to_norm = np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
        theta = torch.as_tensor((to_norm @ inv @ to_pix)[:2][None], dtype=img.dtype, device=img.device)
        grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
        out.append(F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def face_matrix(face: Face, encoder: IdentityEncoder) -> np.ndarray:
    return encoder.align_matrix(face)


@dataclass
class ReferenceFace:
    path: Path
    face: Face
    faces_found: int
    crop: np.ndarray  # aligned RGB uint8 (S, S, 3)
    image: np.ndarray  # the whole photo, RGB uint8, for per-step augmentation


def reference_faces(encoder: IdentityEncoder, paths: list[Path], face_index: int = 0,
                    warn=lambda msg: None) -> list[ReferenceFace]:
    """The `face_index`-th largest face of each photo, cropped as the encoder's `align_matrix` says
    (FaceNet: box + margin; insightface: its landmark template)."""
    refs = []
    for path in paths:
        img = load_image(path)
        faces = sorted(encoder.detect(img), key=lambda f: -f.area)
        if not faces:
            raise PVError(f"no face found in {path}", "use a photo where the face is clearly visible")
        if face_index >= len(faces):
            raise PVError(f"{path} has {len(faces)} face(s); --face-index {face_index} is out of range")
        face = faces[face_index]
        if len(faces) > 1:
            warn(f"{path.name}: {len(faces)} faces found, using the {'largest' if face_index == 0 else f'#{face_index}'}")
        if face.size < MIN_REFERENCE_FACE:
            warn(f"{path.name}: the face is only {face.size:.0f} px; identity will be weak")
        live = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        crop = warp_faces(live, face_matrix(face, encoder)[None], encoder.input_size)[0]
        refs.append(ReferenceFace(path, face, len(faces),
                                  (crop.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8), img))
    return refs


# Reference-side augmentation ranges: rotation (degrees), scale, shift (fraction of the crop) and the
# colour factors (brightness, contrast, saturation: uniform in 1 +- COLOUR_JITTER).
JITTER_ROTATION, JITTER_SCALE, JITTER_SHIFT, COLOUR_JITTER = 5.0, 0.05, 0.04, 0.15


def jittered_crops(refs: list[ReferenceFace], encoder: IdentityEncoder, rng: np.random.Generator) -> torch.Tensor:
    """The reference faces re-cropped with a small random similarity (shift, scale, rotation)
    and colour jitter (brightness, contrast, saturation): the paper's reference-side augmentation.
    A mild one: with FaceNet's fixed standardisation the colour factors reach the network (a
    per-image standardisation would cancel brightness and contrast), and together they keep the
    embedding at cosine >= 0.95 to the clean crop's on real photos (tests/test_face_protocol.py)."""
    size = encoder.input_size
    out = []
    for ref in refs:
        angle = np.deg2rad(rng.uniform(-JITTER_ROTATION, JITTER_ROTATION))
        scale = rng.uniform(1 - JITTER_SCALE, 1 + JITTER_SCALE)
        shift = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size=2) * size
        c = np.array([size / 2, size / 2])
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        jitter = np.eye(3)
        jitter[:2, :2], jitter[:2, 2] = rot, c + shift - rot @ c
        m = (jitter @ np.vstack([face_matrix(ref.face, encoder), [0, 0, 1]]))[:2]
        img = torch.from_numpy(ref.image).permute(2, 0, 1)[None].float() / 255
        crop = warp_faces(img, m[None], size)[0]
        lo, hi = 1 - COLOUR_JITTER, 1 + COLOUR_JITTER
        crop = crop * rng.uniform(lo, hi)  # brightness
        mean = crop.mean()
        crop = (crop - mean) * rng.uniform(lo, hi) + mean  # contrast
        grey = crop.mean(0, keepdim=True)
        crop = (crop - grey) * rng.uniform(lo, hi) + grey  # saturation
        out.append(crop.clamp(0, 1))
    return torch.stack(out)


@torch.no_grad()
def embed_crops(encoder: IdentityEncoder, crops: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    return encoder.embed(x).float().cpu()


def mean_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings.mean(0), dim=0)


@dataclass
class FrameFaces:
    crops: torch.Tensor  # (M, 3, S, S), differentiable w.r.t. the frames
    hits: int  # frames where a face was detected
    total: int  # frames examined


def detect_faces(frames: torch.Tensor, encoder: IdentityEncoder, no_face: str) -> tuple[list[int], list[np.ndarray], int]:
    """Where to crop the faces of frames (N, 3, H, W) in [0, 1] (read detached): the frames kept,
    each one's alignment matrix (its largest face, or the centre crop with `no_face=center`), and
    how many frames had a face."""
    n, _, h, w = frames.shape
    pixels = (frames.detach().permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    mats, keep, hits = [], [], 0
    for k in range(n):
        faces = sorted(encoder.detect(pixels[k]), key=lambda f: -f.area)
        if faces:
            hits += 1
            mats.append(face_matrix(faces[0], encoder))
            keep.append(k)
        elif no_face == "center":
            mats.append(box_transform((0, 0, w, h), encoder.input_size, 0.0))
            keep.append(k)
    return keep, mats, hits


def frame_faces(frames: torch.Tensor, encoder: IdentityEncoder, no_face: str) -> FrameFaces:
    """Align the faces of live frames (N, 3, H, W) in [0, 1]. Detection runs on a detached
    copy; frames without a face use the centre crop (`no_face=center`) or are dropped (`skip`)."""
    n = frames.shape[0]
    keep, mats, hits = detect_faces(frames, encoder, no_face)
    if not keep:
        return FrameFaces(frames.new_zeros((0, 3, encoder.input_size, encoder.input_size)), hits, n)
    return FrameFaces(warp_faces(frames[keep], np.stack(mats), encoder.input_size), hits, n)


def face_window(mats: list[np.ndarray], size: int, scale: int, margin: int,
                latent_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The latent window (y0, y1, x0, x1), end exclusive, that holds every pixel the warps `mats`
    (source pixels -> size x size crops) read, widened by `margin` latent pixels on each side (the
    decoder's receptive field: pixels near a window's edge decode from zeros beyond it) and clipped
    to the latents' (h, w); `scale` is the VAE's spatial factor."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    edges = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    for m in mats:
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
        src = edges @ inv[:2, :2].T + inv[:2, 2]
        # bilinear sampling reads one pixel further; a shrinking warp's antialiasing about 1/k more (_shrink)
        k = min(1.0, float(np.hypot(m[0, 0], m[1, 0])), float(np.hypot(m[0, 1], m[1, 1])))
        reach = 1 + int(np.ceil(1 / max(k, 1e-6)))
        lo, hi = np.minimum(lo, src.min(0) - reach), np.maximum(hi, src.max(0) + reach)
    h, w = latent_hw
    x0 = max(0, min(w - 1, int(np.floor(lo[0] / scale)) - margin))
    y0 = max(0, min(h - 1, int(np.floor(lo[1] / scale)) - margin))
    x1 = min(w, max(x0 + 1, int(np.ceil(hi[0] / scale)) + margin))
    y1 = min(h, max(y0 + 1, int(np.ceil(hi[1] / scale)) + margin))
    return y0, y1, x0, x1


def window_faces(frames: torch.Tensor, keep: list[int], mats: list[np.ndarray], hits: int, n: int,
                 box: tuple[int, int, int, int], scale: int, encoder: IdentityEncoder) -> FrameFaces:
    """The aligned faces of frames (K, 3, h, w) decoded from the latent window `box` of the kept
    frames: each matrix (whole-frame pixels) is moved to the window's pixels first."""
    y0, _, x0, _ = box
    shift = np.array([[1.0, 0.0, x0 * scale], [0.0, 1.0, y0 * scale], [0.0, 0.0, 1.0]])
    moved = np.stack([m @ shift for m in mats])
    return FrameFaces(warp_faces(frames, moved, encoder.input_size), hits, n)
