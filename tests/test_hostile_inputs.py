"""Hostile inputs on the newest surfaces (issue 30's sweep): files of a few bytes that claim huge
images or clips, LoRAs that would do nothing or poison the clip, bench/gpu.py's arguments, and
the Wan / HunyuanVideo / VACE / tracker / judge / export flags given the ways users get them
wrong. Each ends in one line naming the input and its fault, exit 1, no traceback, nothing
written, and, where the input can be checked without a model, before any model loads (the
`loads` fixture of test_bad_inputs records every model built)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import pytest
from conftest import load_bench_gpu, run
from test_bad_inputs import MODELS, loads, one_error  # noqa: F401 (loads: a fixture)

GEN = ("generate", "alice", "a walk", "--frames", "2", "--steps", "1", "-q")


@pytest.fixture
def built(loads):  # noqa: F811 (the imported fixture, requested)
    """The kinds of plugin objects built during the test (test_bad_inputs' `loads`)."""
    return loads


def no_model_loaded(built) -> None:
    assert not [k for k in built if k in MODELS], built


# --------------------------------------------------------------------------- image bombs


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (IHDR, CRCs right) for an RGB image of that size, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame claim that size (29 bytes)."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b","
            + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A baseline JPEG's frame header (SOF0) and scan header for that size, then a few bytes."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return (b"\xff\xd8\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xda" + struct.pack(">H", 12)
            + b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00" + b"\x00" * 16 + b"\xff\xd9")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Files of 29 to 69 bytes that claim a 60000 x 50000 image (3 gigapixels, 9 GB as RGB)."""
    d = tmp_path_factory.mktemp("bombs")
    (d / "bomb.png").write_bytes(png_claiming(60000, 50000))
    (d / "bomb.jpg").write_bytes(jpeg_claiming(60000, 50000))
    (d / "bomb.gif").write_bytes(gif_claiming(60000, 50000))
    (d / "frames").mkdir()
    (d / "frames" / "f_000.png").write_bytes(png_claiming(60000, 50000))
    return d


BOMB = ["claims a 60000 x 50000 image", "3.0 gigapixels", "limit of 67.1 megapixels"]

BOMB_CASES = [
    ("video-png", ["generate", *GEN[1:], "--video", "{b}/bomb.png"], ["--video {b}/bomb.png", *BOMB]),
    ("video-gif", ["generate", *GEN[1:], "--video", "{b}/bomb.gif"], ["--video {b}/bomb.gif", *BOMB]),
    ("video-frames-folder", ["generate", *GEN[1:], "--video", "{b}/frames"], ["f_000.png", *BOMB]),
    ("control-jpeg", ["generate", *GEN[1:], "--control", "canny={b}/bomb.jpg"], ["canny={b}/bomb.jpg", *BOMB]),
    ("control-raw-png", ["generate", *GEN[1:], "--control-raw", "canny={b}/bomb.png"], ["canny={b}/bomb.png", *BOMB]),
    ("eval-ref", ["eval", "alice", "--ref", "{b}/bomb.jpg", "-q"], ["photo {b}/bomb.jpg", *BOMB]),
    ("eval-video", ["eval", "{b}/bomb.gif", "--ref", "alice", "-q"], ["{b}/bomb.gif", *BOMB]),
    ("tune-photo", ["tune", "{b}/bomb.png", "--name", "bob", "--profile", "tiny", "-q"], ["photo {b}/bomb.png", *BOMB]),
]


@pytest.fixture(scope="module")
def home(alice_home):
    return alice_home


@pytest.mark.parametrize("args,expected", [c[1:] for c in BOMB_CASES], ids=[c[0] for c in BOMB_CASES])
def test_an_image_bomb_is_refused_from_its_header_before_any_model_loads(home, bombs, built, monkeypatch, tmp_path,
                                                                       args, expected):
    """Before: OpenCV raised out of its decoder (a traceback) or allocated the claimed size."""
    monkeypatch.setenv("PV_HOME", str(home))
    fill = [str(a).replace("{b}", str(bombs)) for a in args]
    out = ["-o", tmp_path / "clip.mp4"] if fill[0] == "generate" else []
    one_error(run(*fill, *out), *[e.replace("{b}", str(bombs)) for e in expected])
    no_model_loaded(built)
    assert not list(tmp_path.iterdir()) and not (home / "identities" / "bob").exists()


def _bundle_with(src, dst, member: str, data: bytes):
    """A copy of bundle `src` with `member` replaced by `data` (its manifest hash updated)."""
    import hashlib

    with tarfile.open(src) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members[member] = data
    manifest = json.loads(members["manifest.json"])
    manifest["files"][member]["sha256"] = hashlib.sha256(data).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(dst, "w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return dst


def test_a_bundle_whose_face_image_is_a_bomb_is_refused_and_nothing_imported(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(home))
    good = tmp_path / "alice.pvid"
    assert run("export", "alice", "--bundle", good).exit_code == 0
    bad = _bundle_with(good, tmp_path / "bomb.pvid", "refs/face_0.png", png_claiming(60000, 50000))
    one_error(run("import", bad, "--name", "bob"), str(bad), "refs/face_0.png", *BOMB)
    assert not (home / "identities" / "bob").exists()


def test_a_clip_over_the_pixel_limit_is_refused_from_its_metadata(home, tmp_path, built, monkeypatch):
    """The frame size and count come from the container (PyAV, nothing decoded); the limit and
    the clip's numbers are in the line. The limit is lowered here to a 9-frame 96x64 clip's size."""
    import numpy as np

    import pvcli.images
    from pvcli.video import video_info, write_video

    clip = write_video(np.zeros((9, 64, 96, 3), np.uint8), tmp_path / "long.mp4", 8)
    info = video_info(clip)
    assert (info.width, info.height, info.frames, info.fps) == (96, 64, 9, 8.0)
    monkeypatch.setattr(pvcli.images, "MAX_CLIP_PIXELS", 8 * 96 * 64)
    monkeypatch.setenv("PV_HOME", str(home))
    out = tmp_path / "out"
    out.mkdir()
    one_error(run(*GEN, "-o", out / "clip.mp4", "--video", clip), f"--video {clip}", "claims 9 frames of 96 x 64",
              "per clip")
    one_error(run(*GEN, "-o", out / "clip.mp4", "--control", f"canny={clip}"), f"canny={clip}", "claims 9 frames")
    no_model_loaded(built)
    monkeypatch.setattr(pvcli.images, "MAX_CLIP_PIXELS", 2**30)
    monkeypatch.setattr(pvcli.images, "MAX_PIXELS", 95 * 64)  # one frame over the per-frame limit
    one_error(run("eval", clip, "--ref", "alice", "-q"), str(clip), "claims a 96 x 64 image", "per image")
    assert not list(out.iterdir())


def test_a_video_cut_short_is_refused_before_any_model_loads(home, tmp_path, built, monkeypatch):
    """Its header lists more frames than the file holds: counted from the packets, not decoded."""
    import numpy as np

    from pvcli.video import write_video

    rng = np.random.default_rng(0)
    whole = write_video((rng.random((9, 64, 96, 3)) * 255).astype(np.uint8), tmp_path / "whole.mp4", 8)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    monkeypatch.setenv("PV_HOME", str(home))
    one_error(run(*GEN, "-o", tmp_path / "clip.mp4", "--video", cut), f"--video {cut}", "truncated",
              "lists 9 frames")
    no_model_loaded(built)
    assert not (tmp_path / "clip.mp4").exists()


def test_video_metadata_is_read_by_a_library_not_from_ffmpeg_text(tmp_path):
    """The record pv writes into an .mp4 comes back through PyAV's container tags (issue 33):
    ffmpeg is never run to print them (its ffmetadata escaping was parsed by hand before)."""
    import subprocess
    from unittest import mock

    import numpy as np

    from pvcli.video import read_metadata, write_video

    record = {"prompt": "a=b; #c \\ d\nnew line", "seed": 3}
    clip = write_video(np.zeros((5, 32, 32, 3), np.uint8), tmp_path / "r.mp4", 8, metadata=record)
    with mock.patch.object(subprocess, "run", side_effect=AssertionError("ffmpeg run to read metadata")), \
            mock.patch.object(subprocess, "Popen", side_effect=AssertionError("ffmpeg run to read metadata")):
        assert read_metadata(clip) == record


# --------------------------------------------------------------------------- Wan: refused before loading


@pytest.fixture(scope="module")
def wan_home(tmp_path_factory, astronaut):
    """`w` (one expert) and `w2` (two experts, as Wan 2.2 A14B) tuned on tiny-wan, 1 step each."""
    from conftest import NO_HELD_OUT, tune_home

    home = tmp_path_factory.mktemp("wanhome")
    tune_home(home, astronaut, "w", "tiny-wan", *NO_HELD_OUT, "--steps", "1")
    tune_home(home, astronaut, "w2", "tiny-wan", *NO_HELD_OUT, "--steps", "1", "--set", "backbone.options.experts=2")
    return home


WAN_CASES = [
    ("a14b-video", ["w2", "--video", "{photo}"], ["--video is not available on Wan 2.2 (A14B, two experts)"]),
    ("a14b-control", ["w2", "--control", "canny={photo}"], ["--control is not available", "two experts"]),
    ("a14b-lora", ["w2", "--lora", "{style}"], ["--lora", "Wan 2.2 A14B's two experts"]),
    ("video-with-control", ["w", "--video", "{photo}", "--control", "canny={photo}"], ["--video and --control"]),
    ("two-controls", ["w", "--control", "canny={photo}", "--control", "depth={photo}"], ["one control video, got 2"]),
    ("control-model", ["w", "--control", "canny={photo}", "--control-model", "canny=tiny"],
     ["--control-model canny=", "brings its own control model"]),
    ("no-vace-model", ["w", "--control", "canny={photo}", "--set", "backbone.options.vace_model="],
     ["--control: no VACE model is known for tiny-wan"]),
    ("frames-not-4k+1", ["w", "--frames", "4"], ["--frames", "4"]),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in WAN_CASES], ids=[c[0] for c in WAN_CASES])
def test_what_a_wan_model_cannot_take_is_refused_before_it_loads(wan_home, astronaut, built, monkeypatch, tmp_path,
                                                                 args, expected):
    """Before: Wan 2.2's --video / --control / --lora and --video with --control were refused only
    once the model had loaded (minutes on a real one)."""
    import torch
    from safetensors.torch import save_file

    style = tmp_path / "style.safetensors"
    layer = "transformer.blocks.0.attn2.to_q"
    save_file({f"{layer}.lora_A.weight": torch.zeros(4, 64), f"{layer}.lora_B.weight": torch.zeros(64, 4)}, str(style))
    monkeypatch.setenv("PV_HOME", str(wan_home))
    fill = [a.replace("{photo}", str(astronaut)).replace("{style}", str(style)) for a in args]
    one_error(run("generate", fill[0], "a walk", "--steps", "1", "-q", "-o", tmp_path / "clip.mp4", *fill[1:]),
              *expected)
    no_model_loaded(built)
    assert not (tmp_path / "clip.mp4").exists()


VIDEO, CONTROL, LORA = ("video", {"source": "moves.mp4"}), ("controlnet", {"type": "pose"}), ("lora", {"source": "s"})


@pytest.mark.parametrize("info,asked,expected", [
    ({"architecture": "wan2.2-ti2v-5b"}, [VIDEO], "--video is not available on Wan 2.2 (TI2V-5B)"),
    ({"architecture": "wan2.2-ti2v-5b", "base_model": "Wan-AI/Wan2.2-TI2V-5B-Diffusers"}, [CONTROL],
     "no VACE model is known for Wan-AI/Wan2.2-TI2V-5B-Diffusers"),
    ({"architecture": "wan2.2-a14b", "expert": "low-noise (transformer_2)"}, [LORA], "two experts"),
])
def test_real_wan_22_models_are_refused_from_what_the_identity_recorded(info, asked, expected):
    """The real `wan` backbone's check reads what make_wan records of a Wan 2.2 model."""
    from pv_wan import refuse_wan

    from pvcli.errors import PVError

    options = {"model": info.get("base_model", "Wan-AI/Wan2.2-T2V-A14B-Diffusers")}
    with pytest.raises(PVError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        refuse_wan(info, options, asked)
    refuse_wan({}, {}, [CONTROL, LORA])  # Wan 2.1 1.3B (the default model): its VACE model is known
    if "expert" not in info:  # TI2V-5B with a VACE model named: --control and --lora go through
        refuse_wan(info, {**options, "vace_model": "my/vace"}, [CONTROL, LORA])


# --------------------------------------------------------------------------- style LoRAs that do nothing or poison


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """LoRA files for the tiny UNet (32 wide) and for Wan, each named for what is wrong with it."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("loras")
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"

    def pair(layer, width, a=0.1):
        return {f"{layer}.lora_A.weight": torch.full((4, width), a), f"{layer}.lora_B.weight": torch.full((width, 4), 0.1)}

    save_file({**pair(q, 32, float("nan")), **pair(k, 32)}, str(d / "nan.safetensors"))
    save_file({**pair(q, 32), **pair(k, 32, float("inf"))}, str(d / "inf.safetensors"))
    # ComfyUI's native Wan keys: a Wan LoRA given to an SD identity
    save_file(pair("diffusion_model.blocks.0.cross_attn.q", 64), str(d / "wan_comfy.safetensors"))
    # keys that no loader knows: kohya-style names of layers in no model
    save_file({"lora_te9_nothing_here.lora_down.weight": torch.zeros(4, 32),
               "lora_te9_nothing_here.lora_up.weight": torch.zeros(32, 4)}, str(d / "nowhere.safetensors"))
    # one layer the tiny UNet has, and one of the same width it does not (a LoRA for a related model)
    save_file({**pair(q, 32), **pair("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn9.to_q", 32)},
              str(d / "partial.safetensors"))
    # SD 1.x UNet keys given to a Wan identity
    save_file(pair(q, 32), str(d / "sd_on_wan.safetensors"))
    return d


LORA_CASES = [
    ("nan", "alice", "nan.safetensors", ["nan.safetensors", "NaN or infinite", "128 of 128", "clip black"], True),
    ("inf", "alice", "inf.safetensors", ["inf.safetensors", "NaN or infinite", "attn1.to_k.lora_A"], True),
    ("wan-keys-on-sd", "alice", "wan_comfy.safetensors", ["wan_comfy.safetensors", "transformer (DiT)", "SD 1.x"], True),
    ("keys-of-no-model", "alice", "nowhere.safetensors", ["nowhere.safetensors", "matches no layer of animatediff-tiny",
                                                          "would do nothing"], False),
    ("sd-keys-on-wan", "w", "sd_on_wan.safetensors", ["sd_on_wan.safetensors", "wan-tiny"], False),
]


@pytest.mark.parametrize("who,name,expected,before_loading", [c[1:] for c in LORA_CASES], ids=[c[0] for c in LORA_CASES])
def test_a_lora_that_would_poison_the_clip_or_do_nothing_is_refused(home, wan_home, loras, built, monkeypatch, tmp_path,
                                                                     who, name, expected, before_loading):
    """Before: a NaN LoRA rendered a black clip and a LoRA whose keys match nothing rendered the
    plain clip, both with exit 0. NaN and another family's keys are found before any model
    loads; keys of no model at all once the backbone is there to match them against."""
    import shutil

    monkeypatch.setenv("PV_HOME", str(home if who == "alice" else wan_home))
    frames = "2" if who == "alice" else "5"
    r = run("generate", who, "a walk", "--frames", frames, "--steps", "1", "-q", "-o", tmp_path / "clip.mp4",
            "--lora", loras / name)
    one_error(r, *[str(loras / e) if e == name else e for e in expected])
    if before_loading:
        no_model_loaded(built)
    assert not (tmp_path / "clip.mp4").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_lora_that_matches_only_part_of_the_model_warns_with_the_count(home, loras, monkeypatch, tmp_path):
    monkeypatch.setenv("PV_HOME", str(home))
    r = run(*GEN, "-o", tmp_path / "clip.mp4", "--lora", loras / "partial.safetensors")
    assert r.exit_code == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("Warning:")]
    assert len(warned) == 1 and f"{loras}/partial.safetensors: only 1 of its 2 layers match" in warned[0], r.stderr
    assert (tmp_path / "clip.mp4").is_file()


# --------------------------------------------------------------------------- bench/gpu.py


@pytest.fixture
def bench(monkeypatch):
    """bench/gpu.py as a module."""
    return load_bench_gpu(monkeypatch, "pv_bench_gpu_hostile")


@pytest.mark.parametrize("argv,says", [
    (["--budget-s", "nan"], "--budget-s must be 0 (no budget) or more seconds, got nan"),
    (["--budget-s", "inf"], "--budget-s must be 0 (no budget) or more seconds, got inf"),
    (["--budget-s", "-1"], "--budget-s must be 0 (no budget) or more seconds, got -1"),
    (["--budget-s", "soon"], "argument --budget-s: invalid float value: 'soon'"),
    (["--repeats", "many"], "argument --repeats: invalid int value: 'many'"),
    (["--out", "{t}/notes.txt/r.json"], "--out {t}/notes.txt/r.json: cannot write there"),
    (["--out", "{t}/old.json"], "{t}/old.json holds an earlier result; pass --force to replace it, or another --out"),
    (["--out", "{t}/oldmd.json"], "{t}/oldmd.md holds an earlier result"),
    (["--out", "{t}/afolder"], "{t}/afolder is a folder"),
    (["--out", "{t}/r.md"], "give the .json file"),
])
def test_bench_gpu_refuses_bad_numbers_and_outputs_in_one_line_and_keeps_earlier_results(bench, capsys, tmp_path,
                                                                                          argv, says):
    """Before: a NaN or infinite budget was taken, an unwritable --out was a traceback after the
    measuring, and an earlier result was overwritten."""
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "old.json").write_text("earlier")
    (tmp_path / "oldmd.md").write_text("earlier")
    (tmp_path / "afolder").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = [a.replace("{t}", str(tmp_path)) for a in argv]
    out = [] if "--out" in args else ["--out", str(tmp_path / "r.json")]
    assert bench.main(["--device", "cpu", "--tiny", *args, *out]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert says.replace("{t}", str(tmp_path)) in captured.err and "Traceback" not in captured.err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing new, nothing changed


def test_bench_gpu_force_replaces_an_earlier_result(bench, capsys, tmp_path, monkeypatch):
    """--force passes the check (the run then goes on: here it stops at the CUDA check, before writing)."""
    import torch

    (tmp_path / "old.json").write_text("earlier")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--device", "cuda", "--out", str(tmp_path / "old.json"), "--force"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "earlier result" not in err


# --------------------------------------------------------------------------- the sweep of the newest surfaces

# (id, command line ({photo}, {d}: a folder with notes.txt and a folder `afolder`), what the line says);
# `w` is a tiny-wan identity, `w2` a two-expert one, `alice` tiny AnimateDiff; tune cases name `bob`
SWEEP = [
    # Wan / HunyuanVideo profiles and their options
    ("wan-frames-not-4k+1", ["generate", "w", "x", "--frames", "6"], ["--frames 6", "4k+1"]),
    ("hunyuan-frames-not-4k+1", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-hunyuan", "--set",
                                 "tune.frames=6"], ["tune.frames", "6"]),
    ("wan-height-absurd", ["generate", "w", "x", "--height", "99999999"], ["generate.height", "99999999"]),
    ("wan-width-negative", ["generate", "w", "x", "--width", "-64"], ["generate.width", "-64"]),
    ("wan-height-text", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set", "tune.height=tall"],
     ["tune.height", "'tall'"]),
    ("other-family-profile", ["generate", "w", "x", "--profile", "tiny-hunyuan", "--frames", "5"],
     ["'w' was tuned on backbone 'wan-tiny', not 'hunyuanvideo-tiny'"]),
    ("wan-guidance-inf", ["generate", "w", "x", "--guidance", "inf"], ["generate.guidance_scale", "inf"]),
    # VACE --control
    ("vace-scale-nan", ["generate", "w", "x", "--control", "canny={photo}", "--control-scale", "nan"], ["scale", "nan"]),
    ("vace-start-after-end", ["generate", "w", "x", "--control", "canny={photo}", "--control-start", "0.5",
                              "--control-end", "0.1"], ["start/end", "0.5/0.1"]),
    ("vace-model-missing", ["generate", "w", "x", "--control", "canny={photo}", "--set",
                            "backbone.options.vace_model={d}/nowhere"], ["vace_model {d}/nowhere: not found"]),
    ("vace-model-a-file", ["generate", "w", "x", "--control", "canny={photo}", "--set",
                           "backbone.options.vace_model={d}/notes.txt"], ["vace_model {d}/notes.txt: is a file"]),
    ("vace-control-text", ["generate", "w", "x", "--control", "canny={d}/notes.txt"], ["canny={d}/notes.txt", "as a video"]),
    # Wan-layout style LoRAs
    ("wan-lora-weight-inf", ["generate", "w", "x", "--lora", "{d}/style.safetensors:inf"], ["weight 'inf'"]),
    ("wan-lora-text", ["generate", "w", "x", "--lora", "{d}/notes.txt"], ["{d}/notes.txt", "not a safetensors file"]),
    ("wan-lora-folder", ["generate", "w", "x", "--lora", "{d}/afolder"], ["{d}/afolder", "no .safetensors"]),
    # tune.supervised_window
    ("window-nan", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set", "tune.supervised_window=nan"],
     ["tune.supervised_window", "'nan'"]),
    ("window-negative", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set",
                         "tune.supervised_window=-3"], ["tune.supervised_window", "-3"]),
    ("window-over-frames", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set",
                            "tune.supervised_window=99"], ["tune.supervised_window (99) cannot exceed tune.frames"]),
    ("window-fraction", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set",
                         "tune.supervised_window=2.5"], ["tune.supervised_window", "2.5"]),
    # backbone options of the new families, checked before the weights
    ("experts-three", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set",
                       "backbone.options.experts=3"], ["backbone.options.experts must be 1 or 2"]),
    ("boundary-ratio-absurd", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set",
                               "backbone.options.experts=2", "--set", "backbone.options.boundary_ratio=7"],
     ["backbone.options.boundary_ratio must be between 0 and 1", "got 7"]),
    ("adapter-experts-one", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set",
                             "backbone.options.adapter_experts=both"],
     ["backbone.options.adapter_experts=both needs a model of two experts"]),
    ("adapter-experts-unknown", ["tune", "{photo}", "--name", "bob", "--profile", "tiny-wan", "--set",
                                 "backbone.options.experts=2", "--set", "backbone.options.adapter_experts=high"],
     ["backbone.options.adapter_experts must be one of low, both, got 'high'"]),
    # ComfyUI exports
    ("comfy-into-a-file", ["export", "w", "--format", "comfy", "-o", "{d}/notes.txt/w.safetensors"],
     ["{d}/notes.txt", "is a file"]),
    ("comfy-suffix", ["export", "w", "--format", "comfy", "-o", "{d}/w.txt"], ["{d}/w.txt", ".safetensors"]),
    ("comfy-into-a-folder", ["export", "w", "--format", "comfy", "-o", "{d}/afolder"], ["{d}/afolder", "is a folder"]),
    ("kohya-of-a-transformer", ["export", "w", "--format", "kohya", "-o", "{d}/w.safetensors"],
     ["--format kohya writes UNet LoRA keys"]),
    ("format-empty", ["export", "w", "--format", "", "-o", "{d}/w.safetensors"], ["unknown export format ''"]),
    # trackers
    ("report-to-unknown", ["tune", "{photo}", "--name", "bob", "--profile", "tiny", "--report-to", "mlflow"],
     ["tune.report_to", "'mlflow'"]),
    ("report-to-empty", ["tune", "{photo}", "--name", "bob", "--profile", "tiny", "--report-to", ""],
     ["tune.report_to", "''"]),
    ("report-to-number", ["tune", "{photo}", "--name", "bob", "--profile", "tiny", "--set", "tune.report_to=5"],
     ["tune.report_to", "5"]),
    # the dlib judge and other encoders of pv eval
    ("judge-twice", ["eval", "alice", "--encoder", "dlib", "--encoder", "dlib"], ["--encoder dlib is given twice"]),
    ("encoder-empty", ["eval", "alice", "--encoder", "facenet", "--encoder", ""], ["unknown encoder ''"]),
    ("judge-unknown", ["eval", "alice", "--encoder", "dlib2"], ["unknown encoder 'dlib2'"]),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in SWEEP], ids=[c[0] for c in SWEEP])
def test_the_newest_surfaces_refuse_a_bad_input_in_one_line_before_any_model_loads(home, wan_home, astronaut, built,
                                                                                   monkeypatch, tmp_path, args, expected):
    """Each case is refused before a model (backbone, encoder, scorer) is built and before
    anything is written; before this sweep, a VACE model path that is missing or a file, a judge
    named twice, an empty encoder name and an absurd boundary ratio got past that point."""
    import shutil

    import torch
    from safetensors.torch import save_file

    # the two homes side by side: alice with w and w2
    both = tmp_path / "home"
    shutil.copytree(home, both)
    for ident in ("w", "w2"):
        shutil.copytree(wan_home / "identities" / ident, both / "identities" / ident)
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    (d / "afolder").mkdir()
    save_file({"transformer.blocks.0.attn2.to_q.lora_A.weight": torch.zeros(4, 64),
               "transformer.blocks.0.attn2.to_q.lora_B.weight": torch.zeros(64, 4)}, str(d / "style.safetensors"))
    monkeypatch.setenv("PV_HOME", str(both))
    fill = [a.replace("{photo}", str(astronaut)).replace("{d}", str(d)) for a in args]
    extra = {"generate": ["--steps", "1", "-o", str(tmp_path / "clip.mp4"), "-q"], "tune": ["--steps", "1", "-q"],
             "eval": ["-q"], "export": []}[fill[0]]
    before = sorted(p.name for p in d.iterdir())
    one_error(run(*fill, *extra), *[e.replace("{d}", str(d)) for e in expected])
    no_model_loaded(built)
    assert not (tmp_path / "clip.mp4").exists() and not (both / "identities" / "bob").exists()
    assert sorted(p.name for p in d.iterdir()) == before
