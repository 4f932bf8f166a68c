"""`pv eval` on real photos turned into videos, and on a tiny-backbone identity."""

import json

import cv2
import numpy as np
import pytest
from conftest import run

from pvcli.engine.metrics import farneback_scores, sample_indices
from pvcli.images import load_image
from pvcli.video import write_mp4

VIDEO_KEYS = {"group", "video", "prompt", "frames", "face_sim", "face_sim_facenet", "face_detect_rate", "clip_t",
              "clip_t_caption", "dynamic_degree", "motion_magnitude", "temporal_consistency", "models", "notes"}
AGG_KEYS = {"videos", "face_sim", "face_sim_facenet", "face_detect_rate", "clip_t", "dynamic_degree",
            "motion_magnitude", "temporal_consistency"}


def _pan(image: np.ndarray, n: int, step: int) -> np.ndarray:
    """n frames of a 256x256 window sliding `step` px per frame (step 0: a still video)."""
    img = cv2.resize(image, (320, 320))
    return np.stack([img[20:276, 10 + k * step:266 + k * step] for k in range(n)])


@pytest.fixture(scope="module")
def clips(tmp_path_factory, astronaut, group_photo):
    d = tmp_path_factory.mktemp("clips")
    astro = load_image(astronaut)
    group = load_image(group_photo)
    other = cv2.resize(group[150:400, 200:450], (320, 320))  # someone else, alone in the frame
    write_mp4(_pan(astro, 20, 0), d / "same_still.mp4", 8, {"prompt": "a woman smiling"})
    write_mp4(_pan(astro, 20, 2), d / "same_moving.mp4", 8, {"prompt": "a woman smiling"})
    write_mp4(_pan(other, 20, 0), d / "other.mp4", 8)
    return d


def test_sampling_and_motion_statistic():
    assert sample_indices(40) == sorted(set(sample_indices(40))) and len(sample_indices(40)) == 16
    assert sorted(set(sample_indices(5))) == [0, 1, 2, 3, 4] and len(sample_indices(5)) == 16  # ConsisID repeats
    rng = np.random.default_rng(0)
    still = np.repeat((rng.random((1, 64, 64, 3)) * 255).astype(np.uint8), 6, axis=0)
    assert max(farneback_scores(still)) < 0.05


def test_eval_scores_identity_motion_and_writes_reports(clips, astronaut, tmp_path):
    r = run("eval", clips, "--ref", astronaut, "--json", "--csv", tmp_path / "m.csv", "--sheets", tmp_path / "sheets",
            "--scorer", "clip-tiny")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {v["video"].rsplit("/", 1)[-1]: v for v in out["videos"]}
    assert set(rows) == {"same_still.mp4", "same_moving.mp4", "other.mp4"}
    for row in rows.values():
        assert VIDEO_KEYS <= set(row)
    assert AGG_KEYS <= set(out["aggregate"])
    same, other = rows["same_still.mp4"], rows["other.mp4"]
    assert same["face_detect_rate"]["facenet"] == 1.0
    assert same["face_sim_facenet"] > 0.75 and other["face_sim_facenet"] < 0.45
    assert same["face_sim"]["facenet"] == same["face_sim_facenet"]
    assert rows["same_moving.mp4"]["motion_magnitude"] > 1.0 > same["motion_magnitude"]
    assert same["motion_magnitude"] < 0.1
    assert rows["same_moving.mp4"]["dynamic_degree"] == 0.0  # 2 px per frame at 256 px: under VBench's 6 px
    assert same["models"]["dynamic_degree"].startswith(("farneback", "raft"))
    assert same["prompt"] == "a woman smiling" and isinstance(same["clip_t"], float)  # prompt read from the mp4
    assert other["clip_t"] is None and "no prompt" in other["notes"]["clip_t"]
    assert 0.9 < same["temporal_consistency"] <= 1.0 + 1e-6
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("video,prompt,frames,face_sim_facenet") and len(lines) == 4
    sheet = cv2.imread(str(tmp_path / "sheets" / "same_still.png"))
    assert sheet.shape == (4 * 128, 5 * 128, 3)  # reference column + 4x4 grid of the 16 sampled frames


def test_metrics_that_cannot_run_are_null_with_a_reason(clips, astronaut, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run("eval", clips / "same_still.mp4", "--ref", astronaut, "--json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["videos"][0]
    assert row["clip_t"] is None and row["temporal_consistency"] is None
    assert "CLIP" in row["notes"]["clip_t"] and "not in the local cache" in row["notes"]["clip_t"]


def test_compare_base_on_a_tiny_identity(alice_home, monkeypatch, tmp_path):
    monkeypatch.setenv("PV_HOME", str(alice_home))
    r = run("eval", "alice", "--compare-base", "--prompt", "{id} surfing", "--seed", "1", "--seed", "2",
            "--no-face", "center", "--scorer", "clip-tiny", "--out-dir", tmp_path / "clips", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert [v["group"] for v in out["videos"]] == ["tuned", "tuned", "base", "base"]
    assert out["tuned"]["videos"] == out["base"]["videos"] == 2
    t, b, d = out["tuned"]["face_sim_facenet"], out["base"]["face_sim_facenet"], out["delta"]["face_sim_facenet"]
    assert t is not None and b is not None and d == pytest.approx(t - b, abs=1e-3)
    assert "centre crop" in out["videos"][0]["notes"]["face_sim_facenet"]
    assert len(list((tmp_path / "clips").glob("*.mp4"))) == 4


def test_eval_errors(clips, astronaut):
    assert "neither a video" in run("eval", "nobody").stderr
    r = run("eval", clips, "--compare-base", "--ref", astronaut)
    assert r.exit_code == 1 and "needs an identity" in r.stderr
    r = run("eval", clips / "other.mp4")
    assert r.exit_code == 1 and "no reference" in r.stderr
    assert "--flow must be" in run("eval", clips, "--ref", astronaut, "--flow", "magic").stderr
