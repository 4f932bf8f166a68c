"""The `dlib` encoder, pv's independent judge: dlib's ResNet face recogniser on dlib's own face
chips after its HOG detector, on the real photos that ship with packages; `pv eval` of an identity
judges with it by default; `pv tune` refuses it (it is not differentiable)."""

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import NO_HELD_OUT, run

from pvcli.engine.face_crops import embed_crops, reference_faces, warp_faces
from pvcli.engine.metrics import PAD_RETRY
from pvcli.errors import PVError
from pvcli.images import load_image
from pvcli.video import write_mp4

FACES = Path(__file__).parent / "data" / "faces"  # face_recognition 1.3.0's test photos (MIT), see README there
OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg"]


@pytest.fixture(scope="module")
def dlib_encoder():
    from pv_dlib.encoder import make_dlib

    return make_dlib()  # the dlib models are loaded once per process (pv_dlib.encoder._load)


@pytest.fixture(scope="module")
def refs(dlib_encoder, astronaut, group_photo):
    out = {n: reference_faces(dlib_encoder, [FACES / n])[0] for n in [*OBAMA, "biden.jpg"]}
    out.update({f"t1_{i}": reference_faces(dlib_encoder, [group_photo], face_index=i)[0] for i in range(6)})
    out["astronaut"] = reference_faces(dlib_encoder, [astronaut])[0]
    return out


@pytest.fixture(scope="module")
def embeddings(dlib_encoder, refs):
    return dict(zip(refs, embed_crops(dlib_encoder, [r.crop for r in refs.values()]), strict=True))


def _eyes(face) -> np.ndarray:
    return np.asarray(face.landmarks[:2], dtype=np.float64)


def test_same_person_scores_above_different_people(embeddings):
    e = embeddings
    same = [float(e[a] @ e[b]) for a, b in itertools.combinations(OBAMA, 2)]
    other = [float(e[a] @ e["biden.jpg"]) for a in OBAMA]
    unrelated = [f"t1_{i}" for i in range(6)] + ["astronaut", "biden.jpg"]
    strangers = [float(e[a] @ e[b]) for a, b in itertools.combinations(unrelated, 2)]
    # measured: same 0.950-0.971, Obama/Biden 0.808-0.828, the 28 unrelated pairs 0.853 mean, 0.898 max
    # (dlib's cosines run high; its own rule, distance < 0.6 on raw descriptors, is about cosine > 0.9)
    assert min(same) - max(other) >= 0.08, (same, other)
    assert min(same) > 0.93 and max(other) < 0.87
    assert max(strangers) < min(same) - 0.03 and np.mean(strangers) < 0.88, strangers


def test_dlibs_own_pipeline_agrees(dlib_encoder, refs, embeddings):
    """pv's crop (align_matrix + warp_faces) is dlib's get_face_chip: the same descriptors, and dlib's
    own same-person rule (Euclidean distance < 0.6 on its raw descriptors) holds on its own chips."""
    import dlib

    raw = {}
    for name in [*OBAMA, "biden.jpg"]:
        img = load_image(FACES / name)
        face = refs[name].face
        x1, y1, x2, y2 = (int(v) for v in face.box)
        det = dlib.full_object_detection(dlib.rectangle(x1, y1, x2 - 1, y2 - 1),
                                         dlib.points([dlib.point(int(x), int(y)) for x, y in face.points]))
        raw[name] = np.array(dlib_encoder.recognizer.compute_face_descriptor(dlib.get_face_chip(img, det, 150, 0.25)))
        assert float(embeddings[name] @ torch.tensor(raw[name] / np.linalg.norm(raw[name]), dtype=torch.float32)) > 0.998
    dist = {(a, b): np.linalg.norm(raw[a] - raw[b]) for a, b in itertools.combinations(raw, 2)}
    assert all(d < 0.6 for (a, b), d in dist.items() if "biden.jpg" not in (a, b)), dist  # measured 0.33-0.43
    assert all(d > 0.6 for (a, b), d in dist.items() if "biden.jpg" in (a, b)), dist  # measured 0.81-0.87
    astro = refs["astronaut"]
    x1, y1, x2, y2 = (int(v) for v in astro.face.box)
    det = dlib.full_object_detection(dlib.rectangle(x1, y1, x2 - 1, y2 - 1),
                                     dlib.points([dlib.point(int(x), int(y)) for x, y in astro.face.points]))
    native = dlib.get_face_chip(astro.image, det, 150, 0.25).astype(float)
    assert np.abs(native - astro.crop).mean() < 1.0  # measured 0.49 (bilinear vs bilinear, no shrinking)


