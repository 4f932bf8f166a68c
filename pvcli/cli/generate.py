"""`pv generate`: render clips of a tuned identity: one prompt, or many (stdin, a file, several
seeds) with one model load, each path printed as soon as its file is written."""

from __future__ import annotations

from pathlib import Path

import typer

from ..api import PVError
from ..console import emit
from .common import DEVICE_OPT, JSON_OPT, PROFILE_OPT, QUIET_OPT, SET_OPT, AppState, handle_errors


def register(app: typer.Typer, state: AppState) -> None:
    @app.command()
    @handle_errors
    def generate(
        name: str = typer.Argument(..., help="Identity name (see `pv list`); with --id, the prompt."),
        prompt: str = typer.Argument(None, help="What the person does; the identity phrase is added unless {id} is "
                                     "used. '-' reads prompts from stdin: one per line, or JSON lines with prompt, "
                                     "seed, negative, output."),
        output: str = typer.Option(None, "--output", "-o", help="Output: .mp4, .gif, .webp, or a folder of PNG "
                                   "frames (no suffix). For several clips a template: {name} {slug} {seed} {index} "
                                   "(default: NAME_SLUG_sSEED.mp4)."),
        prompts_file: Path = typer.Option(None, "--prompts", help="File of prompts (same format as stdin)."),
        profile: str = PROFILE_OPT,
        sets: list[str] = SET_OPT,
        seeds: list[int] = typer.Option(None, "--seed", help="Seed (repeatable: every prompt renders once per seed)."),
        num: int = typer.Option(None, "--num", min=1, help="N clips per prompt, seeds counting up from each --seed."),
        steps: int = typer.Option(None, "--steps", help="Denoising steps."),
        frames: int = typer.Option(None, "--frames", help="Number of frames."),
        fps: int = typer.Option(None, "--fps", help="Frames per second of the clip."),
        height: int = typer.Option(None, "--height"),
        width: int = typer.Option(None, "--width"),
        guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
        negative: str = typer.Option(None, "--negative", help="Negative prompt."),
        adapter_scale: float = typer.Option(None, "--adapter-scale", help="Strength of the identity adapter."),
        no_adapter: bool = typer.Option(False, "--no-adapter", help="Generate with the base model (adapter off)."),
        video: Path = typer.Option(None, "--video", help="Restyle this clip with the identity (video-to-video; a "
                                   "video, folder of frames or image, resampled to --frames)."),
        strength: float = typer.Option(None, "--strength", help="Video-to-video: how much is redrawn (0-1, default "
                                       "0.6)."),
        control: list[str] = typer.Option(None, "--control", help="ControlNet TYPE=SOURCE: canny, depth, pose or "
                                          "lineart maps of a video, a folder of frames or one image (repeatable)."),
        control_raw: list[str] = typer.Option(None, "--control-raw", help="ControlNet TYPE=SOURCE whose frames "
                                              "are ready control maps (repeatable)."),
        control_scale: list[float] = typer.Option(None, "--control-scale", help="ControlNet strength: one value "
                                                  "for all, or one per control in order (default 1)."),
        control_start: list[float] = typer.Option(None, "--control-start", help="Fraction of the steps where "
                                                  "control starts (one, or one per control)."),
        control_end: list[float] = typer.Option(None, "--control-end", help="Fraction of the steps where control "
                                                "ends (one, or one per control)."),
        control_model: list[str] = typer.Option(None, "--control-model", help="TYPE=MODEL: the ControlNet for a "
                                                "type (hub id, folder or single file)."),
        lora: list[str] = typer.Option(None, "--lora", help="Style LoRA PATH_OR_ID[:WEIGHT] (diffusers or "
                                       "kohya/A1111 keys; repeatable)."),
        addon: list[str] = typer.Option(None, "--addon", help="Any conditioner plugin: NAME:key=value,key=value "
                                        "(see `pv plugins`; repeatable)."),
        ids: list[str] = typer.Option(None, "--id", help="Several identities in one clip: pv generate PROMPT --id "
                                      "alice --id bob (NAME, NAME:WEIGHT, NAME=box:x1,y1,x2,y2 in fractions of the "
                                      "frame); names in the prompt become each identity's phrase."),
        layout: str = typer.Option("left-right", "--layout", help="With --id and no boxes: left-right or top-bottom "
                                   "regions, in --id order."),
        region_mode: str = typer.Option("latent", "--region-mode", help="With --id: latent (each identity's "
                                        "prediction in its region of the latent grid; N+1 passes per step) or "
                                        "layer (one pass, each adapted layer masked per token)."),
        device: str = DEVICE_OPT,
        as_json: bool = JSON_OPT,
        quiet: bool = QUIET_OPT,
    ):
        """Generate clips of an identity; prints each output path (or JSON record) as it is written."""
        from .. import api

        if ids:
            if prompt is not None:
                raise PVError(f"with --id the prompt comes first and alone; got {name!r} and {prompt!r}",
                              'e.g. pv generate "alice and bob shaking hands" --id alice --id bob')
            name, prompt = None, name

        controls = control_specs(control or [], control_raw or [], control_scale or [], control_start or [],
                                 control_end or [], control_model or [])
        clips = api.generate_clips(
            name, prompt, prompts_file=prompts_file, output=output, seeds=seeds, num=num, adapter=not no_adapter,
            controls=controls, loras=lora or [], addons=[addon_spec(a) for a in addon or []], video=video,
            profile=profile, overrides=sets, context=state.context(quiet or as_json, device), steps=steps,
            frames=frames, fps=fps, height=height, width=width, guidance=guidance, negative=negative,
            adapter_scale=adapter_scale, strength=strength, identities=ids or None, layout=layout,
            region_mode=region_mode)
        for clip in clips:  # each result on stdout as soon as its file exists: `| xargs` streams
            record = {"path": str(clip.path), **clip.record}
            emit(record if as_json else record["path"], as_json)


