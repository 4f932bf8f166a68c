"""The Python API a notebook user calls: same jobs as the CLI, results as objects, progress
through a callback, the same errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

import pvcli as pv
from pvcli.video import read_frames, read_metadata


@pytest.fixture(scope="module")
def api_home(tmp_path_factory):
    return tmp_path_factory.mktemp("apihome")


@pytest.fixture(scope="module")
def alice(api_home, astronaut):
    """Tuned once through the API with a progress callback; PV_HOME is pinned for the module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PV_HOME", str(api_home))
    events = []
    identity = pv.tune(astronaut, "alice", profile="tiny", steps=2, overrides={"tune.sample_every": 0, "tune.held_out": 1},
                       progress=events.append)
    yield identity, events
    mp.undo()


@pytest.fixture
def home(api_home, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(api_home))
    return api_home


def test_tune_returns_the_identity_and_reports_progress(alice, home):
    identity, events = alice
    assert identity.name == "alice" and identity.path == home / "identities" / "alice"
    assert identity.info["steps"] == 2 and identity.info["held_out_id_sim_after"] is not None
    advances = [e for e in events if e.kind == "advance" and e.description == "tuning alice"]
    assert [e.completed for e in advances] == [1, 2] and advances[-1].total == 2
    assert {"loss", "id_sim"} <= set(advances[0].fields)
    assert any(e.kind == "status" and "loading backbone" in e.message for e in events)
    assert [i["name"] for i in pv.list_identities()] == ["alice"]


def test_identity_generates_frames_and_files_with_one_model_load(alice, home, tmp_path):
    events = []
    identity = pv.Identity.load("alice", progress=events.append)
    a = identity.generate("surfing at sunset", seed=3, frames=4)
    assert isinstance(a, pv.Video) and a.path is None
    assert a.frames.shape == (4, 64, 64, 3) and a.frames.dtype == np.uint8
    assert a.record["prompt"] == "sks person, surfing at sunset" and a.record["seed"] == 3

    out = tmp_path / "b.mp4"
    b = identity.generate("surfing at sunset", seed=3, frames=4, output=out)
    assert b.path == out and read_frames(out).shape == (4, 64, 64, 3) and read_metadata(out)["seed"] == 3
    assert np.array_equal(a.frames, b.frames)  # same seed, same clip
    off = identity.generate("surfing at sunset", seed=3, frames=4, adapter=False)
    assert off.record["adapter_scale"] == 0.0 and not np.array_equal(a.frames, off.frames)
    loads = [e for e in events if e.kind == "status" and "loading backbone" in e.message]
    assert len(loads) == 1  # the model loads once for every clip


def test_evaluate_returns_what_the_cli_prints(alice, home, tmp_path):
    from typer.testing import CliRunner

    from pvcli.cli import create_app

    clip = pv.Identity.load("alice").generate("smiling", frames=4, output=tmp_path / "c.mp4")
    result = pv.evaluate(clip.path, no_face="center", scorer="clip-tiny")
    cli = CliRunner().invoke(create_app(), ["eval", str(clip.path), "--no-face", "center", "--scorer", "clip-tiny",
                                            "--json"])
    assert cli.exit_code == 0, cli.stderr
    assert json.loads(cli.stdout) == json.loads(json.dumps(result))
    assert result["aggregate"]["face_sim"]["facenet"] is not None


def test_errors_are_pverrors_with_hints(home, astronaut):
    with pytest.raises(pv.PVError, match="no identity named 'bob'"):
        pv.Identity.load("bob")
    with pytest.raises(pv.PVError, match="unknown setting 'stepz'") as info:
        pv.tune(astronaut, "x", profile="tiny", stepz=3)
    assert "overrides" in info.value.hint
    with pytest.raises(pv.PVError, match="tune.lr must be"):
        pv.tune(astronaut, "x", profile="tiny", overrides={"tune.lr": -1})
    with pytest.raises(pv.PVError, match="must be an .mp4, .gif or .webp"):
        pv.Identity.load("alice").generate("x", output="clip.avi")


def test_importing_the_api_imports_no_torch():
    code = "import sys, pvcli as pv; pv.tune; pv.Identity; pv.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
