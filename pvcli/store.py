"""The identity store: `$PV_HOME/identities/<name>/`.

An identity folder holds `adapter.safetensors` (LoRA weights + metadata), `reference.safetensors`
(the reference embedding and per-photo embeddings), `refs/` (aligned reference crops),
`config.yaml` (the resolved settings) and `identity.json` (a summary). A folder is written
in full under a temporary name and renamed into place, so a crash or Ctrl-C never leaves a
half-written identity, and `--force` replaces the old one only once the new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
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

    def exists(self, name: str) -> bool:
        return (self.path(name) / IDENTITY_FILE).is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if NAME_RE.match(p.name) and (p / IDENTITY_FILE).is_file())

    def load_info(self, name: str) -> dict:
        path = self.path(name) / IDENTITY_FILE
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
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.path(name))
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=".tmp", dir=self.root))
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
        trash = Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=".old", dir=self.root))
        os.replace(path, trash / name)
        shutil.rmtree(trash, ignore_errors=True)
        return path


def temp_prefix(name: str) -> str:
    """Temporary files and folders beside `name` carry the writer's pid, so that a later writer
    can tell the leftovers of a killed one (kill -9 runs no cleanup) from a live one's."""
    return f".{name}.pv{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(final: Path) -> None:
    """Remove what killed writers of `final` left beside it; a folder moved aside just before a
    kill (`.old/previous`) goes back into place if nothing replaced it."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.pv(\d+)\.[a-z0-9_]+\.(tmp|old)(\.\w+)?$")
    if not final.parent.is_dir():
        return
    for entry in final.parent.iterdir():
        m = pattern.match(entry.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        previous = entry / "previous"
        if m.group(2) == "old" and previous.exists() and not final.exists():
            os.replace(previous, final)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder `tmp` to `final`; an existing `final` is moved aside first and
    deleted only once the new one is in place."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".old", dir=final.parent))
        os.replace(final, old / "previous")
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_file(path: Path, write, suffix: str = ".tmp") -> Path:
    """`write(tmp_path)` into a temporary file beside `path`, then rename it into place: readers
    never see a half-written file, and a failure leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a user's file gets the usual permissions
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_file(path, lambda tmp: tmp.write_bytes(data))
