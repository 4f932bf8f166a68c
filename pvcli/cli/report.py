"""`pv report`: one self-contained HTML page about an identity."""

from __future__ import annotations

from pathlib import Path

import typer

from ..console import emit
from .common import JSON_OPT, QUIET_OPT, AppState, handle_errors


def register(app: typer.Typer, state: AppState) -> None:
    @app.command()
    @handle_errors
    def report(
        name: str = typer.Argument(..., help="The identity (see `pv list`)."),
        output: Path = typer.Option(None, "--output", "-o", help="The HTML file to write (default NAME.html)."),
        as_json: bool = JSON_OPT,
        quiet: bool = QUIET_OPT,
    ):
        """Write an identity's report: photos and aligned crops, training curves, samples over the
        steps, held-out ID similarity, settings and versions, in one HTML file that needs no network."""
        from .. import api

        result = api.identity_report(name, output, context=state.context(quiet or as_json))
        emit(result if as_json else result["path"], as_json)
