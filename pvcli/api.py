"""pv's Python API: what the CLI does, callable from a notebook or a script.

    import pvcli as pv

    alice = pv.tune(["face.jpg"], name="alice", profile="tiny", steps=30)
    clip = alice.generate("surfing at sunset", seed=1, output="surf.mp4")
    clip.frames.shape                      # (frames, height, width, 3) uint8
    pv.evaluate("surf.mp4", refs=["alice"])  # the dict `pv eval --json` prints

Importing this module imports no torch; models load on first use. Errors are `PVError`
(message + hint), as in the CLI. Progress goes to `progress=callback` as `ProgressEvent`s.
Settings are layered as in the CLI: pv's defaults -> profile -> `overrides` (dotted keys,
e.g. {"tune.sample_every": 10}) -> keyword settings (the CLI's flags, e.g. steps=30)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .context import Context
from .errors import PVError
from .jobs.generate import DEFAULT_OUTPUT, AddOn, ClipRequest, Video
from .jobs.manage import LIST_FIELDS
from .reporting import ProgressEvent, Reporter, reporter_for
from .settings import overlay
from .store import Store

__all__ = ["AddOn", "ClipRequest", "Context", "Identity", "PVError", "ProgressEvent", "Video", "evaluate", "evaluate_identities", "export", "import_identity",
           "identity_report", "list_identities", "resume", "tune",
           # The CLI's door (pvcli.cli imports only this module, settings and console): the API above,
           # plus what a front end needs to build a context, launch processes and list things.
           "LIST_FIELDS", "DEFAULT_OUTPUT", "make_context", "plugin_registry", "is_replica", "launch_processes",
           "generate_clips", "plan_text", "plan_changes_text", "show_identity", "removable", "remove_identity", "plugin_rows", "profile_rows",
           "environment"]

TUNE_SETTINGS = {
    "steps": "tune.steps", "lr": "tune.lr", "seed": "tune.seed", "rank": "adapter.rank",
    "targets": "adapter.targets", "class_word": "tune.class_word", "prompts_mode": "tune.prompts_mode",
    "encoder": "encoder.name", "augment": "tune.augment", "active_fraction": "adapter.active_fraction",
    "scr_weight": "tune.scr_weight", "clips_per_step": "tune.clips_per_step", "report_to": "tune.report_to",
}
GENERATE_SETTINGS = {
    "seed": "generate.seed", "steps": "generate.steps", "frames": "generate.frames", "fps": "generate.fps",
    "height": "generate.height", "width": "generate.width", "guidance": "generate.guidance_scale",
    "negative": "generate.negative_prompt", "adapter_scale": "generate.adapter_scale",
    "strength": "generate.strength", "context_length": "generate.context_length",
    "context_stride": "generate.context_stride",
}

Progress = Callable[[ProgressEvent], None] | Reporter | None
Overrides = dict[str, Any] | Iterable[str] | None


def lora_spec(spec: str | tuple[str, float]) -> tuple[str, float]:
    """"style.safetensors:0.7" or ("style.safetensors", 0.7) -> (source, weight); weight 1 if not given."""
    if not isinstance(spec, str):
        source, weight = spec
        return str(source), float(weight)
    import math

    source, sep, tail = spec.rpartition(":")
    if sep and source:
        try:
            weight = float(tail)
        except ValueError:
            weight = None
        if weight is not None and math.isfinite(weight):
            return source, weight
        # "style.safetensors:abc" is a bad weight, not a file of that name (C:\x.safetensors is a path)
        if weight is not None or (not Path(spec).expanduser().exists() and not any(c in tail for c in "/\\")):
            raise PVError(f"--lora {source}: the weight {tail!r} after ':' is not a number",
                          f"e.g. --lora {source}:0.8 (without ':WEIGHT' it is 1.0)")
    return spec, 1.0


def make_context(reporter: Reporter | None = None, device: str | None = None, registry_factory=None) -> Context:
    """A context over the store at PV_HOME; `registry_factory` shares one plugin registry between calls."""
    return Context(store=Store(), reporter=reporter or Reporter(), device=device, registry_factory=registry_factory)


def plugin_registry(warn=None):
    """Every installed pv plugin, registered (a broken plugin is reported through `warn`)."""
    from .plugins import build_plugin_manager

    return build_plugin_manager(warn=warn) if warn is not None else build_plugin_manager()


def is_replica() -> bool:
    """True in a data-parallel process other than the main one (which alone reports)."""
    from .distributed import is_replica as replica

    return replica()


def launch_processes(count: int, argv: list[str]) -> int:
    """Run `pv ARGV` on `count` local processes (data parallel); returns the exit code."""
    from .distributed import launch

    return launch(count, argv)


def _context(context: Context | None, device: str | None, progress: Progress) -> Context:
    if context is not None:
        return context
    return Context(store=Store(), reporter=reporter_for(progress), device=device)


def _extras(controls, loras, addons) -> list[AddOn]:
    """Generation add-ons from the API's shorthands: ControlNet dicts, "file:weight" LoRAs, AddOns."""
    return [*(AddOn("controlnet", dict(c)) for c in controls or []),
            *(AddOn("lora", {"source": src, "weight": w}) for src, w in map(lora_spec, loras or [])),
            *(addons or [])]


