"""One writer per identity name across processes: `$PV_HOME/locks/NAME.lock`, an advisory
`flock` held while a job tunes, imports or removes that identity. The kernel releases it when
the holder exits, however it exits (kill -9 included), so a lock is never stale; the file keeps
the holder's pid, host, command and start time for the message a second process gets."""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path

from .errors import PVError
from .store import Store, validate_name

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; pv's atomic renames still keep the store whole
    fcntl = None


class IdentityLock:
    def __init__(self, store: Store, name: str, doing: str = "tuned"):
        self.path = store.home / "locks" / f"{validate_name(name)}.lock"
        self.name, self.doing, self.fd = name, doing, None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def __enter__(self) -> IdentityLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            raise PVError(f"identity {self.name!r} is being {h.get('doing', 'written')} by process {h.get('pid', '?')}"
                          f" on {h.get('host', '?')} since {h.get('started', '?')}",
                          f"wait for it to finish, or stop that process ({h.get('command', 'pv')})") from None
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "doing": self.doing,
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