def test_detection_finds_the_expected_faces(dlib_encoder, encoder, astronaut, group_photo):
    """dlib's HOG detector and pv's MTCNN (FaceNet's) are independent; they find the same faces."""
    astro = load_image(astronaut)
    found = dlib_encoder.detect(astro)
    assert len(found) == 1
    eyes = _eyes(found[0])
    mtcnn = _eyes(encoder.detect(astro)[0])
    assert np.linalg.norm(eyes - mtcnn, axis=1).max() < 0.2 * np.linalg.norm(mtcnn[1] - mtcnn[0])
    assert np.isnan(found[0].landmarks[3:]).all()  # dlib's 5-point model marks no mouth corners

    group = load_image(group_photo)
    dlib_faces, mtcnn_faces = dlib_encoder.detect(group), encoder.detect(group)
    assert len(dlib_faces) == len(mtcnn_faces) == 6
    for m in mtcnn_faces:  # each of the six people: one dlib face with its eyes where MTCNN has them
        iod = np.linalg.norm(m.landmarks[1] - m.landmarks[0])
        close = [f for f in dlib_faces if np.linalg.norm(_eyes(f).mean(0) - m.landmarks[:2].mean(0)) < 0.5 * iod]
        assert len(close) == 1, m.box  # measured: 0.03-0.33 of the eye distance apart (a tilted head the most)
    assert dlib_encoder.detect(np.full((200, 200, 3), 127, np.uint8)) == []


def test_small_faces_are_found_upsampled_and_a_moved_face_keeps_its_chip(dlib_encoder, astronaut):
    astro = load_image(astronaut)
    small = cv2.resize(astro, (256, 256), interpolation=cv2.INTER_AREA)  # a ~45 px face: under HOG's native 70 px
    faces = dlib_encoder.detect(small)
    assert len(faces) == 1 and 35 < faces[0].size < 60
    # metrics.detect_largest moves a face found on a padded frame back by the padding: its chip moves with it
    ph = pw = int(256 * PAD_RETRY)
    padded = np.pad(small, ((ph, ph), (pw, pw), (0, 0)), constant_values=128)
    moved = dlib_encoder.detect(padded)[0]
    x1, y1, x2, y2 = moved.box
    moved.box, moved.landmarks = (x1 - pw, y1 - ph, x2 - pw, y2 - ph), moved.landmarks - np.array([pw, ph])
    np.testing.assert_allclose(dlib_encoder.align_matrix(moved), dlib_encoder.align_matrix(faces[0]), atol=0.02)


def test_faces_from_another_detector_align_to_the_template(dlib_encoder, encoder, astronaut, embeddings):
    img = load_image(astronaut)
    live = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    crop = warp_faces(live, dlib_encoder.align_matrix(encoder.detect(img)[0])[None], dlib_encoder.input_size)
    with torch.no_grad():
        assert float(dlib_encoder.embed(crop)[0] @ embeddings["astronaut"]) > 0.95  # measured 0.973


def test_not_differentiable_and_says_so(dlib_encoder, encoder):
    import pv_dlib
    import pv_facenet

    assert dlib_encoder.differentiable is False and pv_dlib.dlib.differentiable is False
    assert encoder.differentiable is True and getattr(pv_facenet.facenet, "differentiable", True)
    x = torch.rand(2, 3, 150, 150, requires_grad=True)
    with pytest.raises(PVError, match="not differentiable"):
        dlib_encoder.embed(x)
    e = dlib_encoder.embed(x.detach())
    assert e.shape == (2, 128) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(PVError, match="150x150"):
        dlib_encoder.embed(torch.rand(1, 3, 112, 112))


def test_bad_options_and_missing_models_are_one_line(tmp_path):
    from pv_dlib.encoder import make_dlib

    with pytest.raises(PVError, match="model files missing"):
        make_dlib({"model_dir": str(tmp_path)})
    with pytest.raises(PVError, match="upsample must be 0 to 3"):
        make_dlib({"upsample": 5})
    with pytest.raises(PVError, match="unknown"):
        make_dlib({"upsampel": 1})


@pytest.mark.parametrize("how", [("--encoder", "dlib"), ("--set", "encoder.name=dlib")])
def test_tune_with_dlib_is_refused_before_any_model_loads(astronaut, pv_home, how):
    r = run("tune", astronaut, "--name", "x", "--profile", "tiny", *NO_HELD_OUT, *how)
    assert r.exit_code == 1 and "Traceback" not in r.stderr and r.stdout == ""
    lines = [ln.strip() for ln in r.stderr.strip().splitlines()]
    assert lines[0] == ("Error: encoder 'dlib' is not differentiable: it can judge identities "
                        "(pv eval --encoder dlib) but not tune them"), r.stderr
    assert len(lines) == 2 and lines[1].startswith("tune with --encoder") and "facenet" in lines[1]
    assert "loading" not in r.stderr  # no backbone, no encoder
    assert not (pv_home / "runs" / "x").exists() and not (pv_home / "identities" / "x").exists()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, astronaut, group_photo):
    """Still clips of a real face: the astronaut (the identity's photo) and someone else."""
    d = tmp_path_factory.mktemp("dlib-clips")
    astro = cv2.resize(load_image(astronaut), (384, 384), interpolation=cv2.INTER_AREA)
    other = cv2.resize(load_image(group_photo)[150:400, 200:450], (384, 384), interpolation=cv2.INTER_AREA)
    write_mp4(np.stack([astro] * 8), d / "same.mp4", 8)
    write_mp4(np.stack([other] * 8), d / "other.mp4", 8)
    return d


