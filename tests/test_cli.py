"""`pv` end to end through the real commands: tiny backbone, real FaceNet, real photo."""

import json
import subprocess
import sys

import pytest
from conftest import NO_HELD_OUT, run
from typer.testing import CliRunner

from pvcli.cli import create_app
from pvcli.video import read_frames, read_metadata


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, astronaut):
    """One identity tuned through the CLI, shared by the module (PV_HOME set per test)."""
    home = tmp_path_factory.mktemp("home")
    r = run("tune", astronaut, "--name", "alice", "--profile", "tiny", "--steps", "2", "--json",
            "--set", "tune.held_out=1", env={"PV_HOME": str(home)})
    assert r.exit_code == 0, r.stderr
    return home, json.loads(r.stdout)


def test_tune_writes_a_complete_identity(tuned):
    home, info = tuned
    folder = home / "identities" / "alice"
    assert info["name"] == "alice" and info["path"] == str(folder)
    for f in ("adapter.safetensors", "reference.safetensors", "config.yaml", "identity.json", "refs/face_0.png"):
        assert (folder / f).is_file(), f
    from safetensors import safe_open

    with safe_open(str(folder / "adapter.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["backbone"] == "animatediff-tiny" and meta["encoder"] == "facenet"
    assert meta["rank"] == "16" and meta["targets"] == "spatial" and meta["steps"] == "2"
    assert json.loads(meta["lora_adapter_metadata"])["r"] == 16
    assert info["adapter_layers"] == 96
    assert info["held_out_id_sim_before"] is not None and info["held_out_id_sim_after"] is not None
    assert not [p for p in (home / "identities").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_generate_writes_mp4_with_asked_frames_and_metadata(tuned, tmp_path, monkeypatch):
    home, _ = tuned
    monkeypatch.setenv("PV_HOME", str(home))
    out = tmp_path / "clip.mp4"
    r = run("generate", "alice", "surfing at sunset", "-o", out, "--frames", "6", "--seed", "5", "--fps", "4")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)  # stdout carries only the result
    assert read_frames(out).shape == (6, 64, 64, 3)
    meta = read_metadata(out)
    assert meta["seed"] == 5 and meta["prompt"] == "sks person, surfing at sunset" and meta["fps"] == 4

    r = run("generate", "alice", "surfing at sunset", "-o", tmp_path / "off.mp4", "--frames", "6", "--seed", "5",
            "--no-adapter", "--json")
    rec = json.loads(r.stdout)
    assert rec["adapter_scale"] == 0.0 and rec["frames"] == 6


def test_list_show_rm(tuned, monkeypatch):
    home, _ = tuned
    monkeypatch.setenv("PV_HOME", str(home))
    assert run("list").stdout.split() == ["alice"]
    assert json.loads(run("list", "--json").stdout)[0]["name"] == "alice"
    assert json.loads(run("show", "alice", "--json").stdout)["backbone"] == "animatediff-tiny"
    r = run("rm", "alice")  # no tty and no --yes: refuse
    assert r.exit_code == 1 and "--yes" in r.stderr
    assert (home / "identities" / "alice").exists()


def test_rm_with_yes_deletes(tuned, tmp_path, monkeypatch):
    import shutil

    home = tmp_path / "copy"
    shutil.copytree(tuned[0], home)
    monkeypatch.setenv("PV_HOME", str(home))
    assert run("rm", "bob", "--yes").exit_code == 1
    r = run("rm", "alice", "--yes")
    assert r.exit_code == 0 and not (home / "identities" / "alice").exists()
    assert run("list", "--json").stdout.strip() == "[]"


def _error(r, code=1):
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


def test_bad_inputs_give_one_clear_error(tuned, astronaut, photo_dir, monkeypatch, tmp_path):
    home, _ = tuned
    monkeypatch.setenv("PV_HOME", str(home))
    assert "no identity named 'bob'" in _error(run("generate", "bob", "x"))
    assert "already exists" in _error(run("tune", astronaut, "--name", "alice", "--profile", "tiny"))
    assert "invalid identity name" in _error(run("tune", astronaut, "--name", "../evil", "--profile", "tiny"))
    assert "photo not found" in _error(run("tune", tmp_path / "nope.jpg", "--name", "x", "--profile", "tiny"))
    assert "no face found in" in _error(run("tune", photo_dir / "blank.png", "--name", "x", "--profile", "tiny",
                                           "--steps", "1"))
    assert "unknown setting 'tune.lrr'" in _error(run("tune", astronaut, "--name", "x", "--profile", "tiny",
                                                      "--set", "tune.lrr=1"))
    assert "multiple of 8" in _error(run("generate", "alice", "x", "--height", "60"))
    assert "exceeds the motion module's window of 32" in _error(run("generate", "alice", "x", "--frames", "40", "-o",
                                                                    tmp_path / "a.mp4", "--set",
                                                                    "generate.context_length=40"))
    assert "must be an .mp4, .gif or .webp" in _error(run("generate", "alice", "x", "-o", tmp_path / "a.avi"))
    assert "no profile 'nope'" in _error(run("tune", astronaut, "--name", "x", "--profile", "nope"))
    assert "was tuned on backbone 'animatediff-tiny'" in _error(run("generate", "alice", "x", "--profile", "animatediff"))
    assert not (home / "identities" / "x").exists()


def test_default_profile_offline_names_the_tiny_profile(astronaut, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(run("tune", astronaut, "--name", "real"))
    assert "cannot load" in err and "offline" in err and "--profile tiny" in err


def test_help_and_plugins_do_not_import_torch():
    code = ("import sys; from pvcli.cli import create_app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(create_app(), ['plugins', '--json']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(create_app(), ['--help']); assert r.exit_code == 0; "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_console_script_and_module_entry_work():
    out = subprocess.run([sys.executable, "-m", "pvcli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip()
    out = subprocess.run(["pv", "profiles", "--json"], capture_output=True, text=True)
    assert {p["name"] for p in json.loads(out.stdout)} >= {"tiny", "animatediff"}


def test_out_of_memory_is_one_line_naming_what_lowers_memory(astronaut, monkeypatch):
    import torch

    from pvcli.engine.tune import Tuner

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Tuner, "step", oom)
    r = CliRunner().invoke(create_app(), ["tune", str(astronaut), "--name", "alice", "--profile", "tiny", *NO_HELD_OUT, "--quiet"])
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert "out of GPU memory while tuning" in r.stderr and "tune.gradient_checkpointing=true" in r.stderr


def test_the_memory_hint_names_what_lowers_memory_on_the_model_that_ran_out(astronaut, tuned, monkeypatch, tmp_path):
    """The model-specific part of the hint: the frame rule and tune.supervised_window where the model
    has them (a causal decoder: only the clip's first latent frames are decoded under gradient), long
    clips' context_length where the backbone has windows, and a half-precision dtype only for a model
    that runs in float32 (never bf16 -> fp16 to a model in bf16)."""
    import torch
    from pv_animatediff.backbone import make_tiny
    from pv_hunyuanvideo.backbone import make_tiny_hunyuanvideo
    from pv_wan.backbone import make_tiny_wan

    from pvcli.engine.tune import Tuner
    from pvcli.jobs.generate import IdentityRenderer
    from pvcli.jobs.resources import model_memory_hint
    from pvcli.settings import resolve

    wan_tune, hy_tune, ad_generate = (resolve("tiny-wan")[1].tune, resolve("tiny-hunyuan")[1].tune,
                                      resolve("tiny")[1].generate)
    wan = model_memory_hint("tune", make_tiny_wan({"dtype": "bfloat16"}), wan_tune)
    assert wan == ("tune.frames in steps of 4 (this model renders 4k+1 frames: 5 instead of 9), --set "
                   "tune.supervised_window=5 (the losses read, and the decoder decodes under gradient, only the clip's "
                   "first 5 frames)")
    hy = model_memory_hint("tune", make_tiny_hunyuanvideo(), hy_tune)  # its decoder sees the whole clip
    assert "4k+1" in hy and "supervised_window" not in hy and "dtype=float16 or bfloat16" in hy
    ad = model_memory_hint("generate", make_tiny(), ad_generate)
    assert ad == "long clips: --set generate.context_length=16, --set backbone.options.dtype=float16 or bfloat16 " \
                 "(the model runs in float32)"
    assert model_memory_hint("generate", None) == ""  # out of memory before the model loaded

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Tuner, "step", oom)
    r = run("tune", astronaut, "--name", "w", "--profile", "tiny-wan", *NO_HELD_OUT, "--set",
            "backbone.options.dtype=bfloat16")
    assert r.exit_code == 1 and "Traceback" not in r.stderr and "out of GPU memory while tuning" in r.stderr
    assert f"on this model: {wan}" in r.stderr and "float16" not in r.stderr.replace("bfloat16", "")
    monkeypatch.setattr(IdentityRenderer, "render", oom)
    monkeypatch.setenv("PV_HOME", str(tuned[0]))
    r = run("generate", "alice", "surfing", "-o", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "out of GPU memory while generating" in r.stderr and f"on this model: {ad}" in r.stderr


def test_a_tune_that_fails_before_any_checkpoint_leaves_no_run_behind(astronaut):
    app = create_app()
    bad = ["tune", str(astronaut), "--name", "alice", "--profile", "tiny", *NO_HELD_OUT, "--quiet", "--set", "tune.trajectory_pool=4"]
    r = CliRunner().invoke(app, bad)
    assert r.exit_code == 1 and "trajectory_pool" in r.stderr and "Traceback" not in r.stderr
    r = CliRunner().invoke(app, ["tune", "--resume", "alice", "--quiet"])  # nothing half-made to resume or to block
    assert r.exit_code == 1 and "no interrupted run named 'alice'" in r.stderr


def test_held_out_zero_skips_the_held_out_clips_and_says_so(astronaut, pv_home, monkeypatch):
    from pvcli.engine.tune import Tuner

    measured = []
    monkeypatch.setattr(Tuner, "held_out_similarity", lambda self, *a, **k: measured.append(a) or 0.0)
    r = run("tune", astronaut, "--name", "quick", "--profile", "tiny", "--steps", "0", *NO_HELD_OUT)
    assert r.exit_code == 0, r.stderr
    assert "held-out ID similarity not measured (tune.held_out=0)" in r.stderr and not measured
    info = json.loads((pv_home / "identities" / "quick" / "identity.json").read_text())
    assert info["held_out_id_sim_before"] is None and info["held_out_id_sim_after"] is None
    r = run("tune", astronaut, "--name", "two", "--profile", "tiny", "--steps", "0", "--set", "tune.held_out=2", "-q")
    assert r.exit_code == 0 and measured == [([1001, 1002],), ([1001, 1002],)]  # before and after, 2 seeds each


def test_the_identity_and_the_summary_say_the_size_held_out_was_measured_at(astronaut, pv_home, monkeypatch):
    """Held-out clips render at the generate settings (here 6 frames in 3 steps; tuning's are 4 in 4):
    identity.json, `pv show` and the summary line name that size; an identity without it still loads."""
    from pvcli.engine.tune import Tuner

    monkeypatch.setattr(Tuner, "held_out_similarity", lambda self, *a, **k: 0.25)
    r = run("tune", astronaut, "--name", "sized", "--profile", "tiny", "--steps", "0", "--set", "tune.held_out=1",
            "--set", "generate.frames=6", "--set", "generate.steps=3")
    assert r.exit_code == 0, r.stderr
    assert "held-out ID similarity (facenet) 0.25 -> 0.25 at 6 frames 64x64, 3 steps" in r.stderr
    path = pv_home / "identities" / "sized" / "identity.json"
    info = json.loads(path.read_text())
    assert info["held_out_at"] == {"frames": 6, "height": 64, "width": 64, "steps": 3}
    shown = run("show", "sized").stdout
    assert "held_out_at: {'frames': 6, 'height': 64, 'steps': 3, 'width': 64}" in shown.splitlines(), shown
    del info["held_out_at"]  # an identity from before the field
    path.write_text(json.dumps(info))
    assert run("show", "sized", "--json").exit_code == 0
