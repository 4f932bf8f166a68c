"""kill -9 (no cleanup runs) at several points of tune, export and import: the store never shows
a partial identity, an output path never holds a partial file, and the next run of the command
finishes and sweeps what the killed one left.

Every kill is checked to have happened mid-work: the kill point was reached (a checkpoint on disk,
or the child stopped with its output written in full under its temporary name, not yet renamed
into place), the process was still running then, and it died of the SIGKILL (returncode -9). A
child that ends or never gets there fails the test instead of passing without a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import NO_HELD_OUT, copy_home, run, tune_home
from safetensors import safe_open
from safetensors.torch import load_file

# `pv` that stops at a kill point (PV_TEST_PAUSE) and sleeps there until it is killed; it writes
# PV_TEST_MARKER when it gets there. "identity:NAME": the new identity folder is complete under its
# temporary name and not yet renamed to identities/NAME. "file:PATH": the output's temporary file
# is written in full and not yet renamed to PATH.
PAUSING_PV = r"""
import os, sys, time
from pathlib import Path

kind, _, target = os.environ["PV_TEST_PAUSE"].partition(":")
marker = Path(os.environ["PV_TEST_MARKER"])


def pause(tmp):
    staged = marker.with_name(marker.name + ".part")  # the marker appears whole: the test reads it at once
    staged.write_text(str(tmp))
    os.replace(staged, marker)
    time.sleep(600)


import pvcli.store as store

if kind == "identity":
    swap = store.swap_into_place

    def swap_into_place(tmp, final, *args, **kwargs):
        if Path(final).name == target:
            pause(tmp)
        return swap(tmp, final, *args, **kwargs)

    store.swap_into_place = swap_into_place
elif kind == "file":
    import pvcli.jobs.bundle
    import pvcli.jobs.export

    write_file = store.atomic_write_file

    def atomic_write_file(path, write, *args, **kwargs):
        def write_then_pause(tmp):
            write(tmp)
            if str(path) == target:
                pause(tmp)

        return write_file(path, write_then_pause, *args, **kwargs)

    for module in (store, pvcli.jobs.export, pvcli.jobs.bundle):
        module.atomic_write_file = atomic_write_file
else:
    raise SystemExit(f"unknown kill point {kind!r}")

from pvcli.cli import main