def test_eval_with_dlib_scores_the_same_face_above_another(clips, astronaut):
    r = run("eval", clips, "--ref", astronaut, "--encoder", "dlib", "--scorer", "clip-tiny", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {Path(v["video"]).name: v for v in out["videos"]}
    same, other = rows["same.mp4"], rows["other.mp4"]
    assert same["face_detect_rate"] == {"dlib": 1.0} and other["face_detect_rate"] == {"dlib": 1.0}
    assert same["face_sim_dlib"] > 0.97 and other["face_sim_dlib"] < 0.9, (same["face_sim_dlib"], other["face_sim_dlib"])
    assert "dlib_face_recognition_resnet_model_v1.dat" in same["models"]["face_sim"]["dlib"]
    assert out["judge"] is None and out["tuned_with"] is None  # photos: nothing was tuned against


def test_eval_of_an_identity_is_judged_by_dlib_by_default(alice_home, monkeypatch, tmp_path):
    monkeypatch.setenv("PV_HOME", str(alice_home))
    args = ("eval", "alice", "--prompt", "{id} surfing", "--scorer", "clip-tiny")
    r = run(*args, "--out-dir", tmp_path / "a", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tuned_with"] == "facenet" and out["judge"] == "dlib"
    row = out["videos"][0]
    assert set(row["face_sim"]) == {"facenet", "dlib"} and isinstance(row["face_sim_dlib"], float)
    assert set(out["tuned"]["face_sim"]) == {"facenet", "dlib"}
    assert "no face detected" in row["notes"]["face_sim_dlib"]  # a random tiny model draws no face
    r = run(*args, "--out-dir", tmp_path / "b", "--report", tmp_path / "b.html")
    assert r.exit_code == 0, r.stderr
    assert "face_sim (dlib, judge)" in r.stderr and "face_sim (facenet, tuned with)" in r.stderr
    page = (tmp_path / "b.html").read_text()  # the HTML report names the roles too
    assert "Face Sim (facenet, tuned with)" in page and "Face Sim (dlib, judge)" in page and "id='judging'" in page
    assert "judge: dlib, an encoder the identity was not tuned against (it was tuned against facenet)" in r.stderr
    assert r.stdout.strip().endswith(".mp4") and "judge" not in r.stdout  # stdout: results only
    r = run(*args, "--out-dir", tmp_path / "c", "--encoder", "facenet", "--json")  # asked for: no judge added
    out = json.loads(r.stdout)
    assert set(out["videos"][0]["face_sim"]) == {"facenet"} and out["judge"] is None


def test_a_judge_that_cannot_run_is_a_note(astronaut):
    """Judge candidates that cannot run are skipped and the first that can is the judge; with none,
    a note says why."""
    from pvcli.jobs.scoring import Evaluator, judge_candidates
    from pvcli.plugins import build_plugin_manager
    from pvcli.reporting import Reporter

    registry = build_plugin_manager()
    assert judge_candidates(registry, "facenet")[0] == "dlib"
    assert "dlib" not in judge_candidates(registry, "dlib") and "facenet" in judge_candidates(registry, "dlib")
    ev = Evaluator(registry, [astronaut], ["facenet"], "clip-tiny", {}, "farneback", "cpu", Reporter(),
                   judges=["nobody", "dlib"])
    assert ev.judge == "dlib" and set(ev.encoders) == {"facenet", "dlib"} and ev.judge_note is None
    ev = Evaluator(registry, [astronaut], ["facenet"], "clip-tiny", {}, "farneback", "cpu", Reporter(),
                   judges=["nobody"])
    assert ev.judge is None and "no independent judge could run: nobody: unknown encoder 'nobody'" in ev.judge_note


def test_videos_against_an_identity_are_scored_with_the_encoder_it_was_tuned_with(clips, tuned_alice, monkeypatch,
                                                                                   tmp_path):
    """`pv eval VIDEOS --ref IDENTITY`: the clips are scored with the identity's own encoder (here an
    identity recorded as tuned against dlib) and judged by another, both named."""
    from conftest import copy_home, use_home

    home = use_home(monkeypatch, copy_home(tuned_alice, tmp_path / "home"))
    record = home / "identities" / "alice" / "identity.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "encoder": "dlib"}))
    r = run("eval", clips / "same.mp4", "--ref", "alice", "--scorer", "clip-tiny", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tuned_with"] == "dlib" and out["judge"] not in (None, "dlib")
    assert set(out["videos"][0]["face_sim"]) == {"dlib", out["judge"]}  # the tuning encoder's score is there