def _overlays(aliases: dict[str, str], values: dict[str, Any], overrides: Overrides) -> list[dict]:
    """Overrides (dotted keys or "a.b=v" strings), then keyword settings (which win)."""
    from .settings import parse_set

    unknown = sorted(set(values) - set(aliases))
    if unknown:
        raise PVError(f"unknown setting {unknown[0]!r}",
                      f"known: {', '.join(aliases)}; anything else via overrides={{'section.key': value}}")
    if overrides is None:
        first = {}
    elif isinstance(overrides, dict):
        first = overlay(overrides)
    else:
        first = parse_set(list(overrides))
    return [first, overlay({aliases[k]: v for k, v in values.items()})]


def plan_tuning(photos: str | Path | Iterable[str | Path], *, profile: str | None = None, overrides: Overrides = None,
                gpu_memory: float | str | None = None, context: Context | None = None, **settings: Any) -> dict:
    """`pv tune --dry-run`: the traced peak per phase of the profile's tuning step, what pv would set
    to fit a card of `gpu_memory` GiB (default: tune.memory, else this machine's GPU, else every card
    class) and the step's estimated time. Offline: the photos are only checked to exist."""
    from .images import expand_photos
    from .jobs.plan import dry_run
    from .settings import resolve

    prof, resolved = resolve(profile, _overlays(TUNE_SETTINGS, settings, overrides))
    photo_list = [str(photos)] if isinstance(photos, (str, Path)) else [str(p) for p in photos or []]
    if not photo_list:
        raise PVError("tune needs reference photo(s)", "e.g. pv tune face.jpg --name alice --dry-run")
    expand_photos(photo_list)  # they exist; nothing is decoded
    ctx = _context(context, None, None)
    ctx.registry.check_frames(resolved.backbone.name, resolved.tune.frames, "tune.frames")
    return dry_run(ctx, resolved, prof, gpu_memory)


