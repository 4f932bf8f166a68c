"""`pv generate`: render a clip of a tuned identity."""

from __future__ import annotations

from pathlib import Path

import typer

from ..console import emit
from .common import DEVICE_OPT, JSON_OPT, PROFILE_OPT, QUIET_OPT, SET_OPT, AppState, handle_errors


def register(app: typer.Typer, state: AppState) -> None:
    @app.command()
    @handle_errors
    def generate(
        name: str = typer.Argument(..., help="Identity name (see `pv list`)."),
        prompt: str = typer.Argument(..., help="What the person does; the identity phrase is added unless {id} is used."),
        output: Path = typer.Option(None, "--output", "-o", help="Output .mp4 (default: NAME_PROMPT_sSEED.mp4)."),
        profile: str = PROFILE_OPT,
        sets: list[str] = SET_OPT,
        seed: int = typer.Option(None, "--seed"),
        steps: int = typer.Option(None, "--steps", help="Denoising steps."),
        frames: int = typer.Option(None, "--frames", help="Number of frames."),
        fps: int = typer.Option(None, "--fps", help="Frames per second of the mp4."),
        height: int = typer.Option(None, "--height"),
        width: int = typer.Option(None, "--width"),
        guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
        negative: str = typer.Option(None, "--negative", help="Negative prompt."),
        adapter_scale: float = typer.Option(None, "--adapter-scale", help="Strength of the identity adapter."),
        no_adapter: bool = typer.Option(False, "--no-adapter", help="Generate with the base model (adapter off)."),
        device: str = DEVICE_OPT,
        as_json: bool = JSON_OPT,
        quiet: bool = QUIET_OPT,
    ):
        """Generate an mp4 of an identity; prints the output path."""
        from .. import api
        from ..jobs.generate import default_output

        identity = api.Identity.load(name, profile=profile, overrides=sets, context=state.context(quiet or as_json, device))
        values = dict(seed=seed, steps=steps, frames=frames, fps=fps, height=height, width=width, guidance=guidance,
                      negative=negative, adapter_scale=adapter_scale)
        out = output or default_output(name, prompt, identity.settings(**values).generate.seed)
        video = identity.generate(prompt, output=out, adapter=not no_adapter, **values)
        record = {"path": str(video.path), **video.record}
        emit(record if as_json else record["path"], as_json)
