"""Terminal output: everything for people goes to stderr (rich), results go to stdout."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

from .reporting import Reporter

err = Console(stderr=True, highlight=False)


def emit(data, as_json: bool) -> None:
    """A result on stdout: JSON (compact, one line) or plain text."""
    if as_json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
    else:
        sys.stdout.write(f"{data}\n")
    sys.stdout.flush()


class RichReporter(Reporter):
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def status(self, message: str) -> None:
        if not self.quiet:
            err.print(f"[dim]{escape(message)}[/dim]", soft_wrap=True)  # messages are plain text, never markup

    def warn(self, message: str) -> None:
        err.print(f"[yellow]Warning:[/yellow] {escape(message)}", soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int):
        if self.quiet:
            yield lambda **fields: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(), TextColumn("eta"),
                      TimeRemainingColumn(), console=err, transient=False) as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(**fields) -> None:
                info = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} -" for k, v in fields.items())
                bar.update(task, advance=1, info=info)

            yield advance
