"""The `pv` command line. Thin: parse, resolve settings, call a job, print the result.
Heavy imports (torch, diffusers) happen inside the jobs, so `pv --help` stays fast."""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

import typer

from . import __version__
from .console import RichReporter, emit, err
from .errors import PVError
from .settings import DEFAULT_PROFILE, parse_set, read_profile, resolve, shipped_profiles
from .store import Store

JSON_OPT = typer.Option(False, "--json", help="Print the result as one line of JSON on stdout; no progress bars.")
SET_OPT = typer.Option(None, "--set", help="Override a setting: --set tune.lr=5e-4 (repeatable).")
PROFILE_OPT = typer.Option(None, "--profile", "-p", help="Profile name (see `pv profiles`) or YAML file.")
DEVICE_OPT = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress output on stderr.")


def _fail(message: str, hint: str | None = None, code: int = 1):
    err.print(f"[red]Error:[/red] {message}", soft_wrap=True)
    if hint:
        err.print(f"  {hint}", soft_wrap=True, style="dim")
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
            _fail(exc.message, exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/yellow] Nothing was saved for the unfinished job.")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("PV_DEBUG"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  "this is a bug in pv or a plugin; rerun with PV_DEBUG=1 for the traceback")

    return wrapper


def _overlays(flags: dict, sets: list[str] | None) -> list[dict]:
    """--set items, then explicit flags (which win), as settings overlays."""
    nested: dict = {}
    for path, value in flags.items():
        if value is None:
            continue
        section, key = path.split(".")
        nested.setdefault(section, {})[key] = value
    return [parse_set(sets or []), nested]


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="pv", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
        help="PersonalVideo: teach a text-to-video model a person's identity from one photo, then make videos of them.",
    )

    loaded = {}

    def _registry():
        """Plugins load once per app (so a broken plugin warns once), and only when needed."""
        if "registry" not in loaded:
            from .plugins import build_plugin_manager

            loaded["registry"] = build_plugin_manager(warn=lambda m: err.print(f"[yellow]Warning:[/yellow] {m}"))
        return loaded["registry"]

    @app.callback(invoke_without_command=True)
    def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
        if version:
            emit(__version__, False)
            raise typer.Exit()

    @app.command()
    @handle_errors
    def tune(
        photos: list[str] = typer.Argument(None, help="Reference photo(s): files, folders or globs."),
        name: str = typer.Option(None, "--name", "-n", help="Name of the identity to create."),
        resume: str = typer.Option(None, "--resume", help="Resume the interrupted run of this identity."),
        profile: str = PROFILE_OPT,
        sets: list[str] = SET_OPT,
        steps: int = typer.Option(None, "--steps", help="Tuning steps."),
        lr: float = typer.Option(None, "--lr", help="Learning rate."),
        seed: int = typer.Option(None, "--seed", help="Seed for noise, prompts and frames."),
        rank: int = typer.Option(None, "--rank", help="LoRA rank of the identity adapter."),
        targets: str = typer.Option(None, "--targets", help="Adapter target set: attention or spatial."),
        class_word: str = typer.Option(None, "--class-word", help="Class word in prompts: person, man, woman..."),
        encoder: str = typer.Option(None, "--encoder", help="Identity encoder for the ID loss (see `pv plugins`)."),
        face_index: int = typer.Option(0, "--face-index", min=0, help="Use the N-th largest face of each photo."),
        prompts: str = typer.Option(None, "--prompts", help="File of tuning prompts (one per line, {id} = identity)."),
        prompts_mode: str = typer.Option(None, "--prompts-mode", help="replace (default) or extend the built-in prompts."),
        augment: bool = typer.Option(None, "--augment/--no-augment", help="Simulated prompt augmentation (default on)."),
        active_fraction: float = typer.Option(None, "--active-fraction",
                                              help="Adapter active in the last fraction of denoising steps (1 = all)."),
        scr_weight: float = typer.Option(None, "--scr-weight", help="Semantic Consistency Reward weight (0 = off)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing identity of that name."),
        device: str = DEVICE_OPT,
        as_json: bool = JSON_OPT,
        quiet: bool = QUIET_OPT,
    ):
        """Tune an identity adapter from reference photo(s); `--resume NAME` finishes an interrupted run."""
        from . import jobs

        reporter = RichReporter(quiet=quiet or as_json)
        if resume:
            if photos or name or profile or sets:
                raise PVError("--resume takes the photos, profile and settings of the interrupted run",
                              "only --steps, --device and output options may be given with it")
            info = jobs.tune(_registry(), Store(), [], resume, None, "", resume=True, steps=steps, device=device,
                             reporter=reporter)
            name = resume
        else:
            if not photos or not name:
                raise PVError("tune needs reference photo(s) and --name", "e.g. pv tune face.jpg --name alice")
            flags = {"tune.steps": steps, "tune.lr": lr, "tune.seed": seed, "adapter.rank": rank,
                     "adapter.targets": targets, "tune.class_word": class_word, "tune.prompts_mode": prompts_mode,
                     "encoder.name": encoder,
                     "tune.augment": augment, "adapter.active_fraction": active_fraction, "tune.scr_weight": scr_weight}
            prof, settings = resolve(profile, _overlays(flags, sets))
            info = jobs.tune(_registry(), Store(), photos, name, settings, prof, force=force, face_index=face_index,
                             prompts_file=prompts, device=device, reporter=reporter)
        if not (quiet or as_json):
            before, after = info["held_out_id_sim_before"], info["held_out_id_sim_after"]
            err.print(f"[green]Tuned[/green] {name}: {info['steps']} steps, {info['seconds_per_step']} s/step; "
                      f"held-out ID similarity ({info['encoder']}) {before} -> {after}")
            if info["note"]:
                err.print(f"[dim]Note: {info['note']}[/dim]")
        emit(info if as_json else name, as_json)

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
        from . import jobs
        from .identity import read_settings
        from .settings import from_dict

        store = Store()
        store.load_info(name)
        flags = {"generate.seed": seed, "generate.steps": steps, "generate.frames": frames, "generate.fps": fps,
                 "generate.height": height, "generate.width": width, "generate.guidance_scale": guidance,
                 "generate.negative_prompt": negative, "generate.adapter_scale": adapter_scale}
        if profile:
            _, settings = resolve(profile, _overlays(flags, sets))
        else:  # the identity's own resolved settings, then overrides
            settings = from_dict(read_settings(store.path(name)), _overlays(flags, sets))
        out = output or jobs.default_output(name, prompt, settings.generate.seed)
        record = jobs.generate(_registry(), store, name, prompt, settings, out, device=device, adapter=not no_adapter,
                               reporter=RichReporter(quiet=quiet or as_json))
        emit(record if as_json else record["path"], as_json)

    @app.command("eval")
    @handle_errors
    def eval_(
        target: str = typer.Argument(..., help="A video, a folder of videos, or an identity name (clips are generated)."),
        refs: list[str] = typer.Option(None, "--ref", help="Reference photo(s) or identity name (repeatable)."),
        prompts: list[str] = typer.Option(None, "--prompt", help="Prompt(s): the text for CLIP-T; for an identity, "
                                          "what to generate (repeatable)."),
        seeds: list[int] = typer.Option(None, "--seed", help="Seeds to generate with, for an identity (repeatable)."),
        encoders: list[str] = typer.Option(None, "--encoder", help="Identity encoder(s) to judge with (repeatable; "
                                           "default: the identity's own, else facenet)."),
        scorer: str = typer.Option("clip", "--scorer", help="Image-text model for CLIP-T / temporal consistency."),
        scorer_opts: list[str] = typer.Option(None, "--scorer-option", help="key=value for the scorer, e.g. model=PATH."),
        flow: str = typer.Option("auto", "--flow", help="Optical flow for Dynamic Degree: auto, raft or farneback."),
        no_face: str = typer.Option("skip", "--no-face", help="Frames without a face: skip (the papers' protocol) "
                                    "or center (score the centre crop, e.g. for the tiny backbone)."),
        compare_base: bool = typer.Option(False, "--compare-base", help="Identity only: also generate with the "
                                          "adapter off (same prompts and seeds) and compare."),
        out_dir: Path = typer.Option(None, "--out-dir", help="Where generated clips go (default: a temp folder)."),
        csv_path: Path = typer.Option(None, "--csv", help="Write per-video metrics as CSV."),
        sheets: Path = typer.Option(None, "--sheets", help="Folder for contact-sheet PNGs (one per video)."),
        device: str = DEVICE_OPT,
        as_json: bool = JSON_OPT,
        quiet: bool = QUIET_OPT,
    ):
        """Measure identity (Face Sim), prompt following (CLIP-T), motion and temporal consistency."""
        from . import evaluation as ev
        from .identity import read_settings
        from .settings import from_dict

        if flow not in ("auto", "raft", "farneback"):
            raise PVError(f"--flow must be auto, raft or farneback, got {flow!r}")
        if no_face not in ("skip", "center"):
            raise PVError(f"--no-face must be skip or center, got {no_face!r}")
        store, reporter, registry = Store(), RichReporter(quiet=quiet or as_json), _registry()
        scorer_options = parse_set(scorer_opts or [])
        paths = ev.video_paths(target)
        identity = None
        if paths is None:
            if not store.exists(target):
                raise PVError(f"{target!r} is neither a video, a folder nor an identity",
                              f"identities: {', '.join(store.names()) or 'none yet'}")
            identity = target
        elif compare_base:
            raise PVError("--compare-base needs an identity name, not videos")
        if identity is None and not refs:
            from .video import read_metadata

            named = {read_metadata(p).get("identity") for p in paths} - {None}
            refs = [n for n in named if store.exists(n)]
            if not refs:
                raise PVError("no reference: pass --ref PHOTO or --ref IDENTITY")
        refs = refs or [identity]
        if not encoders:
            own = store.load_info(identity).get("encoder") if identity else None
            encoders = [own or "facenet"]
        evaluator = ev.Evaluator(registry, ev.reference_photos(store, refs), encoders, scorer, scorer_options, flow,
                                 device or "cpu", reporter, no_face)
        if identity:
            settings = from_dict(read_settings(store.path(identity)))
            out = out_dir or ev.default_out_dir(identity)
            plist = prompts or ev.EVAL_PROMPTS
            slist = seeds or [0]
            groups = ev.generate_clips(registry, store, identity, plist, slist, settings, out, device, reporter,
                                       compare_base)
        else:
            groups = {"videos": ev.load_clips(paths, prompts[0] if prompts else None)}
        result: dict = {"videos": []}
        for group, clips in groups.items():
            rows = []
            for clip in clips:
                row = {"group": group, **evaluator.clip(clip)}
                if sheets:
                    row["contact_sheet"] = str(evaluator.contact_sheet(clip, sheets / f"{clip.path.stem}.png"))
                rows.append(row)
            result["videos"] += rows
            result[group if group != "videos" else "aggregate"] = ev.aggregate(rows)
        if compare_base:
            t, b = result["tuned"], result["base"]
            result["delta"] = {k: {n: _diff(t[k][n], b[k][n]) for n in t[k]} if isinstance(t[k], dict)
                               else _diff(t[k], b[k]) for k in t if k != "videos"}
        if csv_path:
            from .store import atomic_write_bytes

            atomic_write_bytes(csv_path, ev.csv_text(result["videos"]).encode())
        if not (quiet or as_json):
            _eval_table(result)
        emit(result if as_json else "\n".join(r["video"] for r in result["videos"]), as_json)

    @app.command("list")
    @handle_errors
    def list_(as_json: bool = JSON_OPT):
        """List tuned identities."""
        store = Store()
        rows = [store.load_info(n) for n in store.names()]
        if as_json:
            emit([{k: r.get(k) for k in ("name", "backbone", "encoder", "steps", "created")} for r in rows], True)
            return
        for r in rows:
            emit(r["name"], False)
        if not rows:
            err.print("[dim]No identities yet: pv tune PHOTO --name NAME --profile tiny[/dim]")

    @app.command()
    @handle_errors
    def show(name: str = typer.Argument(...), as_json: bool = JSON_OPT):
        """Show an identity's details."""
        store = Store()
        info = {**store.load_info(name), "path": str(store.path(name))}
        if as_json:
            emit(info, True)
        else:
            for k, v in info.items():
                emit(f"{k}: {v}", False)

    @app.command()
    @handle_errors
    def rm(name: str = typer.Argument(...), yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")):
        """Delete an identity (and any interrupted tuning run of that name)."""
        from .runs import Run

        store = Store()
        run = Run(store, name)
        if not run.exists():
            store.load_info(name)  # the "no identity named ..." error
        what = "identity" if store.exists(name) else "interrupted run"
        if not yes:
            if not sys.stdin.isatty():
                raise PVError(f"refusing to delete {name!r} without confirmation", "pass --yes")
            if not typer.confirm(f"Delete {what} {name!r}?", err=True):
                raise typer.Exit(1)
        if run.exists():
            run.remove()
            if what == "interrupted run":
                emit(str(run.root), False)
        if store.exists(name):
            emit(str(store.remove(name)), False)

    @app.command()
    @handle_errors
    def plugins(as_json: bool = JSON_OPT):
        """List plugins, their versions and what each registered."""
        reg = _registry()
        rows = [{"name": p.name, "version": p.version, "hooks": p.hooks, "registered": p.registered,
                 **({"error": p.error} if p.error else {})} for p in reg.plugins.values()]
        if as_json:
            emit(rows, True)
            return
        for r in rows:
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registered"].items()) or "nothing"
            line = f"{r['name']} {r['version'] or ''}".strip() + f"  ({what})"
            emit(line + (f"  ERROR: {r['error']}" if r.get("error") else ""), False)

    @app.command()
    @handle_errors
    def profiles(
        show: str = typer.Option(None, "--show", help="Print a profile's fully resolved settings as YAML."),
        as_json: bool = JSON_OPT,
    ):
        """List the shipped profiles, or show one resolved."""
        import yaml

        if show:
            _, settings = resolve(show)
            emit(settings.to_dict() if as_json else yaml.safe_dump(settings.to_dict(), sort_keys=False).rstrip(), as_json)
            return
        rows = []
        for name in sorted(shipped_profiles()):
            _, data = read_profile(name)
            rows.append({"name": name, "default": name == DEFAULT_PROFILE, "description": data.get("description", "")})
        if as_json:
            emit(rows, True)
        else:
            for r in rows:
                emit(f"{r['name']}{' (default)' if r['default'] else ''}: {r['description']}", False)

    @app.command()
    @handle_errors
    def env(as_json: bool = JSON_OPT):
        """Versions, devices and providers, for bug reports."""
        from importlib.metadata import PackageNotFoundError, version

        info = {"pv": __version__, "python": platform.python_version(), "platform": platform.platform(),
                "pv_home": str(Store().root.parent)}
        for pkg in ("torch", "diffusers", "transformers", "peft", "onnxruntime", "onnxruntime-gpu", "insightface",
                    "opencv-python", "moviepy", "imageio-ffmpeg"):
            try:
                info[pkg] = version(pkg)
            except PackageNotFoundError:
                info[pkg] = None
        import torch

        info["cuda"] = torch.cuda.is_available()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        try:
            import onnxruntime

            info["onnxruntime_providers"] = onnxruntime.get_available_providers()
        except ImportError:
            info["onnxruntime_providers"] = []
        try:
            import imageio_ffmpeg

            info["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_exe()
        except Exception:
            info["ffmpeg"] = None
        if as_json:
            emit(info, True)
        else:
            for k, v in info.items():
                emit(f"{k}: {v}", False)

    reg_hooks = os.environ.get("PV_PLUGINS", None) != ""
    if reg_hooks:
        try:
            _registry().pm.hook.register_commands(app=app)
        except Exception as exc:
            err.print(f"[yellow]Warning:[/yellow] a plugin failed to add commands: {exc}")
    return app


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 4)


def _eval_table(result: dict) -> None:
    from rich.table import Table

    groups = [g for g in ("aggregate", "tuned", "base", "delta") if g in result]
    first = result[groups[0]]
    encoders = list(first["face_sim"])
    table = Table(title="pv eval", title_justify="left")
    table.add_column("metric")
    for g in groups:
        table.add_column(g, justify="right")
    metric_rows = [(f"face_sim ({n})", "face_sim", n) for n in encoders]
    metric_rows += [(f"face_detect_rate ({n})", "face_detect_rate", n) for n in encoders]
    metric_rows += [(m, m, None) for m in ("clip_t", "dynamic_degree", "temporal_consistency")]
    for label, key, sub in metric_rows:
        cells = []
        for g in groups:
            v = result[g].get(key)
            v = v.get(sub) if sub is not None and isinstance(v, dict) else v
            cells.append("-" if v is None else f"{v:.4f}")
        table.add_row(label, *cells)
    err.print(table)
    notes = {k: v for r in result["videos"] for k, v in r["notes"].items()}
    for k, v in notes.items():
        err.print(f"[dim]{k}: {v}[/dim]")


def main() -> None:
    create_app()()
