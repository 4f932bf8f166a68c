"""The identity store: `$PV_HOME/identities/<name>/`.

An identity folder holds `adapter.safetensors` (LoRA weights + metadata), `reference.safetensors`
(the reference embedding and per-photo embeddings), `refs/` (aligned reference crops),
`config.yaml` (the resolved settings) and `identity.json` (a summary). A folder is written
in full under a temporary name, flushed to the disk, and renamed into place, so a crash, Ctrl-C
or a power cut never leaves a half-written identity, and `--force` replaces the old one only once
the new one is complete. Every file pv publishes (identities, checkpoints, exports, bundles,
videos, reports) goes through `publish_file` / `swap_into_place` here.

Replacing a folder takes two renames (the old one aside, the new one in); a reader that looks in
between finds the old one aside: `folder()` waits for the new one, then falls back to the old one,
so readers never see "no identity" while an identity is replaced.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import PVError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IDENTITY_FILE = "identity.json"


def home() -> Path:
    env = os.environ.get("PV_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("pv", appauthor=False))


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or "") or name.endswith((".tmp", ".old")):
        raise PVError(f"invalid identity name {name!r}",
                      "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


class Store:
    def __init__(self, root: Path | None = None):
        self.home = root or home()
        self.root = self.home / "identities"
        self.runs = self.home / "runs"

    def path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def folder(self, name: str) -> Path:
        """The folder to read identity `name` from: identities/<name>, or, while a writer is between
        the two renames of a replace (or was killed there), the complete old folder it moved aside."""
        final = self.path(name)
        if (final / IDENTITY_FILE).is_file():
            return final
        aside = moved_aside(final)
        if aside is None:
            return final
        m = ASIDE_RE.match(aside.parent.name)
        if m.group(3) in (None, THIS_HOST) and not _pid_alive(int(m.group(2))):
            return aside  # its writer was killed between the renames: the old folder is the identity
        try:  # the second rename follows the first at once: wait until REPLACE_WAIT_S after the first
            left = min(REPLACE_WAIT_S, aside.parent.stat().st_mtime + REPLACE_WAIT_S - time.time())
        except OSError:
            left = 0.0
        end = time.monotonic() + left
        while time.monotonic() < end:
            time.sleep(0.005)
            if (final / IDENTITY_FILE).is_file():
                return final
        return aside if (aside / IDENTITY_FILE).is_file() else final

    def exists(self, name: str) -> bool:
        return (self.folder(name) / IDENTITY_FILE).is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = {p.name for p in self.root.iterdir() if NAME_RE.match(p.name)}
        found |= {m.group(1) for p in self.root.iterdir() if (m := ASIDE_RE.match(p.name))}  # mid-replace
        return sorted(n for n in found if not n.endswith((".tmp", ".old")) and self.exists(n))

    def load_info(self, name: str) -> dict:
        path = self.folder(name) / IDENTITY_FILE
        if not path.is_file():
            known = ", ".join(self.names()) or "none yet"
            raise PVError(f"no identity named {name!r} (known: {known})", "create one with `pv tune PHOTO --name NAME`")
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or a number of over 4300 digits
            raise PVError(f"identity {name!r} is damaged: cannot read {path}: {exc}") from None
        from .records import identity_fault

        fault = identity_fault(info)
        if fault:
            raise PVError(f"identity {name!r} is damaged: {IDENTITY_FILE}: {fault}",
                          f"import it again from a good bundle, or `pv rm {name}`")
        return info

    def check_free(self, name: str, force: bool) -> None:
        if self.exists(name) and not force:
            raise PVError(f"identity {name!r} already exists", "pick another --name, or pass --force to replace it")

    @contextmanager
    def writer(self, name: str, force: bool):
        """Yield a temporary folder; on success it becomes identities/<name> atomically."""
        self.check_free(name, force)
        make_dirs(self.root)
        sweep_stale(self.path(name))
        tmp = make_temp(self.root, name, ".tmp", folder=True)
        try:
            yield tmp
            if self.path(name).exists():
                self.check_free(name, force)
            swap_into_place(tmp, self.path(name))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, name: str) -> Path:
        path = self.path(name)
        if not self.exists(name):
            self.load_info(name)  # raises the "no identity" error
        trash = make_temp(self.root, name, ".old", folder=True)
        os.replace(self.folder(name), trash / name)
        fsync(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        return path


REPLACE_WAIT_S = 2.0  # how long a reader waits for a replace's second rename before reading the old folder

# -- Temporary names ---------------------------------------------------------------------------------
# A temporary name carries its writer's pid and host, so that a later writer can tell the leftovers
# of a killed one (kill -9 runs no cleanup) from those of one still running, and never judges a
# process of another host (a PV_HOME shared over the network) by this host's process table.


def _host_tag(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", host)[:40] or "host"


THIS_HOST = _host_tag(socket.gethostname())
ASIDE_RE = re.compile(r"^\.([A-Za-z0-9][A-Za-z0-9._-]{0,63})\.pv(\d+)(?:@([A-Za-z0-9-]+))?\.[A-Za-z0-9_]+\.old$")


def temp_prefix(name: str) -> str:
    return f".{name}.pv{os.getpid()}@{THIS_HOST}."


def make_temp(parent: Path, name: str, suffix: str, folder: bool = False) -> Path:
    """A new empty file (or folder) beside `name` in `parent`, created with the permissions any new
    file gets (0666/0777 less the umask, applied by the system: the process umask is never
    changed, so this is safe with threads)."""
    for _ in range(100):
        path = parent / f"{temp_prefix(name)}{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / temp_prefix(name)))


def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)  # os.kill(pid, 0) would end the process on Windows


def _stale(m: re.Match, entry: Path) -> bool:
    """Whether the writer that left `entry` is gone. One of another host is never judged from here."""
    host = m.group(2)
    if host is not None and host != THIS_HOST:
        sys.stderr.write(f"Warning: leaving {entry}: left by process {m.group(1)} on host {host}, which pv cannot "
                         f"check from {THIS_HOST}; delete it if that process is gone\n")
        return False
    return not _pid_alive(int(m.group(1)))


def sweep_stale(final: Path) -> None:
    """Remove what killed writers of `final` left beside it; a folder moved aside just before a
    kill (`.old/previous`) goes back into place if nothing replaced it."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.pv(\d+)(?:@([A-Za-z0-9-]+))?\.[A-Za-z0-9_]+\.(tmp|old)(\.\w+)?$")
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        m = pattern.match(entry.name)
        if not m or not _stale(m, entry):
            continue
        previous = entry / "previous"
        if m.group(3) == "old" and previous.exists() and not final.exists():
            os.replace(previous, final)
            fsync(final.parent)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def moved_aside(final: Path) -> Path | None:
    """The old folder a replace of `final` moved aside (`.old/previous`), if one is there."""
    if not final.parent.is_dir():
        return None
    for entry in final.parent.iterdir():
        m = ASIDE_RE.match(entry.name)
        if m and m.group(1) == final.name and (entry / "previous").is_dir():
            return entry / "previous"
    return None


