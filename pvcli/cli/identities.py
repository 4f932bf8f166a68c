"""`pv list`, `pv show`, `pv rm`: the identity store."""

from __future__ import annotations

import sys

import typer

from ..api import PVError
from ..console import emit, err
from .common import JSON_OPT, AppState, handle_errors


def register(app: typer.Typer, state: AppState) -> None:
    from .. import api

    @app.command("list")
    @handle_errors
    def list_(as_json: bool = JSON_OPT):
        """List tuned identities."""
        rows = api.list_identities(state.context())
        if as_json:
            emit([{k: r.get(k) for k in api.LIST_FIELDS} for r in rows], True)
            return
        for r in rows:
            emit(r["name"], False)
        if not rows:
            err.print("[dim]No identities yet: pv tune PHOTO --name NAME --profile tiny[/dim]")

    @app.command()
    @handle_errors
    def show(name: str = typer.Argument(...), as_json: bool = JSON_OPT):
        """Show an identity's details."""
        info = api.show_identity(name, state.context())
        if as_json:
            emit(info, True)
        else:
            for k, v in info.items():
                emit(f"{k}: {v}", False)

    @app.command()
    @handle_errors
    def rm(name: str = typer.Argument(...), yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")):
        """Delete an identity (and any interrupted tuning run of that name)."""
        ctx = state.context()
        what = api.removable(name, ctx)
        if not yes:
            if not sys.stdin.isatty():
                raise PVError(f"refusing to delete {name!r} without confirmation", "pass --yes")
            if not typer.confirm(f"Delete {what} {name!r}?", err=True):
                raise typer.Exit(1)
        removed = api.remove_identity(name, ctx)
        # the identity's path when there was one, else the run's
        emit(str(removed[-1]), False)
