"""`pv eval CLIP --id A --id B`: several people in one clip, each face assigned to one person, swaps
and missing people flagged. The clips are built from photos that ship with the dependencies
(skimage's astronaut, insightface's Tom Hanks), one person per side."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run


def _side(img: np.ndarray, box, scale: float = 1.6) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    cx, cy, side = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) * scale)
    return cv2.resize(img[max(0, cy - side // 2):cy + side // 2, max(0, cx - side // 2):cx + side // 2], (160, 160))


@pytest.fixture(scope="module")
def people(tmp_path_factory, encoder):
    """(folder, astronaut 160x160, hanks 160x160, astronaut.png, hanks.png)."""
    import insightface
    import skimage.data

    d = tmp_path_factory.mktemp("people")
    astro = skimage.data.astronaut()
    face = max(encoder.detect(astro), key=lambda f: f.area)
    a = _side(astro, face.box)
    hanks = cv2.cvtColor(cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png")),
                         cv2.COLOR_BGR2RGB)
    h = np.full((160, 160, 3), 128, np.uint8)
    h[24:136, 24:136] = hanks
    for name, img in (("astronaut.png", astro), ("hanks.png", h)):
        cv2.imwrite(str(d / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return d, a, h


def _clip(path: Path, left: np.ndarray, right: np.ndarray, metadata: dict | None = None) -> Path:
    from pvcli.video import write_video

    frames = np.stack([np.concatenate([left, right], 1)] * 6)
    return write_video(frames, path, 8, metadata)


def _eval(*args):
    res = run("eval", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_two_people_assigned_and_a_swap_flagged(people, tmp_path):
    d, a, h = people
    right = _eval(_clip(tmp_path / "right.mp4", a, h), "--id", d / "astronaut.png", "--id", d / "hanks.png")
    swapped = _eval(_clip(tmp_path / "swapped.mp4", h, a), "--id", d / "astronaut.png", "--id", d / "hanks.png")
    assert right["ids"] == ["astronaut", "hanks"]
    good = right["videos"][0]["scores"]["facenet"]
    assert good["exact_count_rate"] == 1.0 and good["swap_rate"] == 0.0
    for person in ("astronaut", "hanks"):
        s = good["identities"][person]
        assert s["presence"] == 1.0 and s["swap_rate"] == 0.0
        assert s["margin"] > 0.1, s  # the assigned face is clearly that person, not a blend
    assert right["videos"][0]["warnings"] == []
    # the same faces on the wrong sides: still recognised (a max over pairs would score it as good),
    # but every face stands in the other person's region
    bad = swapped["videos"][0]["scores"]["facenet"]
    assert bad["swap_rate"] == 1.0
    for person in ("astronaut", "hanks"):
        assert bad["identities"][person]["swap_rate"] == 1.0
        assert bad["identities"][person]["own_sim"] == pytest.approx(good["identities"][person]["own_sim"], abs=0.05)
    assert any("swapped" in w for w in swapped["videos"][0]["warnings"])
    # without --json: the table and verdict on stderr, only the clip's path on stdout
    res = run("eval", tmp_path / "right.mp4", "--id", d / "astronaut.png", "--id", d / "hanks.png")
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "right.mp4")  # stdout: results only
    assert "swap rate 0%" in res.stderr


def test_regions_from_the_clips_record(people, tmp_path):
    """A clip whose pv record says where each person stands is checked against that, not the layout."""
    d, a, h = people
    record = {"regions": [{"identity": "hanks", "box": [0, 0, 0.5, 1]}, {"identity": "astronaut", "box": [0.5, 0, 1, 1]}]}
    out = _eval(_clip(tmp_path / "rec.mp4", h, a, record), "--id", d / "astronaut.png", "--id", d / "hanks.png",
                "--per-frame")
    video = out["videos"][0]
    assert video["regions_from"] == "clip record"
    scores = video["scores"]["facenet"]
    assert scores["swap_rate"] == 0.0
    assert scores["identities"]["hanks"]["region"] == [0, 0, 0.5, 1]
    frame = scores["per_frame"][0]
    assert sorted(f["identity"] for f in frame["faces"]) == ["astronaut", "hanks"]
    left = min(frame["faces"], key=lambda f: f["box"][0])
    assert left["identity"] == "hanks" and left["sim"]["hanks"] > left["sim"]["astronaut"]


def test_one_person_missing_is_said(people, tmp_path):
    d, a, h = people
    blank = np.full_like(a, 128)
    out = _eval(_clip(tmp_path / "one.mp4", a, blank), "--id", d / "astronaut.png", "--id", d / "hanks.png")
    video = out["videos"][0]
    s = video["scores"]["facenet"]
    assert s["exact_count_rate"] == 0.0 and s["identities"]["hanks"]["presence"] == 0.0
    assert s["identities"]["hanks"]["own_sim"] is None
    assert any("hanks was not found" in w for w in video["warnings"])
    assert any("2 people asked for" in w for w in video["warnings"])


def test_assignment_is_one_to_one_not_a_max():
    from pvcli.engine.face_assignment import assign

    # both faces look most like identity 0; the assignment still gives identity 1 a face
    sim = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(assign(sim)) == [(0, 1), (1, 0)]
    assert assign(np.zeros((0, 2))) == []
    assert sorted(assign(np.array([[0.2, 0.9, 0.1]]))) == [(0, 1)]  # fewer faces than people


@pytest.mark.parametrize("args, message", [
    (["--id", "nobody"], "--id nobody: no such identity or photo"),
    (["--id", "{a}", "--id", "{a}"], "is given twice"),
    (["--id", "{a}", "--ref", "{a}"], "--ref does not go with --id"),
    (["--id", "{a}", "--layout", "diagonal"], "--layout must be one of left-right, top-bottom"),
    (["--id", "{bad}"], "is not an image pv can read"),
    (["--id", ""], "--id is empty"),
])
def test_bad_ids_are_one_line(people, tmp_path, args, message):
    d, a, h = people
    clip = _clip(tmp_path / "c.mp4", a, h)
    (tmp_path / "bad.jpg").write_text("not a photo [/]")
    args = [x.format(a=d / "astronaut.png", bad=tmp_path / "bad.jpg") for x in args]
    res = run("eval", clip, *args)
    assert res.exit_code != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) <= 2


def test_regions_are_checked():
    from pvcli.engine.face_assignment import check_regions, layout_regions
    from pvcli.errors import PVError

    assert layout_regions(2) == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    assert layout_regions(3, "top-bottom")[2] == (0.0, 2 / 3, 1.0, 1.0)
    for box, msg in (((0.5, 0, 0.5, 1), "is empty"), ((0, 0, 1.5, 1), "must lie in [0, 1]"),
                     ((0, 0, float("nan"), 1), "must lie in [0, 1]"), (("a", 0, 1, 1), "not four numbers")):
        with pytest.raises(PVError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            check_regions([box])
