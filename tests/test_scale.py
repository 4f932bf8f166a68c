"""Scale: data-parallel tuning on several processes (gloo on CPU), gradient accumulation on one,
and resuming a run on another process count."""

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from pvcli.cli import create_app
from pvcli.engine.tune import Tuner


def run(*args):
    return CliRunner().invoke(create_app(), [str(a) for a in args])


def pv(*args, home, timeout=300):
    env = {**os.environ, "PV_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pvcli", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_two_processes_tune_one_identity_in_lockstep_and_it_generates(astronaut, pv_home, tmp_path):
    r = pv("tune", astronaut, "--name", "alice", "--profile", "tiny", "--steps", "3", "--processes", "2", "--quiet",
           "--set", "tune.checkpoint_every=1", home=pv_home)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["alice"]  # one result line, from the main process only
    log = [json.loads(line) for line in (pv_home / "identities" / "alice" / "log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [1, 2, 3]  # the loss curve is logged once
    assert all(rec["processes"] == 2 and rec["replica_drift"] == 0.0 for rec in log)  # identical adapters every step
    assert all(rec["loss"] is not None for rec in log)
    info = json.loads((pv_home / "identities" / "alice" / "identity.json").read_text())
    assert info["steps"] == 3
    assert not (pv_home / "runs" / "alice").exists()
    out = tmp_path / "a.gif"
    g = run("generate", "alice", "surfing", "-o", out)
    assert g.exit_code == 0, g.stderr
    assert out.is_file()


def test_an_interrupted_run_resumes_on_two_processes(astronaut, pv_home, monkeypatch):
    original = Tuner.step

    def interrupted(self):
        if self.step_index == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Tuner, "step", interrupted)
    r = run("tune", astronaut, "--name", "bob", "--profile", "tiny", "--steps", "3", "--quiet")
    assert r.exit_code == 130
    monkeypatch.setattr(Tuner, "step", original)
    r = pv("tune", "--resume", "bob", "--processes", "2", "--quiet", home=pv_home)
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(line) for line in (pv_home / "identities" / "bob" / "log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [1, 2, 3] and [rec.get("processes") for rec in log] == [None, 2, 2]


def test_clips_per_step_accumulates_several_clips_into_one_update(encoder, reference, tiny_settings):
    from pv_animatediff.backbone import make_tiny
    from pvcli.engine.adapter import adapter_state_dict
    from pvcli.settings import from_dict

    updates = {}
    for clips in (1, 2):
        s = from_dict(tiny_settings.to_dict(), [{"tune": {"clips_per_step": clips, "grad_clip": 0}}])
        tuner = Tuner(make_tiny(), encoder, s, reference)
        before = adapter_state_dict(tuner.bb.unet)
        stats = tuner.step()
        assert stats.frames == clips * s.tune.supervised_frames and len(stats.prompt.split(" | ")) == clips
        after = adapter_state_dict(tuner.bb.unet)
        updates[clips] = sum(float((after[k] - before[k]).abs().sum()) for k in before)
        assert updates[clips] > 0
    assert updates[1] != updates[2]  # the second clip changed the gradient
