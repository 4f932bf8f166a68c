"""The metrics the papers report, each computed the way its public source does:

- Face Sim: ConsisID's eval (eval/get_facesim_fid.py): 16 frames at np.linspace(0, n-1, 16,
  dtype=int), the largest face, a retry on the frame padded by 25% per side with grey 128 when no face
  is found, per frame max(0, cos) to the reference, frames without a face skipped, and a video with
  no face in any sampled frame scored 0 (it counts in the average).
- CLIP-T: ConsisID's eval (eval/get_clipscore.py): 16 frames at int(i * n / 16), mean of
  100 x cos(CLIP image, CLIP text), the text being the plain caption (no identity token).
- Dynamic Degree: VBench's dynamic_degree.py: a video is dynamic (1) or static (0); the mean of the
  top 5% optical-flow magnitudes of each frame pair (RAFT, 20 iterations) is compared with
  6 * min(h, w) / 256 (times max(1, 8 / fps)), and the video is dynamic if at least
  round(4 * frames / 16) pairs exceed it; videos are first subsampled to about 8 fps.
- Motion magnitude (pv's, continuous): the same per-pair statistic, averaged over pairs and rescaled to
  a 256-px short side, so the same motion gives the same number at any resolution.
- Temporal consistency: cosine of consecutive frames' CLIP image embeddings.

Each metric says which model computed it; one that cannot run is None + a reason."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..contracts import FrameScorer, IdentityEncoder
from ..faces import Face, box_transform
from .face_crops import face_matrix, warp_faces

SAMPLED_FRAMES = 16
PAD_RETRY = 0.25  # grey border per side, as a fraction of the frame (ConsisID: pad scale 1.25)
PAD_GREY = 128
TOP_FRACTION = 0.05  # VBench: mean of the top 5% flow magnitudes of a frame pair
RAFT_ITERS = 20  # VBench runs RAFT with iters=20
VBENCH_FPS = 8.0  # VBench subsamples videos to about 8 fps and scales its threshold below that
MOTION_SCALE = 256  # motion_magnitude is in px per frame at a 256-px short side


def sample_indices(n: int, k: int = SAMPLED_FRAMES) -> list[int]:
    """ConsisID's Face Sim frames: np.linspace(0, n - 1, k, dtype=int). Always k indices: a clip of
    fewer than k frames repeats frames, and each counts as often as it is drawn."""
    return [int(i) for i in np.linspace(0, n - 1, k, dtype=int)] if n > 0 else []


def clip_indices(n: int, k: int = SAMPLED_FRAMES) -> list[int]:
    """ConsisID's CLIP-T frames: int(i * n / k) for i < k."""
    return [int(i * n / k) for i in range(k)] if n > 0 else []


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


def detect_faces(encoder: IdentityEncoder, frame: np.ndarray) -> list[Face]:
    """Every face the encoder's detector finds; if none, retry on the frame with a grey (128) border
    of 25% of its height and width on every side, as ConsisID's eval does, and map the faces back."""
    faces = encoder.detect(frame)
    if not faces:
        h, w = frame.shape[:2]
        ph, pw = int(h * PAD_RETRY), int(w * PAD_RETRY)
        padded = np.pad(frame, ((ph, ph), (pw, pw), (0, 0)), constant_values=PAD_GREY)
        faces = encoder.detect(padded)
        for f in faces:
            x1, y1, x2, y2 = f.box
            f.box = (x1 - pw, y1 - ph, x2 - pw, y2 - ph)
            f.landmarks = f.landmarks - np.array([pw, ph])
    return faces


def detect_largest(encoder: IdentityEncoder, frame: np.ndarray) -> Face | None:
    """The largest face of `detect_faces` (ConsisID's Face Sim scores the largest face)."""
    faces = detect_faces(encoder, frame)
    return max(faces, key=lambda f: f.area) if faces else None


@dataclass
class FaceSim:
    value: float  # 0.0 when no sampled frame has a face (ConsisID's protocol)
    detect_rate: float  # share of the sampled frames with a detected face
    per_frame: list = field(default_factory=list)  # (frame index, Face | None, score | None), unique frames
    scored: int = 0  # sampled frames that were scored