def tune(photos: str | Path | Iterable[str | Path], name: str, *, profile: str | None = None,
         overrides: Overrides = None, force: bool = False, face_index: int = 0, prompts_file: str | Path | None = None,
         device: str | None = None, progress: Progress = None, context: Context | None = None,
         **settings: Any) -> Identity:
    """Tune identity `name` from reference photo(s) (files, folders or globs). Keyword settings:
    steps, lr, seed, rank, targets, class_word, prompts_mode, encoder, augment, active_fraction,
    scr_weight, report_to. The identity's `info` carries the run's numbers (held-out ID similarity before and
    after, seconds per step, peak memory)."""
    from .jobs.tune import TuneRequest
    from .jobs.tune import tune as tune_job
    from .settings import resolve

    if not name:
        raise PVError("tune needs a name for the identity", "e.g. pv tune face.jpg --name alice")
    photo_list = [str(photos)] if isinstance(photos, (str, Path)) else [str(p) for p in photos or []]
    if not photo_list:
        raise PVError("tune needs reference photo(s)", "e.g. pv tune face.jpg --name alice")
    prof, resolved = resolve(profile, _overlays(TUNE_SETTINGS, settings, overrides))
    from .paths import check_photos, read_text

    check_photos(photo_list)  # an unreadable photo or prompts file fails before any model loads
    if prompts_file:
        read_text(prompts_file, "--prompts")
    ctx = _context(context, device, progress)
    for kind, plugin in (("backbones", resolved.backbone.name), ("encoders", resolved.encoder.name)):
        ctx.registry.get(kind, plugin)  # an unknown name fails before the other model loads
    info = tune_job(ctx, TuneRequest(name, photo_list, resolved, prof, force=force, face_index=face_index,
                                     prompts_file=str(prompts_file) if prompts_file else None))
    return Identity(name, info, ctx)


def tune_manifest(manifest: str | Path, *, shard: str | None = None, profile: str | None = None,
                  overrides: Overrides = None, face_index: int | None = None, prompts_file: str | Path | None = None,
                  device: str | None = None, progress: Progress = None, context: Context | None = None,
                  **settings: Any):
    """Tune every identity of a manifest (YAML: `identities:` entries with name and photos), this
    process's share of `shard` ("i/n"); yields one record per identity (name, status: tuned /
    resumed / skipped / failed, error, path). `profile`, `overrides`, `face_index`, `prompts_file`
    and keyword settings apply over each entry's own (command-line wins); an interrupted run that
    is resumed keeps its own settings, and one that these would change fails with one line."""
    from .distributed import rank_and_world
    from .jobs.manifest import parse_shard, read_manifest, run_manifest, select

    shard_spec = parse_shard(shard)
    entries = read_manifest(manifest)
    ctx = _context(context, device, progress)
    extra = _overlays(TUNE_SETTINGS, settings, overrides)
    yield from run_manifest(ctx, select(entries, shard_spec, *rank_and_world()), extra, profile=profile,
                            face_index=face_index, prompts_file=str(prompts_file) if prompts_file else None)


def resume(name: str, *, steps: int | None = None, device: str | None = None, progress: Progress = None,
           context: Context | None = None, clips_per_step: int | None = None, force: bool = False,
           overrides: Overrides = None, face_index: int | None = None, prompts_file: str | Path | None = None,
           **settings: Any) -> Identity:
    """Finish the interrupted tuning run of `name` with its own photos and settings (`steps` may
    extend it; `clips_per_step` may change its batch, e.g. when it resumes on another number of
    processes). Any other setting given (keyword, `overrides`, `face_index`, `prompts_file`) must
    equal the run's: a change is refused with one line. An identity `name` created since the
    interruption is replaced only with `force`."""
    from .jobs.tune import resume as resume_job

    ctx = _context(context, device, progress)
    info = resume_job(ctx, name, steps=steps, clips_per_step=clips_per_step, force=force,
                      overlays=_overlays(TUNE_SETTINGS, settings, overrides), face_index=face_index,
                      prompts_file=str(prompts_file) if prompts_file else None)
    return Identity(name, info, ctx)