# -- Publishing: flushed to the disk, then renamed into place -----------------------------------------
# A rename is atomic, but without fsync a power cut after it can leave the new name pointing at a
# file whose data never reached the disk (an empty or missing file). So, as SQLite and git do: the
# data is flushed before the rename, and the folder holding the name after it.


def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    path = Path(path)
    is_dir = path.is_dir()
    if is_dir and os.name == "nt":
        return  # Windows cannot open a folder to flush it; NTFS journals its renames
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if is_dir
                     else (os.O_RDWR if os.name == "nt" else os.O_RDONLY))  # Windows flushes writable handles only
    except PermissionError:
        if is_dir:  # a folder pv may write in but not list
            return
        raise
    try:
        if sys.platform == "darwin":  # macOS's fsync leaves the data in the drive's cache; F_FULLFSYNC flushes it
            import fcntl

            try:
                fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
                return
            except OSError:  # a file system without it
                pass
        os.fsync(fd)
    except OSError as exc:  # a file system that cannot flush folders (some network ones)
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` (itself included)."""
    for root, _, files in os.walk(folder, topdown=False):
        for f in files:
            fsync(Path(root) / f)
        fsync(Path(root))


def make_dirs(folder: Path) -> Path:
    """mkdir -p, with each new folder's entry flushed in its parent."""
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue
        fsync(new.parent)
    return missing[0] if missing else folder


def publish_file(tmp: Path, path: Path) -> None:
    """Rename the finished file `tmp` to `path`, durably."""
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder `tmp` to `final`, durably; an existing `final` is moved aside
    first and deleted only once the new one is in place (readers: `Store.folder`)."""
    fsync_tree(tmp)
    old = None
    if final.exists():
        old = make_temp(final.parent, final.name, ".old", folder=True)
        os.replace(final, old / "previous")
    os.replace(tmp, final)
    fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_file(path: Path, write, suffix: str = ".tmp") -> Path:
    """`write(tmp_path)` into a temporary file beside `path`, then publish it: readers never see a
    half-written file, a failure leaves `path` as it was, and once this returns the file survives
    a power cut."""
    path = Path(path)
    make_dirs(path.parent)
    sweep_stale(path)
    tmp = make_temp(path.parent, path.name, suffix)
    try:
        write(tmp)
        publish_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_file(path, lambda tmp: tmp.write_bytes(data))