@torch.no_grad()
def face_similarity(frames: np.ndarray, encoder: IdentityEncoder, reference: torch.Tensor,
                    no_face: str = "skip") -> FaceSim:
    """`no_face=skip` is ConsisID's protocol; `center` scores faceless frames on their centre
    crop (what tuning falls back to), for models that draw no detectable face."""
    idx = sample_indices(len(frames))
    unique = sorted(set(idx))
    found = {i: detect_largest(encoder, frames[i]) for i in unique}
    h, w = frames.shape[1:3]
    scored = [i for i in unique if found[i] is not None or no_face == "center"]
    per_frame = {i: (i, found[i], None) for i in unique}
    if scored:
        mats = [face_matrix(found[i], encoder) if found[i] is not None
                else box_transform((0, 0, w, h), encoder.input_size, 0.0) for i in scored]
        crops = warp_faces(_to_tensor(frames[scored]), np.stack(mats), encoder.input_size)
        cos = (encoder.embed(crops).float().cpu() @ reference.float().cpu()).clamp(min=0)
        for i, c in zip(scored, cos.tolist(), strict=True):
            per_frame[i] = (i, found[i], c)
    scores = [per_frame[i][2] for i in idx if per_frame[i][2] is not None]  # repeated frames count again
    hits = sum(found[i] is not None for i in idx)
    return FaceSim(float(np.mean(scores)) if scores else 0.0, hits / max(1, len(idx)),
                   [per_frame[i] for i in unique], len(scores))


# ------------------------------------------------------------------------------------ CLIP-T

_ARTICLE = re.compile(r"^(a|an|the)$", re.IGNORECASE)


def plain_caption(prompt: str, token: str, class_word: str) -> str:
    """The prompt as a caption without the identity token, as the published CLIP-T numbers use:
    "sks person surfing" -> "a person surfing", "a photo of sks person" -> "a photo of a person",
    "a sks person" -> "a person". `{id}` placeholders count as the identity phrase."""
    cls = class_word.strip() or "person"
    article = "an" if cls[0].lower() in "aeiou" else "a"
    text = prompt.replace("{id}", f"{token} {cls}" if token else cls)
    if not token:
        return " ".join(text.split())
    pattern = re.compile(rf"(?:\b(a|an|the)\s+)?(?<![\w-]){re.escape(token)}(?![\w-])(?:\s+{re.escape(cls)}\b)?",
                         re.IGNORECASE)

    def repl(m: re.Match) -> str:
        art = m.group(1)
        if art is None:
            return f"{article} {cls}"
        return f"{art if art.lower() == 'the' else (article.capitalize() if art[0].isupper() else article)} {cls}"

    return " ".join(pattern.sub(repl, text).split())


@torch.no_grad()
def clip_t(frames: np.ndarray, scorer: FrameScorer, caption: str) -> float:
    """Mean of 100 x cos(CLIP image, CLIP text) over ConsisID's 16 frames; `caption` is the plain
    caption (see plain_caption). Frames are RGB (ConsisID's script hands CLIP OpenCV's BGR frames;
    pv does not reproduce that)."""
    return float(scorer.score(_to_tensor(frames[clip_indices(len(frames))]), caption).mean())


@torch.no_grad()
def temporal_consistency(frames: np.ndarray, scorer: FrameScorer) -> float | None:
    if len(frames) < 2:
        return None
    emb = scorer.image_embedding(_to_tensor(frames))
    return float((emb[:-1] * emb[1:]).sum(-1).mean())


# ------------------------------------------------------------------------------ Dynamic Degree


def _top_mean(mag: np.ndarray) -> float:
    """VBench's per-pair statistic: the mean of the largest 5% of the flow magnitudes."""
    flat = np.sort(mag.ravel())[::-1]
    return float(flat[:max(1, int(flat.size * TOP_FRACTION))].mean())


def farneback_scores(frames: np.ndarray) -> list[float]:
    """Per consecutive pair, the mean of the top 5% Farneback flow magnitudes (px/frame): a CPU
    stand-in for VBench's RAFT."""
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return [_top_mean(np.linalg.norm(cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0), axis=-1))
            for a, b in zip(grey[:-1], grey[1:], strict=True)]