@dataclass
class Identity:
    """A tuned identity in the store. `generate` loads its backbone and adapter once and reuses them."""

    name: str
    info: dict = field(default_factory=dict)
    context: Context = field(default_factory=Context, repr=False)
    profile: str | None = None
    overrides: Overrides = field(default=None, repr=False)
    _renderer: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, name: str, *, profile: str | None = None, overrides: Overrides = None, device: str | None = None,
             progress: Progress = None, context: Context | None = None) -> Identity:
        """Open identity `name`; `profile`/`overrides` change the settings it renders with."""
        ctx = _context(context, device, progress)
        return cls(name, ctx.store.load_info(name), ctx, profile, overrides)

    @property
    def path(self) -> Path:
        return self.context.store.path(self.name)

    def settings(self, **settings: Any):
        """The resolved settings a `generate(**settings)` call would use."""
        from .jobs.generate import identity_settings

        return identity_settings(self.context, self.name, self.profile,
                                 _overlays(GENERATE_SETTINGS, settings, self.overrides))

    def generate(self, prompt: str, *, output: str | Path | None = None, adapter: bool = True,
                 controls: Iterable[dict] | None = None, loras: Iterable[str | tuple[str, float]] | None = None,
                 addons: Iterable[AddOn] | None = None, video: str | Path | None = None, **settings: Any) -> Video:
        """Render one clip -> `Video` (frames, record, path), written when `output` is given (.mp4,
        .gif, .webp, or a folder of PNG frames). Keyword settings: seed, steps, frames, fps, height,
        width, guidance, negative, adapter_scale, strength, context_length, context_stride.
        Add-ons: `controls=[{"type": "canny", "source": "clip.mp4", "scale": 0.8}]` (ControlNets; also
        raw, model, start, end), `loras=["style.safetensors:0.7"]` or `[("style.safetensors", 0.7)]`,
        or any registered conditioner as `addons=[pv.AddOn(name, options)]`. `video=` restyles a
        driving clip (video-to-video, `strength`)."""
        return next(self.generate_many([ClipRequest(prompt, settings.pop("seed", None), settings.pop("negative", None),
                                                    str(output) if output is not None else None)],
                                       adapter=adapter, controls=controls, loras=loras, addons=addons, video=video,
                                       _single=True, **settings))

    def generate_many(self, requests: Iterable[ClipRequest | str], *, output: str | Path | None = None,
                      seeds: Iterable[int] | None = None, adapter: bool = True,
                      controls: Iterable[dict] | None = None, loras: Iterable[str | tuple[str, float]] | None = None,
                      addons: Iterable[AddOn] | None = None, video: str | Path | None = None, _single: bool = False,
                      **settings: Any) -> Iterator[Video]:
        """Render many clips with one model load, yielding each `Video` as soon as it is written.
        `requests`: prompts or `ClipRequest`s (own seed / negative / output), read lazily (a stream
        works). Each prompt renders once per seed in `seeds` (default: the settings' seed); a
        request's own seed renders once. `output` is a template for the files: {name}, {slug},
        {seed}, {index} (None: no files unless a request names one). One progress bar for all."""
        from .jobs.generate import IdentityRenderer, render_batch

        resolved = self.settings(**settings)

        def renderer() -> IdentityRenderer:  # loaded on the first clip, then kept for every later call
            if self._renderer is None or self._renderer.settings.backbone != resolved.backbone:
                self._renderer = IdentityRenderer(self.context, self.name, resolved)
            return self._renderer

        items = [requests] if isinstance(requests, (str, ClipRequest)) else requests
        return render_batch(self.context, self.name, renderer, resolved.generate, items, output=output,
                            seeds=list(seeds) if seeds is not None else None, adapter=adapter,
                            addons=_extras(controls, loras, addons), video=video, one_bar=not _single,
                            backbone=resolved.backbone, settings=resolved)

    def evaluate(self, **kwargs: Any) -> dict:
        """`pv eval NAME`: generate clips of this identity and score them (see `evaluate`)."""
        return evaluate(self.name, context=self.context, **kwargs)

    def export(self, fmt: str | None = None, output: str | Path | None = None, **kwargs: Any) -> dict:
        """The adapter as a LoRA file (or `bundle=PATH`: the whole identity); see `export`."""
        return export(self.name, fmt, output, context=self.context, **kwargs)

    def remove(self) -> list[Path]:
        from .jobs.manage import remove as remove_job

        return remove_job(self.context, self.name)


