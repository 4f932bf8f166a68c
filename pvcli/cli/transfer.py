"""`pv export` and `pv import`: identities out to other tools and machines, and back in."""

from __future__ import annotations

from pathlib import Path

import typer

from ..console import emit
from .common import FORCE_OPT, JSON_OPT, AppState, handle_errors


def register(app: typer.Typer, state: AppState) -> None:
    @app.command()
    @handle_errors
    def export(
        name: str = typer.Argument(..., help="Identity name (see `pv list`)."),
        fmt: str = typer.Option(None, "--format", "-f", help="LoRA key format: diffusers (the default), or kohya "
                                "(= comfy = a1111, what ComfyUI and A1111 load)."),
        output: Path = typer.Option(None, "--output", "-o", help="Output .safetensors (default: NAME.safetensors "
                                    "or NAME_kohya.safetensors)."),
        bundle: Path = typer.Option(None, "--bundle", help="Write the whole identity as one .pvid archive instead "
                                    "(for `pv import` on another machine)."),
        force: bool = FORCE_OPT,
        as_json: bool = JSON_OPT,
    ):
        """Export an identity: its adapter as a LoRA file other tools load, or the whole identity as a bundle."""
        from .. import api

        ctx = state.context(as_json)
        if bundle is not None:
            record = api.export(name, fmt, output, bundle=bundle, force=force, context=ctx)
        else:
            record = api.export(name, fmt, output, force=force, context=ctx)
        paths = [f["path"] for f in record.get("experts", [])] or [record["path"]]  # one file per expert, or one
        emit(record if as_json else "\n".join(paths), as_json)

    @app.command("import")
    @handle_errors
    def import_(
        bundle: Path = typer.Argument(..., help="A .pvid bundle written by `pv export --bundle`."),
        name: str = typer.Option(None, "--name", "-n", help="Import under this name (default: the bundle's)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing identity of that name."),
        as_json: bool = JSON_OPT,
    ):
        """Import an identity bundle; nothing is written unless the whole archive checks out."""
        from .. import api

        record = api.import_identity(bundle, name=name, force=force, context=state.context(as_json))
        emit(record if as_json else record["name"], as_json)
