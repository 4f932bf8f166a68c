"""What a user of a tuning tool expects: Ctrl-C keeps the work, --resume finishes it exactly,
a per-step log, samples during tuning, NaN stops cleanly."""

import json

import torch
from conftest import NO_HELD_OUT, press_ctrl_c_at, run
from safetensors.torch import load_file

TUNE = ("--profile", "tiny", *NO_HELD_OUT, "--steps", "2", "--set", "tune.checkpoint_every=1")


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(astronaut, pv_home, monkeypatch):
    assert run("tune", astronaut, "--name", "straight", *TUNE).exit_code == 0

    release = press_ctrl_c_at(monkeypatch, 1)
    r = run("tune", astronaut, "--name", "alice", *TUNE)
    assert r.exit_code == 130, r.stderr
    assert "interrupted at step 1 of 2" in r.stderr and "pv tune --resume alice" in r.stderr
    assert not (pv_home / "identities" / "alice").exists()  # no half identity
    assert sorted(p.name for p in (pv_home / "runs" / "alice" / "checkpoints").iterdir()) == [
        "step_0000001.safetensors"]

    r = run("tune", astronaut, "--name", "alice", *TUNE)  # a fresh start must not silently drop the run
    assert r.exit_code == 1 and "interrupted run" in r.stderr and "--resume alice" in r.stderr

    release()
    r = run("tune", "--resume", "alice", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["resumed_at"] == 1 and info["steps"] == 2
    assert not (pv_home / "runs" / "alice").exists()

    a = load_file(pv_home / "identities" / "straight" / "adapter.safetensors")
    b = load_file(pv_home / "identities" / "alice" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    log = [json.loads(ln) for ln in (pv_home / "identities" / "alice" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert {"loss", "id_sim", "face_hit_rate", "lr", "seconds", "peak_memory_mb"} <= set(log[0])


def test_rm_deletes_an_interrupted_run(astronaut, pv_home, monkeypatch):
    release = press_ctrl_c_at(monkeypatch, 0)
    assert run("tune", astronaut, "--name", "bob", *TUNE).exit_code == 130
    release()
    assert (pv_home / "runs" / "bob").is_dir()
    r = run("rm", "bob", "--yes")
    assert r.exit_code == 0 and not (pv_home / "runs" / "bob").exists()


def test_resume_needs_an_interrupted_run():
    r = run("tune", "--resume", "ghost")
    assert r.exit_code == 1 and "no interrupted run named 'ghost'" in r.stderr


def test_samples_during_tuning(astronaut, pv_home):
    r = run("tune", astronaut, "--name", "s", "--profile", "tiny", *NO_HELD_OUT, "--steps", "2", "--set", "tune.sample_every=1",
            "--set", "generate.frames=4")
    assert r.exit_code == 0, r.stderr
    samples = sorted(p.name for p in (pv_home / "identities" / "s" / "samples").iterdir())
    assert samples == ["step_0000001.mp4", "step_0000001.png", "step_0000002.mp4", "step_0000002.png"]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(astronaut, pv_home, monkeypatch):
    import pv_facenet.encoder as enc

    original = enc.FaceNetEncoder.embed
    calls = {"n": 0}

    def poisoned(self, faces):
        out = original(self, faces)
        if faces.requires_grad:
            calls["n"] += 1
            if calls["n"] == 2:
                return out * float("nan")
        return out

    monkeypatch.setattr(enc.FaceNetEncoder, "embed", poisoned)
    r = run("tune", astronaut, "--name", "n", *TUNE)
    assert r.exit_code == 1 and "loss became nan at step 2" in r.stderr
    assert (pv_home / "runs" / "n" / "checkpoints" / "step_0000001.safetensors").is_file()
    assert not (pv_home / "identities" / "n").exists()
