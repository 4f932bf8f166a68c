"""One writer per identity name across processes: `$PV_HOME/locks/NAME.lock`, a lock held while a
job tunes, imports or removes that identity, taken with `filelock` (flock on Linux and macOS, the
system's file locking on Windows). The system releases it when the holder exits, however it exits
(kill -9 included), so a lock is never stale. `NAME.holder` beside it keeps the holder's pid, host,
command and start time for the message a second process gets."""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path

from .errors import PVError
from .store import Store, atomic_write_bytes, make_dirs, validate_name

_HELD: set = set()  # a held lock stays referenced (filelock releases a lock it garbage-collects) until released


class IdentityLock:
    def __init__(self, store: Store, name: str, doing: str = "tuned"):
        self.path = store.home / "locks" / f"{validate_name(name)}.lock"
        self.info_path = self.path.with_suffix(".holder")
        self.name, self.doing, self.lock = name, doing, None

    def holder(self) -> dict:
        try:
            return json.loads(self.info_path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def __enter__(self) -> IdentityLock:
        from filelock import FileLock, Timeout

        make_dirs(self.path.parent)
        lock = FileLock(str(self.path), mode=0o666)  # the umask applies
        try:
            lock.acquire(timeout=0)
        except Timeout:
            h = self.holder()
            raise PVError(f"identity {self.name!r} is being {h.get('doing', 'written')} by process {h.get('pid', '?')}"
                          f" on {h.get('host', '?')} since {h.get('started', '?')}",
                          f"wait for it to finish, or stop that process ({h.get('command', 'pv')})") from None
        self.lock = lock
        _HELD.add(lock)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "doing": self.doing,
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]}
        try:
            atomic_write_bytes(self.info_path, json.dumps(info).encode())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.info_path.unlink(missing_ok=True)
            self.lock.release()
            _HELD.discard(self.lock)
            self.lock = None