@dataclass
class _Group(Identity):
    """Several identities rendered together, each in its region (see `generate_clips(identities=...)`)."""

    members: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    feather: float | None = None
    region_mode: str = "latent"

    @classmethod
    def load(cls, specs: list, layout: str, region_mode: str, feather: float | None, *, profile: str | None = None,
             overrides: Overrides = None, device: str | None = None, progress: Progress = None,
             context: Context | None = None) -> _Group:
        from .jobs.generate_identities import Member, check_group, parse_member

        ctx = _context(context, device, progress)
        members = [s if isinstance(s, Member) else parse_member(s) for s in specs]
        boxes = check_group(ctx, members, layout, region_mode)
        if feather is not None and not (0 <= feather <= 0.5):
            raise PVError(f"feather must be between 0 and 0.5 (a fraction of the frame), got {feather}")
        group = cls(members[0].name, ctx.store.load_info(members[0].name), ctx, profile, overrides)
        group.members, group.boxes, group.feather, group.region_mode = members, boxes, feather, region_mode
        return group

    def generate_many(self, requests, *, output=None, seeds=None, adapter=True, controls=None, loras=None,
                      addons=None, video=None, _single=False, **settings):
        from .jobs.generate import render_batch
        from .jobs.generate_identities import GroupRenderer

        resolved = self.settings(**settings)
        name = "+".join(m.name for m in self.members)

        def renderer() -> GroupRenderer:
            if self._renderer is None:
                self._renderer = GroupRenderer(self.context, self.members, resolved, self.boxes, self.feather,
                                               self.region_mode)
            return self._renderer

        items = [requests] if isinstance(requests, (str, ClipRequest)) else requests
        return render_batch(self.context, name, renderer, resolved.generate, items, output=output,
                            seeds=list(seeds) if seeds is not None else None, adapter=adapter,
                            addons=_extras(controls, loras, addons), video=video, one_bar=not _single,
                            check_name=self.name, backbone=resolved.backbone, settings=resolved)


def generate_clips(name: str | None, prompt: str | None = None, *, prompts_file: str | Path | None = None, stdin=None,
                   output: str | None = None, seeds: Iterable[int] | None = None, num: int | None = None,
                   adapter: bool = True, controls: Iterable[dict] = (), loras: Iterable[str] = (),
                   addons: Iterable[AddOn] = (), video: str | Path | None = None, profile: str | None = None,
                   overrides: Overrides = None, device: str | None = None, progress: Progress = None,
                   context: Context | None = None, identities: Iterable[str] | None = None,
                   layout: str = "left-right", region_mode: str = "latent", feather: float | None = None,
                   **settings: Any) -> Iterator[Video]:
    """`pv generate` in full: one `prompt`, or many ("-" reads `stdin`; `prompts_file`), each once per
    seed (`num` seeds counting up from each of `seeds`; default generate.seed), one model load.
    Several clips need an output template ({name} {slug} {seed} {index}). Yields each clip once its
    file is written.
    `identities=["alice", "bob"]` (with `name=None`) puts several identities in one clip, each in its
    region: `layout` strips in order (left-right, top-bottom) or boxes in the items ("alice=box:0,0,0.5,1",
    "alice:0.8" for a weight); names in the prompt become each identity's phrase."""
    from .jobs.generate import parse_prompt_lines
    from .paths import read_text

    group = list(identities or [])
    if group and name is not None:
        raise PVError("give one identity name or several identities, not both",
                      'e.g. pv generate "alice and bob talking" --id alice --id bob')
    if not group and name is None:
        raise PVError("generate needs an identity name (or several identities)")
    if prompt is not None and prompts_file is not None:
        raise PVError("give a prompt or --prompts FILE, not both")
    if prompt is None and prompts_file is None:
        raise PVError("generate needs a prompt", f'e.g. pv generate {name or "--id alice --id bob"} "surfing at sunset", '
                      "or - for stdin")
    if group:
        identity = _Group.load(group, layout, region_mode, feather, profile=profile, overrides=overrides,
                               device=device, progress=progress, context=context)
    else:
        identity = Identity.load(name, profile=profile, overrides=overrides, device=device, progress=progress,
                                 context=context)
    base = list(seeds or []) or [identity.settings(**settings).generate.seed]
    seed_list = [s + i for s in base for i in range(num or 1)]
    if prompt == "-":
        import sys

        requests: Iterable[ClipRequest] = parse_prompt_lines(stdin if stdin is not None else sys.stdin, "stdin")
    elif prompts_file is not None:
        requests = list(parse_prompt_lines(read_text(Path(prompts_file), "--prompts").splitlines(), str(prompts_file)))
        if not requests:
            raise PVError(f"--prompts {prompts_file} holds no prompts",
                          "one prompt per line, or JSON lines with a \"prompt\"; # starts a comment")
    else:
        requests = [ClipRequest(prompt)]
    several = prompt == "-" or prompts_file is not None or len(seed_list) > 1
    if output is not None and several and "{" not in output:
        raise PVError("-o names one file, and this renders several clips",
                      "use a template, e.g. -o 'clips/{slug}_s{seed}.mp4' ({name} {slug} {seed} {index})")
    count = 0
    for clip in identity.generate_many(requests, output=output or DEFAULT_OUTPUT, seeds=seed_list, adapter=adapter,
                                       controls=list(controls), loras=list(loras), addons=list(addons), video=video,
                                       **settings):
        count += 1
        yield clip
    if not count:
        raise PVError("no prompts on stdin", "one prompt per line, or JSON lines with a \"prompt\"")


