"""`pv tune`: learn an identity from photos, or finish an interrupted run."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ..api import PVError
from ..console import emit, err
from .common import DEVICE_OPT, FORCE_OPT, JSON_OPT, PROFILE_OPT, QUIET_OPT, SET_OPT, AppState, handle_errors


def drop_option(argv: list[str], option: str) -> list[str]:
    """argv without `option VALUE` / `option=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def register(app: typer.Typer, state: AppState) -> None:
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
        face_index: int = typer.Option(None, "--face-index", min=0, help="Use the N-th largest face of each photo "
                                       "(default 0: the largest)."),
        prompts: str = typer.Option(None, "--prompts", help="File of tuning prompts (one per line, {id} = identity)."),
        prompts_mode: str = typer.Option(None, "--prompts-mode", help="replace (default) or extend the built-in prompts."),
        augment: bool = typer.Option(None, "--augment/--no-augment", help="Simulated prompt augmentation (default on)."),
        active_fraction: float = typer.Option(None, "--active-fraction",
                                              help="Adapter active in the last fraction of denoising steps (1 = all; "
                                                   "use 1 for identities you mainly export to other tools)."),
        scr_weight: float = typer.Option(None, "--scr-weight", help="Semantic Consistency Reward weight (0 = off)."),
        manifest: str = typer.Option(None, "--manifest", help="A YAML list of identities (name, photos, optional "
                                     "profile/settings/set each): tuned in turn, finished ones skipped, interrupted "
                                     "ones resumed; one line (or JSON record) per identity on stdout."),
        shard: str = typer.Option(None, "--shard", help="With --manifest: take shard i/n of the entries (job arrays)."),
        processes: int = typer.Option(None, "--processes", min=1,
                                      help="Tune on N local processes (data parallel, one GPU each; started with "
                                           "torchrun; `accelerate launch -m pvcli tune ...` works too)."),
        clips_per_step: int = typer.Option(None, "--clips-per-step", min=1,
                                           help="Clips per optimizer step, gradients accumulated (the one-device "
                                                "equivalent of --processes)."),
        report_to: str = typer.Option(None, "--report-to", help="Log every step's scalars, the samples and the "
                                      "settings to tensorboard or wandb (pip install \"pv\\[tracking]\"), or none."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and do nothing: the traced peak GPU "
                                     "memory per phase, what pv will set to fit the card, the estimated step time "
                                     "(offline: no download, no GPU, the photos only checked to exist)."),
        gpu_memory: str = typer.Option(None, "--gpu-memory", help="With --dry-run: plan for a card of this many GiB "
                                       "(default: tune.memory, else this machine's GPU, else every card class)."),
        force: bool = FORCE_OPT,
        device: str = DEVICE_OPT,
        as_json: bool = JSON_OPT,
        quiet: bool = QUIET_OPT,
    ):
        """Tune an identity adapter from reference photo(s); `--resume NAME` finishes an interrupted run."""
        from .. import api

        if processes and processes > 1:
            raise typer.Exit(api.launch_processes(processes, drop_option(sys.argv[1:], "--processes")))
        if gpu_memory is not None and not dry_run:
            raise PVError("--gpu-memory goes with --dry-run", "to tune for a card of N GiB: --set tune.memory=N")
        ctx = state.context(quiet or as_json, device)
        flags = dict(lr=lr, seed=seed, rank=rank, targets=targets, class_word=class_word, prompts_mode=prompts_mode,
                     encoder=encoder, augment=augment, active_fraction=active_fraction, scr_weight=scr_weight,
                     report_to=report_to)
        if dry_run:
            if resume or manifest or shard:
                raise PVError("--dry-run plans one new tuning run", "give photos, --profile and settings, no --resume "
                              "or --manifest")
            plan = api.plan_tuning(photos or [], profile=profile, overrides=sets, gpu_memory=gpu_memory, context=ctx,
                                   steps=steps, clips_per_step=clips_per_step, **flags)
            from ..api import plan_text as describe

            emit(plan if as_json else describe(plan), as_json)
            return
        if manifest or shard:
            _check_manifest_flags(manifest, bool(photos or name or resume), force)
            _print_manifest(api.tune_manifest(manifest, shard=shard, profile=profile, overrides=sets, context=ctx,
                                              face_index=face_index, prompts_file=prompts, steps=steps,
                                              clips_per_step=clips_per_step, **flags), as_json)
            return
        if resume:
            if photos or name or profile:
                raise PVError("--resume takes the photos and profile of the interrupted run",
                              "give only --resume NAME; --steps and --clips-per-step may change, other settings "
                              "must match the run's")
            identity = api.resume(resume, steps=steps, context=ctx, clips_per_step=clips_per_step, force=force,
                                  overrides=sets, face_index=face_index, prompts_file=prompts,
                                  **{k: v for k, v in flags.items() if v is not None})
        else:
            if not photos or not name:
                raise PVError("tune needs reference photo(s) and --name", "e.g. pv tune face.jpg --name alice")
            identity = api.tune(photos, name, profile=profile, overrides=sets, force=force,
                                face_index=face_index or 0, prompts_file=prompts, context=ctx, steps=steps,
                                clips_per_step=clips_per_step, **flags)
        if api.is_replica():  # data parallel: the main process reports, once
            return
        info = identity.info
        if not (quiet or as_json):
            err.print(_summary(info), soft_wrap=True)
            if info["note"]:
                err.print(f"[dim]Note: {escape(info['note'])}[/dim]", soft_wrap=True)
        emit(info if as_json else identity.name, as_json)


def _check_manifest_flags(manifest: str | None, names_identities: bool, force: bool) -> None:
    if names_identities:
        raise PVError("--manifest names the identities and photos itself",
                      "give only --manifest (with --shard, --profile, --set and tuning options)")
    if not manifest:
        raise PVError("--shard needs --manifest")
    if force:
        raise PVError("--force does not apply to --manifest: finished identities are skipped, never replaced",
                      "remove one with `pv rm NAME` to tune it again")


def _print_manifest(records, as_json: bool) -> None:
    """One line (or JSON record) per identity as it finishes; failures only as JSON, then counted."""
    failed = 0
    for record in records:
        failed += record["status"] == "failed"
        if record["status"] != "failed" or as_json:
            emit(record if as_json else record["name"], as_json)
    if failed:
        raise PVError(f"{failed} identit{'y' if failed == 1 else 'ies'} of the manifest failed (see above)")


def _summary(info: dict) -> str:
    before, after = info["held_out_id_sim_before"], info["held_out_id_sim_after"]
    from ..api import held_out_at_text

    size = f" at {held_out_at_text(info)}" if info.get("held_out_at") else ""
    held_out = (f"held-out ID similarity ({info['encoder']}) {before} -> {after}{size}" if after is not None
                else "held-out ID similarity not measured (tune.held_out=0)")
    return (f"[green]Tuned[/green] {escape(info['name'])}: {info['steps']} steps, {info['seconds_per_step']} s/step; "
            f"{escape(held_out)}")
