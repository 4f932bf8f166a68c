"""How the engine's jobs talk to a front end: status lines, warnings and progress. The CLI
renders them with rich on stderr; the Python API hands them to a callback; tests and other
front ends pass their own."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field


class Reporter:
    """Silent by default."""

    def status(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextmanager
    def progress(self, description: str, total: int):
        """Yield advance(**fields): call once per unit of work."""
        yield lambda **fields: None


@dataclass
class ProgressEvent:
    """One thing a job reports. kind: "status" or "warning" (message), "start" (description,
    total), "advance" (description, completed, total, fields: e.g. loss, id_sim) or "end"."""

    kind: str
    message: str = ""
    description: str = ""
    completed: int = 0
    total: int = 0
    fields: dict = field(default_factory=dict)


class CallbackReporter(Reporter):
    """Every report becomes a `ProgressEvent` passed to `callback` (the Python API's `progress=`)."""

    def __init__(self, callback: Callable[[ProgressEvent], None]):
        self.callback = callback

    def status(self, message: str) -> None:
        self.callback(ProgressEvent("status", message=message))

    def warn(self, message: str) -> None:
        self.callback(ProgressEvent("warning", message=message))

    @contextmanager
    def progress(self, description: str, total: int):
        done = [0]
        self.callback(ProgressEvent("start", description=description, total=total))

        def advance(**fields) -> None:
            done[0] += 1
            self.callback(ProgressEvent("advance", description=description, completed=done[0], total=total,
                                        fields=fields))

        try:
            yield advance
        finally:
            self.callback(ProgressEvent("end", description=description, completed=done[0], total=total))


def reporter_for(progress: Callable[[ProgressEvent], None] | Reporter | None) -> Reporter:
    if progress is None:
        return Reporter()
    if isinstance(progress, Reporter):
        return progress
    return CallbackReporter(progress)
