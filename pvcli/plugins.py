"""Plugin loading and the registry of what plugins provide.

Plugins are modules registered through the `pv` entry-point group (pv's built-in ones too).
`PV_PLUGINS` chooses which entry points load: unset = all, empty = none, or a comma list of
entry-point names. A plugin that fails to import or to register is reported on stderr and
skipped: a broken plugin never takes the CLI down.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .errors import PVError

KINDS = ("backbones", "encoders", "conditioners", "scorers")
_SINGULAR = {"backbones": "backbone", "encoders": "encoder", "conditioners": "conditioner", "scorers": "scorer"}


@dataclass
class Entry:
    name: str
    factory: Callable
    plugin: str
    description: str = ""
    # backbones: frames(count, flag) raises PVError for a frame count the family cannot render,
    # so a bad --frames / tune.frames fails before minutes of model loading
    frames: Callable[[int, str], None] | None = None
    # backbones: LoRA file formats of the family's own (e.g. ComfyUI's native transformer keys), by
    # `pv export --format` name: writer(state, meta) -> (tensors, header); they take precedence
    # over pv's built-in diffusers/kohya writers for identities tuned on this backbone
    lora_formats: dict[str, Callable] = field(default_factory=dict)
    # backbones: the add-on kinds it takes (Backbone.accepts), so a --video or --control it cannot
    # take is refused before it loads; None: the plugin did not say (refused after loading)
    accepts: frozenset | None = None
    # backbones: workflow writers of the family's own, by `pv export --format` name, written beside
    # that format's LoRA file: writer(identity_meta, settings_dict, lora_file_name) -> (workflow, wiring),
    # the workflow a JSON-able dict (e.g. a ComfyUI API workflow that reproduces pv's clip, gating
    # included) and wiring one line saying how the file is wired in it
    workflows: dict[str, Callable] = field(default_factory=dict)
    # backbones: size_multiple(options) -> the multiple of pixels a clip's height and width must be
    # (VAE factor x patch size), from the backbone options alone, so a bad size fails before loading
    size_multiple: Callable[[dict], int] | None = None
    # backbones: refuse(info, options, asked) raises PVError for what the model the identity was
    # tuned on cannot take, though its family can (`info`: what the identity recorded of its
    # backbone, Backbone.describe(); `options`: backbone.options in effect; `asked`: the add-ons
    # asked for as (kind, options) pairs, ("video", {"source": ...}) for --video): refused before it loads
    refuse: Callable[[dict, dict, list[tuple[str, dict]]], None] | None = None
    # backbones: memory(options) -> contracts.RealSizeModel, the backbone at real size on the meta
    # device from the family's shipped configs (pv tune --dry-run's memory trace); None: not traced
    memory: Callable | None = None


@dataclass
class PluginInfo:
    name: str
    version: str | None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


class Registry:
    """What the loaded plugins registered, by kind, plus a record of each plugin."""

    def __init__(self, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo], warn: Callable[[str], None]):
        self.pm = pm
        self.plugins = plugins
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        for kind in KINDS:
            self._collect(kind, warn)

    def _collect(self, kind: str, warn: Callable[[str], None]) -> None:
        hook = getattr(self.pm.hook, f"register_{kind}")
        for impl in hook.get_hookimpls():
            plugin = self.pm.get_name(impl.plugin) or str(impl.plugin)

            def register(name: str, factory: Callable, description: str = "", frames: Callable | None = None,
                         lora_formats: dict[str, Callable] | None = None, accepts: frozenset | None = None,
                         workflows: dict[str, Callable] | None = None, size_multiple: Callable | None = None,
                         refuse: Callable | None = None, memory: Callable | None = None,
                         _plugin: str = plugin) -> None:
                table = self.entries[kind]
                if name in table:
                    warn(f"plugin {_plugin!r} registers {_SINGULAR[kind]} {name!r}, already registered by "
                         f"{table[name].plugin!r}: ignored")
                    return
                table[name] = Entry(name, factory, _plugin, description, frames, dict(lora_formats or {}),
                                    None if accepts is None else frozenset(accepts), dict(workflows or {}),
                                    size_multiple, refuse, memory)
                self.plugins.setdefault(_plugin, PluginInfo(_plugin, None)).registered.setdefault(kind, []).append(name)

            try:
                impl.function(register=register)
            except Exception as exc:  # a broken plugin must not take pv down
                warn(f"plugin {plugin!r} failed in register_{kind}: {exc}")
                if plugin in self.plugins:
                    self.plugins[plugin].error = str(exc)

    def get(self, kind: str, name: str) -> Entry:
        table = self.entries[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise PVError(f"unknown {_SINGULAR[kind]} {name!r} (known: {known})",
                          "install the plugin that provides it, or check PV_PLUGINS")
        return table[name]

    def check_frames(self, backbone: str, frames: int, flag: str) -> None:
        """The backbone's own frame-count rule, if it registered one (before it loads)."""
        rule = self.get("backbones", backbone).frames
        if rule is not None:
            rule(frames, flag)

    def check_size(self, backbone: str, options: dict, height: int, width: int, flags: tuple[str, str]) -> None:
        """The backbone's size multiple, if it registered one (before it loads): `flags` name the
        height and width settings in the one-line error."""
        rule = self.get("backbones", backbone).size_multiple
        if rule is None:
            return
        multiple = int(rule(options or {}))
        for flag, value in zip(flags, (height, width), strict=True):
            if value % multiple:
                near = max(multiple, value // multiple * multiple)
                raise PVError(f"{flag} {value}: the {backbone} backbone renders sizes in multiples of {multiple} pixels "
                              "(its VAE factor times its patch size)", f"use {near} or {near + multiple}")

    def create(self, kind: str, name: str, **kwargs):
        return self.get(kind, name).factory(**kwargs)


def _dist_version(ep: md.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None


def build_plugin_manager(extra: tuple = (), warn: Callable[[str], None] | None = None) -> Registry:
    """Load the entry-point plugins (filtered by PV_PLUGINS) plus `extra` plugin objects."""
    warn = warn or (lambda msg: print(f"Warning: {msg}", file=sys.stderr))
    pm = pluggy.PluginManager("pv")
    pm.add_hookspecs(hookspecs)
    plugins: dict[str, PluginInfo] = {}
    selected = os.environ.get("PV_PLUGINS")
    allow = None if selected is None else {n.strip() for n in selected.split(",") if n.strip()}
    for ep in md.entry_points(group="pv"):
        if allow is not None and ep.name not in allow:
            continue
        if pm.has_plugin(ep.name):
            continue
        info = PluginInfo(ep.name, _dist_version(ep))
        plugins[ep.name] = info
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            warn(f"plugin {ep.name!r} could not be loaded: {info.error} (disable it with PV_PLUGINS)")
    for obj in extra:
        name = getattr(obj, "__name__", type(obj).__name__)
        pm.register(obj, name=name)
        plugins.setdefault(name, PluginInfo(name, None))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        warn(f"a plugin implements an unknown hook: {exc}")
    for name, info in plugins.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return Registry(pm, plugins, warn)
