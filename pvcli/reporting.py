"""How the engine's jobs talk to a front end: status lines, warnings and progress. The CLI
renders them with rich on stderr; tests and other front ends pass their own."""

from __future__ import annotations

from contextlib import contextmanager


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
