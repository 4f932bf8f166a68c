"""kill -9 (no cleanup runs) at several points of tune, export and import: the store never shows
a partial identity, an output path never holds a partial file, and the next run of the command
finishes and sweeps what the killed one left."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tuned_home
from safetensors import safe_open


def spawn(home: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "PV_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pvcli", *map(str, args), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, hit, timeout: float = 240) -> bool:
    """SIGKILL `proc` as soon as hit() is true; False if it exited first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if hit():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.wait(timeout=60)
    return False


def leftovers(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.glob(f".{name}.pv*")] if folder.is_dir() else []


def assert_whole_or_absent(home: Path, name: str) -> None:
    folder = home / "identities" / name
    if folder.exists():  # complete: its record and adapter read back
        json.loads((folder / "identity.json").read_text())
        with safe_open(str(folder / "adapter.safetensors"), "pt") as fh:
            assert list(fh.keys())


def _run(home, *args):
    env = {**os.environ, "PV_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pvcli", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("point", ["first checkpoint", "writing the identity"])
def test_kill_during_tune_leaves_no_partial_identity_and_resume_finishes(astronaut, tmp_path, point):
    home = tmp_path / "home"
    ids = home / "identities"
    hit = {"first checkpoint": lambda: any((home / "runs" / "alice" / "checkpoints").glob("step_*.safetensors")),
           "writing the identity": lambda: bool(leftovers(ids, "alice"))}[point]
    proc = spawn(home, "tune", astronaut, "--name", "alice", "--profile", "tiny", "--steps", "3",
                 "--set", "tune.checkpoint_every=1")
    killed = kill_when(proc, hit)
    assert_whole_or_absent(home, "alice")
    if killed and not (ids / "alice").exists():
        assert not _run(home, "list").stdout.strip()  # nothing half-made is listed
        r = _run(home, "tune", "--resume", "alice", "--quiet")
        assert r.returncode == 0, r.stderr[-1500:]
    assert_whole_or_absent(home, "alice")
    assert (ids / "alice" / "identity.json").is_file()
    assert not leftovers(ids, "alice")  # the killed writer's temp folder was swept


def test_kill_during_export_and_import_leaves_no_partial_file_or_identity(astronaut, tmp_path_factory, tmp_path):
    with tuned_home(tmp_path_factory, astronaut, "kill-export") as home:
        out = tmp_path / "alice.safetensors"
        bundle = tmp_path / "alice.pvid"
        for target, args in ((out, ("export", "alice", "-o", out)), (bundle, ("export", "alice", "--bundle", bundle))):
            proc = spawn(home, *args)
            kill_when(proc, lambda t=target: bool(leftovers(t.parent, t.name)))
            if target.exists():  # it finished before the kill: whole
                assert target.stat().st_size > 0
            r = _run(home, *args, "--force")
            assert r.returncode == 0, r.stderr[-1500:]
            assert target.is_file() and not leftovers(target.parent, target.name)
        proc = spawn(home, "import", bundle, "--name", "bob")
        kill_when(proc, lambda: bool(leftovers(home / "identities", "bob")))
        assert_whole_or_absent(home, "bob")
        r = _run(home, "import", bundle, "--name", "bob", "--force")
        assert r.returncode == 0, r.stderr[-1500:]
        assert_whole_or_absent(home, "bob")
        assert (home / "identities" / "bob").is_dir() and not leftovers(home / "identities", "bob")