def evaluate(target: str | Path, *, refs: Iterable[str] | None = None, prompts: Iterable[str] | None = None,
             seeds: Iterable[int] | None = None, encoders: Iterable[str] | None = None, scorer: str = "clip",
             scorer_options: dict | None = None, flow: str = "auto", no_face: str = "skip",
             compare_base: bool = False, out_dir: str | Path | None = None, csv: str | Path | None = None,
             sheets: str | Path | None = None, device: str | None = None, progress: Progress = None,
             context: Context | None = None, report: str | Path | None = None) -> dict:
    """Score videos (a file or folder) or an identity's generated clips: Face Sim per encoder, face
    detection rate, CLIP-T, Dynamic Degree, temporal consistency. Returns what `pv eval --json` prints.
    `report=PATH` also writes a self-contained HTML page: one sortable row per clip with an animated
    preview, its metrics and its per-frame face similarity."""
    from .jobs.evaluate import EvalRequest
    from .jobs.evaluate import evaluate as evaluate_job

    req = EvalRequest(str(target), list(refs or []), list(prompts or []), list(seeds or []), list(encoders or []),
                      scorer, dict(scorer_options or {}), flow, no_face, compare_base,
                      Path(out_dir) if out_dir else None, Path(csv) if csv else None,
                      Path(sheets) if sheets else None)
    req.report = Path(report) if report else None
    return evaluate_job(_context(context, device, progress), req)


def evaluate_identities(target: str | Path, ids: Iterable[str], *, encoders: Iterable[str] | None = None,
                        layout: str = "left-right", per_frame: bool = False, device: str | None = None,
                        progress: Progress = None, context: Context | None = None) -> dict:
    """Several people in one clip (`pv eval VIDEOS --id A --id B`): each item of `ids` is one person,
    an identity name or photos of that person. Each sampled frame's faces are assigned one to one to
    the people (Hungarian), and each person gets own-identity similarity, the margin to the best other
    person (small for a blended face), the swap rate (faces outside the person's region: the clip's
    recorded regions, else `layout` strips in order) and presence; each clip its exactly-N-faces rate.
    Returns what `pv eval --id ... --json` prints."""
    from .jobs.evaluate_identities import IdentitiesRequest
    from .jobs.evaluate_identities import evaluate_identities as job

    req = IdentitiesRequest(str(target), list(ids), list(encoders or []), layout, per_frame)
    return job(_context(context, device, progress), req)


def plan_text(plan: dict) -> str:
    """`pv tune --dry-run`'s plan (what plan_tuning returns) as the lines it prints."""
    from .jobs.plan import describe

    return describe(plan)


