"""The hooks plugins implement. Each hook hands the plugin a `register` callback, so one
plugin can register several things and pv knows which plugin registered what. Register
names and factories only: heavy imports belong inside the factories."""

import pluggy

hookspec = pluggy.HookspecMarker("pv")


@hookspec
def register_backbones(register):
    """Register text-to-video backbones: register(name, factory, description="", frames=None,
    lora_formats=None, accepts=None, workflows=None, size_multiple=None, refuse=None, memory=None);
    `frames(count, flag)` raises PVError for a frame count the family cannot render (checked before the
    backbone loads); `lora_formats` maps `pv export --format` names to writers `(adapter_state,
    identity_meta) -> (tensors, header)` for the family's own LoRA key layouts (used for identities
    tuned on this backbone, before pv's built-in formats); `accepts` is the backbone class's `accepts`
    (add-on kinds), so what it cannot take is refused before it loads; `workflows` maps export format
    names to writers `(identity_meta, settings_dict, lora_file_name) -> (workflow_dict, wiring_line)`
    whose workflow is written beside that format's LoRA file (a UI's workflow that renders pv's clip,
    gating included; an adapter of several parts, `describe()["adapter_parts"]`, is written as one file
    per part and `lora_file_name` is then {expert: file name}); `size_multiple(backbone_options) -> int` is the multiple a clip's height and
    width must be (refused in one line before the backbone loads); `refuse(info, options, asked)`
    raises PVError for what one model of the family cannot take though the family can (`info`: what
    the identity recorded of its backbone, `describe()`; `options`: the backbone options in effect;
    `asked`: the add-ons asked for, as (kind, options) pairs, ("video", {"source": ...}) for a driving
    clip), also before it loads; `memory(options)` returns a `contracts.RealSizeModel`: the backbone at
    real size on the meta device, built from the family's shipped configs for `options` (no weights, no
    download), which pv's memory trace runs a tuning step on (`pv tune --dry-run`, `tune.memory`); a
    PVError names a model it has no config for."""


@hookspec
def register_encoders(register):
    """Register identity (face) encoders: register(name, factory, description="")."""


@hookspec
def register_conditioners(register):
    """Register generation-time conditioners (ControlNet, style LoRA): register(name, factory, description="")."""


@hookspec
def register_scorers(register):
    """Register frame scorers (CLIP score, HPSv2) for the semantic reward: register(name, factory, description="")."""


@hookspec
def register_commands(app):
    """Add commands to the `pv` Typer app."""