sys.argv = ["pv", *sys.argv[1:]]
main()
"""


def _env(home: Path) -> dict:
    return {**os.environ, "PV_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def spawn(home: Path, *args, pause: str | None = None, marker: Path | None = None) -> subprocess.Popen:
    """`pv ARGS` in the background; with `pause`, stopped at that kill point (see PAUSING_PV)."""
    env = _env(home)
    if pause is None:
        cmd = [sys.executable, "-m", "pvcli"]
    else:
        env.update(PV_TEST_PAUSE=pause, PV_TEST_MARKER=str(marker))
        cmd = [sys.executable, "-c", PAUSING_PV]
    log = open(home.parent / f"killed-{time.monotonic_ns()}.stderr", "w+")  # its stderr, shown if it fails
    proc = subprocess.Popen([*cmd, *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log
    return proc


def kill_at(proc: subprocess.Popen, reached, timeout: float = 1800) -> None:
    """SIGKILL `proc` as soon as reached() is true. Fails the test if it ends first, or never gets
    there within `timeout`, or is not killed by the signal (it had already ended)."""
    end = time.monotonic() + timeout
    while not reached():
        if proc.poll() is not None:
            proc.log.seek(0)
            pytest.fail(f"pv ended (exit {proc.returncode}) before the kill point:\n{proc.log.read()[-1500:]}")
        if time.monotonic() > end:
            proc.kill()
            proc.wait()
            pytest.fail(f"pv did not reach the kill point in {timeout:.0f} s")
        time.sleep(0.002)
    assert proc.poll() is None, "pv had ended when the kill point was reached"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed mid-work, not ended on its own
    proc.log.close()


def leftovers(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.glob(f".{name}.pv*")] if folder.is_dir() else []


def assert_whole(home: Path, name: str) -> dict:
    """identities/NAME is complete: its record and adapter read back. Returns the record."""
    folder = home / "identities" / name
    info = json.loads((folder / "identity.json").read_text())
    with safe_open(str(folder / "adapter.safetensors"), "pt") as fh:
        assert list(fh.keys())
    return info


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(home, *args):
    """The next run of a command after a kill, in this process (what it finds on disk is what
    matters; only the killed runs need to be processes of their own)."""
    return run(*args, env={"PV_HOME": str(home)})


def listed(home: Path) -> list[str]:
    """The names `pv list` prints."""
    r = _run(home, "list")
    assert r.exit_code == 0, r.stderr[-1500:]
    return r.stdout.split()


def checkpoint_steps(home: Path, name: str) -> list[int]:
    folder = home / "runs" / name / "checkpoints"
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("step_*.safetensors"))


@pytest.mark.parametrize("point", ["first checkpoint", "writing the identity"])
def test_kill_during_tune_leaves_no_partial_identity_and_resume_finishes(astronaut, tmp_path, point):
    home = tmp_path / "home"
    ids = home / "identities"
    steps = 2 if point == "first checkpoint" else 1
    tuning = (*NO_HELD_OUT, "--steps", steps, "--set", "tune.checkpoint_every=1")
    args = ("tune", astronaut, "--name", "alice", "--profile", "tiny", *tuning, "--quiet")
    if point == "first checkpoint":  # killed while step 2 runs, with step 1's checkpoint on disk
        proc = spawn(home, *args)
        kill_at(proc, lambda: bool(checkpoint_steps(home, "alice")))
    else:  # killed with the finished identity written under its temporary name, before the rename
        marker = tmp_path / "paused"
        proc = spawn(home, *args, pause="identity:alice", marker=marker)
        kill_at(proc, marker.exists)
        assert Path(marker.read_text()).is_dir() and leftovers(ids, "alice")  # the killed writer's folder
        fresh_process = load_file(Path(marker.read_text()) / "adapter.safetensors")  # its finished adapter
    assert not (ids / "alice").exists()  # nothing half-made in the store
    assert listed(home) == []  # nothing half-made is listed
    done = checkpoint_steps(home, "alice")
    assert done  # the run can be resumed
    if point == "first checkpoint":
        assert done[-1] < steps  # killed before the last step

    r = _run(home, "tune", "--resume", "alice", "--quiet")
    assert r.exit_code == 0, r.stderr[-1500:]
    info = assert_whole(home, "alice")
    assert info["steps"] == steps and info["resumed_at"] == done[-1]  # it went on from the last checkpoint
    assert not leftovers(ids, "alice")  # the killed writer's temp folder was swept
    assert not (home / "runs" / "alice").exists()  # the finished run became the identity
    assert listed(home) == ["alice"]
    if point == "writing the identity":
        # the same seed gives the same identity in any process, whatever ran before in it: the
        # killed run (a fresh process), then the same tune twice here, bit for bit (issue 30)
        for again in ("resumed", "again", "once more"):
            run_home = home if again == "resumed" else tmp_path / again
            if again != "resumed":
                tune_home(run_home, astronaut, "alice", "tiny", *tuning)
            here = load_file(run_home / "identities" / "alice" / "adapter.safetensors")
            assert here.keys() == fresh_process.keys()
            assert all(torch.equal(here[k], fresh_process[k]) for k in here), again


def test_kill_during_export_and_import_leaves_no_partial_file_or_identity(tuned_alice, tmp_path):
    home = copy_home(tuned_alice, tmp_path / "pvhome")
    ids = home / "identities"
    alice = snapshot(ids / "alice")
    out = tmp_path / "alice.safetensors"
    bundle = tmp_path / "alice.pvid"
    marker = tmp_path / "paused"
    for target, args in ((out, ("export", "alice", "-o", out)), (bundle, ("export", "alice", "--bundle", bundle))):
        marker.unlink(missing_ok=True)
        kill_at(spawn(home, *args, pause=f"file:{target}", marker=marker), marker.exists)
        assert not target.exists()  # no partial file at the output path ...
        assert Path(marker.read_text()).is_file() and leftovers(target.parent, target.name)  # only a temporary one
        r = _run(home, *args)  # the clean run is not blocked by the killed one's leftovers
        assert r.exit_code == 0, r.stderr[-1500:]
        assert target.is_file() and not leftovers(target.parent, target.name)
    with safe_open(str(out), "pt") as fh:
        assert list(fh.keys())
    # replacing a file: a kill mid-write leaves the old file as it was
    before = out.read_bytes()
    marker.unlink()
    kill_at(spawn(home, "export", "alice", "--format", "kohya", "-o", out, "--force", pause=f"file:{out}",
                  marker=marker), marker.exists)
    assert out.read_bytes() == before and leftovers(out.parent, out.name)

    marker.unlink()
    kill_at(spawn(home, "import", bundle, "--name", "bob", pause="identity:bob", marker=marker), marker.exists)
    assert Path(marker.read_text()).is_dir() and leftovers(ids, "bob")  # bob written in full, not in place
    assert not (ids / "bob").exists() and snapshot(ids / "alice") == alice  # the store is unchanged
    assert listed(home) == ["alice"]
    r = _run(home, "import", bundle, "--name", "bob")  # no --force needed: nothing of bob is in the store
    assert r.exit_code == 0, r.stderr[-1500:]
    assert assert_whole(home, "bob")["name"] == "bob" and not leftovers(ids, "bob")
    assert snapshot(ids / "alice") == alice
    assert listed(home) == ["alice", "bob"]