RAFT_WEIGHTS = ("C_T_V1", "C_T_V2", "C_T_SKHT_V1", "C_T_SKHT_V2")  # C_T_V1: RAFT's own raft-things, VBench's


def raft_scores(frames: np.ndarray) -> tuple[list[float], str]:
    """The same statistic with torchvision's RAFT-large, 20 iterations, frames replicate-padded to a
    multiple of 8 (VBench's InputPadder). Prefers the C_T_V1 weights (the port of RAFT's
    raft-things.pth that VBench loads). Needs torchvision and the weights in the torch hub cache;
    raises ImportError/RuntimeError otherwise."""
    from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

    for name in RAFT_WEIGHTS:
        weights = Raft_Large_Weights[name]
        if os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))):
            break
    else:
        raise RuntimeError(f"no RAFT-large weights in {os.path.join(torch.hub.get_dir(), 'checkpoints')}")
    model = raft_large(weights=weights).eval()
    x = _to_tensor(frames) * 2 - 1
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate")
    with torch.no_grad():
        scores = [_top_mean(model(a[None], b[None], num_flow_updates=RAFT_ITERS)[-1][0].norm(dim=0).numpy())
                  for a, b in zip(x[:-1], x[1:], strict=True)]
    return scores, f"raft_large({name}, {RAFT_ITERS} iters)"


@dataclass
class Motion:
    dynamic: float | None  # VBench's Dynamic Degree of one video: 1.0 dynamic, 0.0 static
    magnitude: float | None  # mean top-5% flow magnitude, px per frame at a 256-px short side
    method: str
    note: str | None = None
    pairs_above: int = 0  # frame pairs over VBench's threshold
    pairs_needed: int = 0  # VBench's count_num
    threshold: float = 0.0  # VBench's threshold for this video, px per frame


def vbench_subsample(n: int, fps: float | None) -> tuple[list[int], float]:
    """VBench's frame subsampling to about 8 fps (every round(fps / 8)-th frame) and its threshold
    factor max(1, 8 / fps). Frames of unknown rate (image folders) count as 8 fps, as in VBench."""
    fps = float(fps) if fps else VBENCH_FPS
    step = max(1, round(fps / VBENCH_FPS))
    return list(range(0, n, step)), max(1.0, VBENCH_FPS / fps)


def vbench_is_dynamic(scores: list[float], frames: int, height: int, width: int,
                      factor: float = 1.0) -> tuple[bool, int, int, float]:
    """VBench's check_move: (dynamic, pairs above the threshold, pairs needed, threshold)."""
    thres = factor * 6.0 * min(height, width) / 256.0
    needed = round(4 * (frames / 16.0))  # Python's round, as VBench
    above = sum(s > thres for s in scores)
    return above >= needed, above, needed, thres


def motion(frames: np.ndarray, method: str = "auto", fps: float | None = None) -> Motion:
    """Dynamic Degree (VBench) and the continuous motion magnitude from one optical-flow pass.
    `method`: auto (RAFT when available, else Farneback), raft, or farneback."""
    keep, factor = vbench_subsample(len(frames), fps)
    frames = frames[keep]
    if len(frames) < 2:
        return Motion(None, None, method, "fewer than 2 frames")
    h, w = frames.shape[1:3]
    note = None
    scores = None
    if method in ("auto", "raft"):
        try:
            scores, used = raft_scores(frames)
        except Exception as exc:  # torchvision missing or weights not cached
            note = f"RAFT unavailable ({str(exc).splitlines()[0][:100] or type(exc).__name__})"
            if method == "raft":
                return Motion(None, None, "raft", note)
    if scores is None:
        scores = farneback_scores(frames)
        used = "farneback(opencv), a stand-in for VBench's RAFT"
        note = f"{note}; " if note else ""
        note += "Dynamic Degree from Farneback flow with VBench's thresholds, not VBench's RAFT"
    dynamic, above, needed, thres = vbench_is_dynamic(scores, len(frames), h, w, factor)
    return Motion(float(dynamic), float(np.mean(scores)) * MOTION_SCALE / min(h, w), used, note, above, needed, thres)