def held_out_at_text(info: dict) -> str:
    """The clip size an identity's held-out similarity was measured at (identity.json's held_out_at), in words."""
    from .records import held_out_at_text as text

    return text(info)


def plan_changes_text(changes: dict) -> str:
    """A plan's setting changes in one phrase (`pv profiles`)."""
    from .jobs.plan import changes_text

    return changes_text(changes)


def identity_report(name: str, output: str | Path | None = None, *, progress: Progress = None,
                    context: Context | None = None) -> dict:
    """`pv report NAME -o FILE`: one self-contained HTML page about identity `name` (photos and
    aligned crops, training curves, samples over the steps, held-out ID similarity, settings and
    versions), written atomically to `output` (default NAME.html). Returns path, bytes, images."""
    from .jobs.report import identity_report as report_job

    return report_job(_context(context, None, progress), name, Path(output) if output is not None else None)


def list_identities(context: Context | None = None) -> list[dict]:
    """Every identity's summary (identity.json)."""
    from .jobs.manage import list_identities as list_job

    return list_job(_context(context, None, None))


def show_identity(name: str, context: Context | None = None) -> dict:
    """What `pv show NAME` prints: the identity's record."""
    from .jobs.manage import show

    return show(_context(context, None, None), name)


def removable(name: str, context: Context | None = None) -> str:
    """What `remove_identity(name)` would delete ("identity", "interrupted run", ...); raises if nothing."""
    from .jobs.manage import removable as what

    return what(_context(context, None, None), name)


def remove_identity(name: str, context: Context | None = None) -> list[Path]:
    """Delete identity `name` and any interrupted run of that name; returns the removed paths."""
    from .jobs.manage import remove

    return remove(_context(context, None, None), name)


def plugin_rows(context: Context | None = None) -> list[dict]:
    """Installed plugins, their versions and what each registered (`pv plugins --json`)."""
    from .jobs.info import plugins

    return plugins(_context(context, None, None))


def profile_rows() -> list[dict]:
    """The shipped profiles: name, description, whether default (`pv profiles --json`)."""
    from .jobs.info import profiles

    return profiles()


def environment(context: Context | None = None) -> dict:
    """Versions, devices and providers, for bug reports (`pv env --json`)."""
    from .jobs.info import environment as env

    return env(_context(context, None, None))


def export(name: str, fmt: str | None = None, output: str | Path | None = None, *, bundle: str | Path | None = None,
           force: bool = False, progress: Progress = None, context: Context | None = None) -> dict:
    """Write identity `name`'s adapter as a LoRA file (`fmt`: diffusers, kohya, comfy, a1111), or with
    `bundle=PATH.pvid` the whole identity as one archive for `import_identity` (a LoRA format or
    output beside a bundle is refused, never ignored). An existing file is replaced only with
    `force`. Returns what was written (path, format, tensors, bytes, ...)."""
    ctx = _context(context, None, progress)
    if bundle is not None:
        from .jobs.bundle import export_bundle

        if fmt is not None:
            raise PVError(f"--format {fmt} is a LoRA file's key format; a bundle (--bundle) holds the whole identity "
                          "in pv's own format", "give one of them: --format with -o for a LoRA file, or --bundle")
        if output is not None:
            raise PVError("--bundle and --output are two different exports", "give one of them")
        return export_bundle(ctx, name, Path(bundle), force=force)
    from .jobs.export import export_lora

    return export_lora(ctx, name, "diffusers" if fmt is None else fmt, Path(output) if output is not None else None, force=force)


def import_identity(bundle: str | Path, *, name: str | None = None, force: bool = False, progress: Progress = None,
                    context: Context | None = None) -> dict:
    """Import a `.pvid` bundle into the store (as `name`, default the bundle's); refuses a name clash
    unless `force`, and writes nothing unless every check passes."""
    from .jobs.bundle import import_bundle

    return import_bundle(_context(context, None, progress), Path(bundle), name=name, force=force)