def _pair(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise PVError(f"{flag} expects TYPE=VALUE, got {item!r}", f"e.g. {flag} canny=clip.mp4")
    return key.strip(), value


def _per_control(values: list[float], count: int, flag: str) -> list[float | None]:
    if not values:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise PVError(f"{flag} was given {len(values)} times for {count} controls", "give it once, or once per control")
    return values


def control_specs(control: list[str], raw: list[str], scales: list[float], starts: list[float], ends: list[float],
                  models: list[str]) -> list[dict]:
    """--control/--control-raw TYPE=SOURCE with their per-control scale/start/end and per-type model."""
    items = [(*_pair(c, "--control"), False) for c in control] + [(*_pair(c, "--control-raw"), True) for c in raw]
    model_for = dict(_pair(m, "--control-model") for m in models)
    n = len(items)
    specs = []
    for (kind, source, is_raw), scale, start, end in zip(
            items, _per_control(scales, n, "--control-scale"), _per_control(starts, n, "--control-start"),
            _per_control(ends, n, "--control-end"), strict=True):
        spec = {"type": kind, "source": source, "raw": is_raw, "scale": scale, "start": start, "end": end,
                "model": model_for.get(kind)}
        specs.append({k: v for k, v in spec.items() if v is not None})
    unused = set(model_for) - {s["type"] for s in specs}
    if unused:
        raise PVError(f"--control-model {sorted(unused)[0]}=... names no --control of that type")
    return specs


def addon_spec(item: str):
    """NAME:key=value,key=value -> AddOn (values parsed as YAML scalars, as --set does)."""
    from ..api import AddOn
    from ..settings import parse_set

    name, _, rest = item.partition(":")
    if not name.strip():
        raise PVError(f"--addon expects NAME:key=value,..., got {item!r}")
    return AddOn(name.strip(), parse_set([kv for kv in rest.split(",") if kv]) if rest else {})
