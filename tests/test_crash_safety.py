"""What a trusted store promises: data on the disk before its name (fsync around every publish),
no moment without an identity while it is replaced, leftovers of another host's writer left alone,
the process umask never changed, and identity locks where `fcntl` does not exist."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import copy_home, run

import pvcli.store as store_mod
from pvcli.errors import PVError
from pvcli.store import Store, atomic_write_bytes


def _write(store, name, marker, force=False):
    with store.writer(name, force) as folder:
        (folder / "identity.json").write_text(json.dumps({"name": name, "marker": marker}))
        (folder / "refs").mkdir()
        (folder / "refs" / "face_0.png").write_bytes(b"png")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def _leftover(store, name, suffix, pid=None, host=None, tag="0a1b2c3d"):
    """A folder named as a writer of `name` names its temporary ones: this process's, or those
    of process `pid` (on `host`)."""
    with pytest.MonkeyPatch.context() as mp:
        if pid is not None:
            mp.setattr(os, "getpid", lambda: pid)
        if host is not None:
            mp.setattr(store_mod, "THIS_HOST", host, raising=False)
        path = store.root / f"{store_mod.temp_prefix(name)}{tag}{suffix}"
    path.mkdir()
    return path


def _move_aside(store, name, pid=None):
    """The first rename of a replace: identities/NAME moved into a writer's `.old/previous`."""
    old = _leftover(store, name, ".old", pid)
    os.replace(store.path(name), old / "previous")
    return old / "previous"


def test_readers_never_see_no_identity_while_it_is_replaced(tmp_path, pv_home):
    store = Store(pv_home)
    _write(store, "alice", "one")
    _write(store, "bob", "b")
    new = tmp_path / "new"  # the replacement, complete, about to be renamed into place
    new.mkdir()
    (new / "identity.json").write_text(json.dumps({"name": "alice", "marker": "two"}))
    aside = _move_aside(store, "alice")  # a live writer (this process) between its two renames
    second = threading.Timer(0.3, os.replace, (new, store.path("alice")))
    second.start()
    try:
        assert store.load_info("alice")["marker"] == "two"  # the reader waited for the second rename
    finally:
        second.join()
    shutil.rmtree(aside.parent)  # the writer ends: the old folder goes
    # a writer killed between the renames: readers get the old identity at once, and the next
    # writer puts it back in place before replacing it
    _move_aside(store, "alice", pid=_dead_pid())
    start = time.monotonic()
    assert store.load_info("alice")["marker"] == "two" and store.names() == ["alice", "bob"]
    assert time.monotonic() - start < 1
    r = run("show", "alice", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["marker"] == "two", r.stderr
    r = run("list")
    assert r.exit_code == 0 and r.stdout.split() == ["alice", "bob"], r.stderr
    with pytest.raises(PVError, match="already exists"):
        _write(store, "alice", "three")
    _write(store, "alice", "three", force=True)
    assert store.load_info("alice")["marker"] == "three" and sorted(p.name for p in store.root.iterdir()) == ["alice", "bob"]


def test_commands_read_an_identity_its_killed_replacer_left_aside(tuned_alice, tmp_path):
    home = copy_home(tuned_alice, tmp_path / "pvhome")
    store = Store(home)
    _move_aside(store, "alice", pid=_dead_pid())
    out = tmp_path / "alice.safetensors"
    r = run("export", "alice", "-o", out, env={"PV_HOME": str(home)})
    assert r.exit_code == 0 and out.is_file(), r.stderr


def test_every_publish_flushes_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name a flushed descriptor")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "out" / "file.bin"
    atomic_write_bytes(path, b"data")
    (rename,) = [e for e in events if e[0] == "replace"]
    at = events.index(rename)
    assert ("fsync", rename[1]) in events[:at]  # the data, before its name
    assert events[at + 1:] == [("fsync", str(path.parent))]  # the name, after
    assert ("fsync", str(tmp_path)) in events[:at]  # the new folder `out` in its parent

    events.clear()
    store = Store(tmp_path / "home")
    _write(store, "alice", "one")
    _write(store, "alice", "two", force=True)
    final = str(store.path("alice"))
    into_place = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == final][-1]
    tmp = events[into_place][1]
    flushed = {e[1] for e in events[:into_place] if e[0] == "fsync"}
    assert {tmp, f"{tmp}/identity.json", f"{tmp}/refs", f"{tmp}/refs/face_0.png"} <= flushed
    assert ("fsync", str(store.root)) in events[into_place + 1:]


def test_a_sweep_leaves_what_a_writer_on_another_host_left(tmp_path, capsys):
    """On a PV_HOME shared by several hosts, a pid says nothing about another host's processes."""
    store = Store(tmp_path / "home")
    _write(store, "alice", "one")
    dead = _dead_pid()
    theirs = _leftover(store, "alice", ".tmp", pid=dead, host="otherhost")  # process `dead` of another host
    ours = _leftover(store, "alice", ".tmp", pid=dead, tag="4e5f6a7b")  # ... and of this one
    _write(store, "alice", "two", force=True)
    assert theirs.is_dir() and not ours.exists()
    err = capsys.readouterr().err
    assert f"leaving {theirs}" in err and f"process {dead} on host otherhost" in err


def test_the_process_umask_is_never_changed_and_new_files_get_its_permissions(tmp_path, monkeypatch):
    if os.name == "nt":
        pytest.skip("no umask on Windows")
    old = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError("pv changed the process umask (not thread-safe)")

        monkeypatch.setattr(os, "umask", no_umask)
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        store = Store(tmp_path / "home")
        _write(store, "alice", "one")
        assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640
        assert store.path("alice").stat().st_mode & 0o777 == 0o750
    finally:
        monkeypatch.undo()
        os.umask(old)


LOCK_WITHOUT_FCNTL = r"""
import sys
sys.modules["fcntl"] = None  # a platform without fcntl (Windows has none)
from pvcli.errors import PVError
from pvcli.locks import IdentityLock
from pvcli.store import Store

with IdentityLock(Store(), "alice", "tuned"):
    try:
        IdentityLock(Store(), "alice", "imported").__enter__()
    except PVError as exc:
        print(exc)
"""


def test_identity_locks_hold_where_there_is_no_fcntl(pv_home):
    r = subprocess.run([sys.executable, "-c", LOCK_WITHOUT_FCNTL], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PV_HOME": str(pv_home)})
    assert r.returncode == 0, r.stderr[-1500:]
    assert "identity 'alice' is being tuned by process" in r.stdout, r.stdout + r.stderr
