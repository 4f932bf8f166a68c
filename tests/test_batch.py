"""A working day of generation: many prompts and seeds in one model load (stdin, files), results
streamed, output formats by suffix, long clips past the motion window, video-to-video."""

import json

import numpy as np
import pytest
from conftest import run

from pvcli.video import read_frames, read_metadata, write_mp4


@pytest.fixture(scope="module")
def home(alice_home):
    return alice_home


@pytest.fixture(autouse=True)
def _home(home, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(home))


def test_stdin_prompts_and_seeds_render_in_one_model_load(tmp_path):
    lines = "\n".join(["surfing at sunset", "# a comment", "",
                       json.dumps({"prompt": "dancing", "seed": 9, "negative": "blurry",
                                   "output": str(tmp_path / "dance.gif")}),
                       "reading a book"]) + "\n"
    r = run("generate", "alice", "-", "--frames", "4", "--seed", "1", "--seed", "2",
            "-o", tmp_path / "{index}_{slug}_s{seed}.mp4", input=lines)
    assert r.exit_code == 0, r.stderr
    paths = r.stdout.split()
    assert paths == [str(tmp_path / "0_surfing-at-sunset_s1.mp4"), str(tmp_path / "1_surfing-at-sunset_s2.mp4"),
                     str(tmp_path / "dance.gif"), str(tmp_path / "3_reading-a-book_s1.mp4"),
                     str(tmp_path / "4_reading-a-book_s2.mp4")]
    assert r.stderr.count("loading backbone") == 1  # one model load for the whole batch
    meta = read_metadata(tmp_path / "dance.gif")
    assert meta["seed"] == 9 and meta["negative_prompt"] == "blurry" and meta["prompt"] == "sks person, dancing"
    assert read_metadata(paths[1])["seed"] == 2
    a, b = read_frames(paths[0]), read_frames(paths[1])
    assert a.shape == (4, 64, 64, 3) and not np.array_equal(a, b)


def test_prompts_file_num_and_json_records(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("surfing\nclimbing a rock wall\n")
    r = run("generate", "alice", "--prompts", prompts, "--num", "2", "--seed", "5", "--frames", "4", "--json",
            "-o", tmp_path / "{slug}_{seed}.mp4")
    assert r.exit_code == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(rec["prompt"], rec["seed"]) for rec in records] == [
        ("sks person, surfing", 5), ("sks person, surfing", 6),
        ("sks person, climbing a rock wall", 5), ("sks person, climbing a rock wall", 6)]
    assert all((tmp_path / rec["path"]).is_file() for rec in records)


def test_results_stream_as_each_clip_is_written(tmp_path):
    """A clip is yielded (and printed) before the next prompt is even read."""
    import pvcli as pv

    read = []

    def prompts():
        for p in ("one", "two", "three"):
            read.append(p)
            yield p

    clips = pv.Identity.load("alice").generate_many(prompts(), output=tmp_path / "{slug}.mp4", frames=4)
    first = next(clips)
    assert first.path == tmp_path / "one.mp4" and first.path.is_file() and read == ["one"]
    assert [c.path.name for c in clips] == ["two.mp4", "three.mp4"]


