"""FaceNet is fed what it was trained on (D. Sandberg's 20180408-102900 protocol: MTCNN box + margin
stretched to 160x160, fixed standardisation), and so tells people apart on real photos."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from pvcli.engine.face_crops import embed_crops, jittered_crops, reference_faces
from pvcli.faces import Face

FACES = Path(__file__).parent / "data" / "faces"  # face_recognition 1.3.0's test photos (MIT), see README there


@pytest.fixture(scope="module")
def embeddings(encoder, group_photo, astronaut):
    names = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]
    crops = {n: reference_faces(encoder, [FACES / n])[0].crop for n in names}
    crops.update({f"t1_{i}": reference_faces(encoder, [group_photo], face_index=i)[0].crop for i in range(6)})
    crops["astronaut"] = reference_faces(encoder, [astronaut])[0].crop
    return dict(zip(crops, embed_crops(encoder, list(crops.values())), strict=True))


def test_same_person_beats_other_person_by_a_wide_margin(embeddings):
    e = embeddings
    obama = ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    same = [float(e[a] @ e[b]) for a, b in itertools.combinations(obama, 2)]
    other = [float(e[a] @ e["biden.jpg"]) for a in obama]
    # measured: same min 0.691, other max 0.103 (template + prewhitening: 0.536 / 0.503)
    assert min(same) - max(other) >= 0.4, (same, other)
    assert min(same) > 0.6 and max(other) < 0.3


def test_unrelated_faces_score_low(embeddings):
    e = embeddings
    unrelated = [f"t1_{i}" for i in range(6)] + ["astronaut", "biden.jpg"]
    cos = [float(e[a] @ e[b]) for a, b in itertools.combinations(unrelated, 2)]
    # measured: mean 0.069 over the 28 pairs (template + prewhitening: 0.273)
    assert np.mean(cos) < 0.15, np.mean(cos)


def test_crop_is_the_box_plus_margin_stretched_to_the_input(encoder):
    face = Face(box=(100.0, 50.0, 200.0, 250.0), score=1.0, landmarks=np.zeros((5, 2)))  # 100 x 200 box
    m = encoder.align_matrix(face)
    pad = encoder.margin * 150
    corners = np.array([[100 - pad - 0.5, 50 - pad - 0.5, 1], [200 + pad - 0.5, 250 + pad - 0.5, 1]])
    np.testing.assert_allclose(corners @ m.T, [[-0.5, -0.5], [159.5, 159.5]], atol=1e-9)
    assert m[0, 1] == m[1, 0] == 0 and m[0, 0] > 1.5 * m[1, 1]  # x and y scaled separately
    assert 0.1 <= encoder.margin <= 0.15  # Sandberg's 32 px at 160 (16 per side) on a ~128 px face


def test_fixed_standardisation_lets_brightness_through(encoder, astronaut):
    """Per-image prewhitening made the reference colour jitter a no-op; fixed standardisation does not."""
    crop = torch.from_numpy(reference_faces(encoder, [astronaut])[0].crop).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        e = encoder.embed(torch.cat([crop, crop * 0.85, (crop - 0.5) * 0.85 + 0.5]))
    cos = (e[1:] @ e[0]).tolist()
    assert all(0.9 < c < 0.9995 for c in cos), cos


def test_reference_jitter_stays_a_mild_augmentation(encoder, astronaut):
    refs = reference_faces(encoder, [astronaut, FACES / "obama.jpg"])
    clean = embed_crops(encoder, [r.crop for r in refs])
    rng = np.random.default_rng(0)
    with torch.no_grad():
        cos = torch.stack([(encoder.embed(jittered_crops(refs, encoder, rng)) * clean).sum(-1) for _ in range(4)])
    # measured over 5 photos x 24 draws: mean 0.971, 5th percentile 0.958, min 0.949
    assert cos.mean() > 0.95 and cos.min() > 0.92, cos
    assert cos.max() < 0.9995  # it does move the embedding
