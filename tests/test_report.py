"""`pv report NAME -o FILE` and `pv eval ... --report FILE`: one self-contained HTML file each
(every image a data URI that decodes, no network), checked structurally here and, where Debian's
chromium is installed, rendered in headless Chromium."""

import base64
import binascii
import html
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import CHROMIUM, chromium_probe, copy_home, run
from PIL import Image


class Page(HTMLParser):
    """Every <img> (attributes), every element with an external reference, and the clips table's rows."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.external, self.rows, self.bodies, self.ids = [], [], [], 0, set()
        self._in_clips = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.external.append((tag, a[key]))
        if tag == "table" and a.get("id") == "clips":
            self._in_clips = True
        if self._in_clips and tag == "tbody":
            self.bodies += 1
        if self._in_clips and tag == "tr" and "clip" in (a.get("class") or "").split():
            self.rows.append(a)

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_clips = False


def decode(uri: str) -> Image.Image:
    m = re.fullmatch(r"data:(image/(?:png|jpeg|webp|gif));base64,([A-Za-z0-9+/=]+)", uri)
    assert m, uri[:60]
    try:
        data = base64.b64decode(m.group(2), validate=True)
    except binascii.Error as exc:
        raise AssertionError(f"bad base64: {exc}") from None
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format.lower() == m.group(1).split("/")[1], (img.format, m.group(1))
    return img


def check_self_contained(text: str) -> Page:
    page = Page(text)
    assert not page.external, page.external[:3]  # no network, no other file
    assert "<script src" not in text and "@import" not in text and "url(http" not in text
    for a in page.images:
        decode(a["src"])
    return page


@pytest.fixture(scope="module")
def home(alice_home, tmp_path_factory):
    """alice, plus a copy whose identity.json carries held-out numbers (for the before/after chart)."""
    home = copy_home(alice_home, tmp_path_factory.mktemp("report") / "pvhome")
    shutil.copytree(home / "identities" / "alice", home / "identities" / "carol")
    info_path = home / "identities" / "carol" / "identity.json"
    info = json.loads(info_path.read_text())
    info.update(name="carol", held_out_id_sim_before=-0.142, held_out_id_sim_after=-0.095,
                held_out_at={"frames": 9, "height": 64, "width": 64, "steps": 4})
    info_path.write_text(json.dumps(info))
    return home


@pytest.fixture(scope="module")
def reports(home, tmp_path_factory):
    """The identity report of carol and the --compare-base eval report of alice (rendered once)."""
    out = tmp_path_factory.mktemp("pages")
    mp = pytest.MonkeyPatch()
    mp.setenv("PV_HOME", str(home))
    try:
        r = run("report", "carol", "-o", out / "carol.html", "--json")
        assert r.exit_code == 0, r.stderr
        identity = json.loads(r.stdout)
        r = run("eval", "alice", "--compare-base", "--prompt", "{id} surfing", "--seed", "1", "--seed", "2",
                "--no-face", "center", "--scorer", "clip-tiny", "--encoder", "facenet", "--out-dir", out / "clips",
                "--report", out / "eval.html", "--json")
        assert r.exit_code == 0, r.stderr
        evaluation = json.loads(r.stdout)
    finally:
        mp.undo()
    return {"identity": identity, "eval": evaluation, "dir": out}


def test_identity_report_says_the_size_the_held_out_clips_were_rendered_at(reports):
    text = (reports["dir"] / "carol.html").read_text()
    assert "<th>held-out clips rendered at</th><td class='n'>9 frames 64x64, 4 steps</td>" in text


def test_identity_report_is_one_self_contained_file(reports):
    info = reports["identity"]
    path = reports["dir"] / "carol.html"
    assert info["path"] == str(path) and info["bytes"] == path.stat().st_size
    text = path.read_text()
    page = check_self_contained(text)
    alts = [a["alt"] for a in page.images]
    assert "photo 0" in alts and "aligned crop 0" in alts
    assert "loss, ID similarity and face-hit rate against step" in alts
    assert "held-out ID similarity before and after tuning" in alts
    assert info["images"] == len(page.images) == 4 and info["samples"] == 0
    assert "-0.142" in text and "-0.095" in text and "+0.0470" in text
    assert "tune.sample_every=N" in text  # alice kept no samples: the page says how to get them
    assert "tune:" in text and "adapter:" in text  # the settings
    assert "pv (tuned with)" in text and "torch (this machine)" in text
    crop = next(decode(a["src"]) for a in page.images if a["alt"] == "aligned crop 0")
    assert crop.size == (160, 160)  # FaceNet's input, as the encoder embedded it
    curves = next(decode(a["src"]) for a in page.images if a["alt"].startswith("loss"))
    assert curves.width > 600 and curves.format == "PNG"


def test_eval_report_has_one_sortable_row_per_clip_with_base_and_tuned_side_by_side(reports):
    result = reports["eval"]
    path = reports["dir"] / "eval.html"
    assert result["report"] == str(path)
    page = check_self_contained(path.read_text())
    assert len(page.rows) == len(result["videos"]) == 4
    assert page.bodies == 2  # tuned and base of the same seed together
    assert [r["data-group"] for r in page.rows] == ["tuned", "base", "tuned", "base"]
    previews = [a for a in page.images if a["alt"].startswith("preview of")]
    assert len(previews) == 4
    for a in previews:
        anim = decode(a["src"])
        assert anim.n_frames == 8 and anim.is_animated  # the tiny profile's 8 frames
    sparks = [a for a in page.images if a["alt"] == "per-frame face similarity"]
    assert len(sparks) == 4 and all("frames 0..7" in a["title"] for a in sparks)
    text = path.read_text()
    for row in result["videos"]:
        assert html.escape(os.path.basename(row["video"])) in text
        assert f"{row['face_sim']['facenet']:.4f}" in text
    assert "<script>" in text and "data-key='face_sim_facenet'" in text


def test_eval_report_of_videos_and_bad_outputs(tmp_path, astronaut, home, monkeypatch):
    from pvcli.images import load_image
    from pvcli.video import write_mp4

    frames = load_image(astronaut)[100:356, 150:406]
    write_mp4(np.stack([frames] * 6), tmp_path / "still.mp4", 8, {"prompt": "a woman"})
    r = run("eval", tmp_path / "still.mp4", "--ref", astronaut, "--scorer", "clip-tiny", "--encoder", "facenet",
            "--report", tmp_path / "e.html")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "still.mp4")  # stdout: the results, as without --report
    page = check_self_contained((tmp_path / "e.html").read_text())
    assert len(page.rows) == 1 and page.rows[0]["data-group"] == "videos"
    assert "red tick" in (tmp_path / "e.html").read_text()

    (tmp_path / "afile").write_text("x")
    for bad, says in [(tmp_path, "is a folder, not a file"), (tmp_path / "afile" / "e.html", "is a file, not a folder")]:
        r = run("eval", tmp_path / "still.mp4", "--ref", astronaut, "--report", bad)
        assert r.exit_code == 1 and says in r.stderr and "Traceback" not in r.stderr and r.stdout == ""

    monkeypatch.setenv("PV_HOME", str(home))
    r = run("report", "nobody", "-o", tmp_path / "n.html")
    assert r.exit_code == 1 and "no identity named 'nobody'" in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr
    r = run("report", "alice", "-o", tmp_path / "afile" / "a.html")
    assert r.exit_code == 1 and "is a file, not a folder" in r.stderr
    r = run("report", "alice", "-o", tmp_path)
    assert r.exit_code == 1 and "is a folder, not a file" in r.stderr


def test_a_failed_report_leaves_the_old_file_and_no_partial_one(tmp_path, home, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(home))
    out = tmp_path / "alice.html"
    out.write_text("old report")

    import pvcli.store as store

    real = store.atomic_write_file

    def full_disk(path, write, suffix=".tmp"):
        def half(tmp):
            tmp.write_bytes(b"<!DOCTYPE html><html>")  # part of the page, then the disk is full
            raise OSError(28, "No space left on device")

        return real(path, half, suffix)

    monkeypatch.setattr(store, "atomic_write_file", full_disk)
    r = run("report", "alice", "-o", out)
    assert r.exit_code == 1 and "the disk is full" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["alice.html"]


def test_report_needs_no_tuning_run_and_prints_only_the_path(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    r = run("report", "alice")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "alice.html\n" and (tmp_path / "alice.html").is_file()


CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  var out = {images: images.length, broken: broken, rows: document.querySelectorAll("#clips tr.clip").length};
  var th = document.querySelector('#clips th[data-key="motion_magnitude"]');
  if (th) {
    function order() {
      return Array.prototype.map.call(document.querySelectorAll('#clips tbody'), function (b) {
        return Number(b.querySelector('[data-key="motion_magnitude"]').getAttribute("data-v")); });
    }
    th.click(); out.ascending = order();
    th.click(); out.descending = order();
  }
  var pre = document.createElement("pre");
  pre.id = "pv-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body>"""


def render(page_path, tmp_path) -> dict:
    """Open the page in headless Chromium with a check script added; what the script found."""
    return chromium_probe(page_path, CHECK, "pv-check", tmp_path, 10000)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_both_reports_render_in_headless_chromium(reports, tmp_path):
    identity = render(reports["dir"] / "carol.html", tmp_path)
    assert identity["images"] == reports["identity"]["images"] and identity["broken"] == 0
    evaluation = render(reports["dir"] / "eval.html", tmp_path)
    assert evaluation["broken"] == 0 and evaluation["images"] >= 8 and evaluation["rows"] == 4
    assert len(set(evaluation["ascending"])) == 2  # the two pairs differ: the click reorders them
    assert evaluation["ascending"] == sorted(evaluation["ascending"])
    assert evaluation["descending"] == sorted(evaluation["descending"], reverse=True)