@pytest.mark.parametrize("name", ["clip.gif", "clip.webp", "frames"])
def test_output_formats_by_suffix_carry_frames_and_metadata(tmp_path, name, astronaut):
    out = tmp_path / name
    r = run("generate", "alice", "surfing", "-o", out, "--frames", "4", "--seed", "3", "--fps", "4")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    frames = read_frames(out)
    assert frames.shape == (4, 64, 64, 3)
    meta = read_metadata(out)
    assert meta["seed"] == 3 and meta["identity"] == "alice" and meta["fps"] == 4 and meta["pv_version"]
    if name == "frames":
        assert sorted(p.name for p in out.iterdir()) == [f"frame_0000{i}.png" for i in range(4)]
    r = run("eval", out, "--ref", astronaut, "--no-face", "center", "--scorer", "clip-tiny", "--json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["videos"][0]
    assert row["frames"] == 4 and row["prompt"] == "sks person, surfing"  # pv eval reads the format and its record
    if name != "clip.gif":  # PNG frames and WebP are lossless: exactly the rendered clip (GIF has 256 colours)
        import pvcli as pv

        assert np.array_equal(frames, pv.Identity.load("alice").generate("surfing", frames=4, seed=3).frames)


def test_long_clip_past_the_motion_window_and_the_model_is_unchanged_after(tmp_path):
    import pvcli as pv

    identity = pv.Identity.load("alice", overrides=["generate.context_length=16", "generate.context_stride=8"])
    short = identity.generate("surfing", frames=8).frames
    long = identity.generate("surfing", frames=40, output=tmp_path / "long.mp4")  # FreeNoise on the same model...
    assert long.frames.shape == read_frames(tmp_path / "long.mp4").shape == (40, 64, 64, 3)
    assert np.array_equal(identity.generate("surfing", frames=8).frames, short)  # ...leaves it as it was


def test_video_to_video_restyles_a_clip_with_the_identity(tmp_path, astronaut):
    import cv2

    from pvcli.images import load_image

    img = cv2.resize(load_image(astronaut), (96, 96))
    drive = tmp_path / "drive.mp4"
    write_mp4(np.stack([np.roll(img, 3 * k, axis=1) for k in range(10)]), drive, 8)
    out, plain = tmp_path / "astro.mp4", tmp_path / "plain.mp4"
    r = run("generate", "alice", "as an astronaut", "--video", drive, "--strength", "0.75", "--frames", "6",
            "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["video"] == {"source": str(drive), "strength": 0.75} and read_frames(out).shape == (6, 64, 64, 3)
    assert run("generate", "alice", "as an astronaut", "--frames", "6", "-o", plain).exit_code == 0
    assert np.abs(read_frames(out).astype(int) - read_frames(plain).astype(int)).max() > 10
    base = tmp_path / "base.mp4"
    r = run("generate", "alice", "as an astronaut", "--video", drive, "--strength", "0.75", "--frames", "6", "-o", base,
            "--no-adapter")
    assert r.exit_code == 0 and not np.array_equal(read_frames(out), read_frames(base))  # the identity acts
    both = tmp_path / "both.mp4"
    r = run("generate", "alice", "as an astronaut", "--video", drive, "--frames", "6", "-o", both,
            "--control", f"canny={drive}")
    assert r.exit_code == 0, r.stderr  # video-to-video with ControlNet


def test_video_to_video_gates_the_identity_over_the_timesteps_it_was_tuned_on(tmp_path, astronaut):
    """An identity tuned with the paper's last quarter of 10 steps acts at those 3 timesteps of the
    full schedule; video-to-video runs only the schedule's tail (strength), and the identity acts in
    the part of that tail inside its window: all 3 at strength 0.6 (6 steps), both at 0.2 (2 steps).
    Counting the quarter over the steps run instead (2 and 1) adapts the wrong noise levels."""
    import cv2

    from pvcli.api import make_context
    from pvcli.engine.adapter import ADAPTER_NAME, lora_layers
    from pvcli.images import load_image
    from pvcli.jobs.generate import IdentityRenderer, identity_settings

    drive = tmp_path / "drive.mp4"
    write_mp4(np.stack([cv2.resize(load_image(astronaut), (64, 64))] * 4), drive, 8)
    ctx = make_context()
    renderer = IdentityRenderer(ctx, "alice", identity_settings(ctx, "alice"))
    renderer.fraction = 0.25  # as recorded by a tune with adapter.active_fraction=0.25
    renderer.gate = None  # by an older pv, which recorded no noise level (test_gating covers the level's path)
    unet = renderer.backbone.denoiser
    layer = next(m for _, m in lora_layers(unet))
    seen = []
    unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        (int(args[1] if len(args) > 1 else kwargs["timestep"]), layer.scaling[ADAPTER_NAME] != 0)), with_kwargs=True)
    full = renderer.backbone.new_scheduler()
    full.set_timesteps(10)
    window = [int(t) for t in full.timesteps[-3:]]  # adapted_steps(10, 0.25): the tuned noise levels
    g = renderer.settings.generate
    for strength, run_steps in ((0.6, 6), (0.2, 2)):
        seen.clear()
        renderer.render("surfing", generate=type(g)(**{**g.__dict__, "frames": 4, "steps": 10, "strength": strength}),
                        video=drive)
        assert [t for t, _ in seen] == [int(t) for t in full.timesteps[-run_steps:]]  # the schedule's tail
        assert [t for t, active in seen if active] == window[-run_steps:], strength


def _error(r):
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


def test_batch_input_errors_are_one_line(tmp_path):
    assert "-o names one file" in _error(run("generate", "alice", "x", "--seed", "1", "--seed", "2",
                                             "-o", tmp_path / "one.mp4"))
    assert "stdin line 1 is not valid JSON" in _error(run("generate", "alice", "-", "--frames", "4", "-o",
                                                         tmp_path / "{index}.mp4", input="{broken\nfine\n"))
    r = run("generate", "alice", "-", "--frames", "4", "-o", tmp_path / "{index}.mp4", input="fine\n{broken\n")
    assert r.exit_code == 1 and "stdin line 2 is not valid JSON" in r.stderr
    assert r.stdout.split() == [str(tmp_path / "0.mp4")] and (tmp_path / "0.mp4").is_file()  # done work is kept
    assert "needs a \"prompt\"" in _error(run("generate", "alice", "-", "-o", tmp_path / "{index}.mp4",
                                              input='{"seed": 1}\n'))
    assert "not both" in _error(run("generate", "alice", "x", "--prompts", tmp_path / "p.txt"))
    assert "needs a prompt" in _error(run("generate", "alice"))
    assert "bad -o template" in _error(run("generate", "alice", "-", "-o", tmp_path / "{nope}.mp4", input="x\n"))
    assert "generate.strength must be between" in _error(run("generate", "alice", "x", "--video", tmp_path / "v.mp4",
                                                            "--strength", "1.5"))
    assert "not found" in _error(run("generate", "alice", "x", "--video", tmp_path / "v.mp4", "-o", tmp_path / "o.mp4"))
    assert not (tmp_path / "o.mp4").exists()
