"""The `pv` command line: one module per command group, each a thin layer over the Python API
(`pvcli.api`): parse, call, print. Heavy imports (torch, diffusers) happen below the API, so
`pv --help` stays fast."""

from __future__ import annotations

import os

import typer

from .. import __version__
from ..console import emit, err
from . import evaluate, generate, identities, info, report, transfer, tune
from .common import AppState

COMMAND_GROUPS = (tune, generate, evaluate, report, transfer, identities, info)


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="pv", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
        help="PersonalVideo: teach a text-to-video model a person's identity from one photo, then make videos of them.",
    )
    state = AppState()

    @app.callback(invoke_without_command=True)
    def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
        if version:
            emit(__version__, False)
            raise typer.Exit()

    for group in COMMAND_GROUPS:
        group.register(app, state)

    if os.environ.get("PV_PLUGINS", None) != "":
        try:
            state.registry().pm.hook.register_commands(app=app)
        except Exception as exc:
            from rich.markup import escape

            err.print(f"[yellow]Warning:[/yellow] a plugin failed to add commands: {escape(str(exc))}", soft_wrap=True)
    return app


def main() -> None:
    create_app()()
