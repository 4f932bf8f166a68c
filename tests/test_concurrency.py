"""Several pv processes on one store: one writer per identity name, a lock that a killed process
cannot leave behind, and readers that see the last complete identity."""

import os
import signal
import subprocess
import sys

from conftest import NO_HELD_OUT, run

HOLD = ("import sys, time; from pvcli.locks import IdentityLock; from pvcli.store import Store; "
        "IdentityLock(Store(), sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(120)")


def _hold(name):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, name], stdout=subprocess.PIPE, text=True, env=os.environ)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_told_who_holds_the_name_and_a_killed_holder_frees_it(astronaut, pv_home, tmp_path):
    assert run("tune", astronaut, "--name", "alice", "--profile", "tiny", *NO_HELD_OUT, "--steps", "0", "-q").exit_code == 0
    bundle = tmp_path / "alice.pvid"  # a good bundle: only the lock can stop its import
    r = run("export", "alice", "--bundle", bundle)
    assert r.exit_code == 0 and bundle.is_file(), r.stderr
    record = (pv_home / "identities" / "alice" / "identity.json").read_bytes()
    holder = _hold("alice")
    try:
        r = run("tune", astronaut, "--name", "alice", "--profile", "tiny", *NO_HELD_OUT, "--steps", "0", "--force")
        assert r.exit_code == 1 and f"'alice' is being tuned by process {holder.pid}" in r.stderr
        assert "interrupted" not in r.stderr
        r = run("rm", "alice", "--yes")
        assert r.exit_code == 1 and "is being tuned" in r.stderr
        r = run("import", bundle, "--name", "alice", "--force")
        assert r.exit_code == 1 and f"'alice' is being tuned by process {holder.pid}" in r.stderr, r.stderr
        assert (pv_home / "identities" / "alice" / "identity.json").read_bytes() == record  # untouched
        r = run("import", bundle, "--name", "carol")  # the same bundle under a free name imports
        assert r.exit_code == 0, r.stderr
        # readers are not blocked: they read the last complete identity
        r = run("generate", "alice", "surfing", "--frames", "4", "-o", tmp_path / "a.mp4")
        assert r.exit_code == 0 and (tmp_path / "a.mp4").is_file()
        other = run("tune", astronaut, "--name", "bob", "--profile", "tiny", *NO_HELD_OUT, "--steps", "0", "-q")
        assert other.exit_code == 0  # other names are free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = run("import", bundle, "--name", "alice", "--force")
    assert r.exit_code == 0, r.stderr  # kill -9 left no stale lock: the refused import now goes through
    r = run("tune", astronaut, "--name", "alice", "--profile", "tiny", *NO_HELD_OUT, "--steps", "0", "--force", "-q")
    assert r.exit_code == 0, r.stderr
