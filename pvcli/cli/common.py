"""What every command shares: its options, the error handling, and the app's state (the
plugin registry, loaded once per app so a broken plugin warns once)."""

from __future__ import annotations

import functools
import os

import typer

from .. import api
from ..api import PVError
from ..console import RichReporter, err

JSON_OPT = typer.Option(False, "--json", help="Print the result as one line of JSON on stdout; no progress bars.")
SET_OPT = typer.Option(None, "--set", help="Override a setting: --set tune.lr=5e-4 (repeatable).")
PROFILE_OPT = typer.Option(None, "--profile", "-p", help="Profile name (see `pv profiles`) or YAML file.")
DEVICE_OPT = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress output on stderr.")
FORCE_OPT = typer.Option(False, "--force", help="Replace an existing identity or file of that name.")


class AppState:
    def __init__(self):
        self._registry = None

    def registry(self):
        if self._registry is None:
            self._registry = api.plugin_registry(warn=RichReporter().warn)
        return self._registry

    def context(self, quiet: bool = False, device: str | None = None) -> api.Context:
        return api.make_context(RichReporter(quiet=quiet), check_device(device), registry_factory=self.registry)


# torch's device types (torch.device refuses others); "auto" lets the backbone choose
DEVICE_TYPES = ("auto", "cpu", "cuda", "mps", "xpu", "hpu", "npu", "mtia", "meta", "xla", "ipu", "hip", "ve", "maia",
                "vulkan", "lazy", "privateuseone")


def check_device(device: str | None) -> str | None:
    """--device as torch will read it, refused here in one line rather than deep inside a model load."""
    import re

    if device is None:
        return None
    m = re.fullmatch(r"([a-z_]+)(?::(\d+))?", device.strip())
    if not m or m.group(1) not in DEVICE_TYPES:
        raise PVError(f"--device {device!r} is not a device", "use cpu, cuda, cuda:N or mps (or auto)")
    if m.group(1) == "cuda" and m.group(2) is not None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and int(m.group(2)) >= count:
            raise PVError(f"--device {device}: this machine has no GPU {m.group(2)} ({count} visible)",
                          f"use cuda:0{f' ... cuda:{count - 1}' if count > 1 else ''}")
    return device.strip()


def fail(message: str, hint: str | None = None, code: int = 1):
    from rich.markup import escape

    # messages are plain text: `pip install "pv[tracking]"` must not read as rich markup
    err.print(f"[red]Error:[/red] {escape(message)}", soft_wrap=True)
    if hint:
        err.print(f"  {escape(hint)}", soft_wrap=True, style="dim")
    raise typer.Exit(code)


def handle_errors(fn):
    """Known failures -> one line + hint, exit 1; Ctrl-C -> exit 130; PV_DEBUG=1 shows tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except PVError as exc:
            if os.environ.get("PV_DEBUG"):
                raise
            fail(exc.message, exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/yellow] Nothing was saved for the unfinished job.")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("PV_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                 "this is a bug in pv or a plugin; rerun with PV_DEBUG=1 for the traceback")

    return wrapper
