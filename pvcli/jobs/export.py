"""`pv export NAME --format ...`: the identity adapter as a LoRA file other tools load.

- diffusers: PEFT keys under the `unet.` component prefix and diffusers' `lora_adapter_metadata`
  header (rank and alpha round-trip), what `pipe.load_lora_weights(file)` reads.
- kohya (aliases comfy, a1111): `lora_unet_*.lora_down/lora_up/alpha` keys from diffusers' own
  `convert_state_dict_to_kohya`, with the real alpha, plus the `ss_*` and `modelspec.*` header
  keys those UIs show.
- a backbone family's own layouts, registered with the backbone (`lora_formats`), e.g. ComfyUI's
  native keys of a diffusion transformer for `--format comfy`; they get the same trainer header.

Both carry flat `pv.*` string metadata: identity, trigger phrase, the backbone's own ids (base model, ...),
target set, rank/alpha, active fraction, steps, seed, encoder, pv version and a hash of the
exported tensors. Late-step gating does not travel in a LoRA file (other tools apply a LoRA at every
step); a family that registers a workflow for the format (`workflows=`, e.g. a ComfyUI workflow)
writes one beside the file that applies it from the identity's gate, as pv does."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..context import Context
from ..errors import PVError
from ..identity_files import read_adapter, read_settings, tensor_hash
from ..paths import check_output, write_error
from ..store import atomic_write_file

FORMATS = {"diffusers": "diffusers", "kohya": "kohya", "comfy": "kohya", "a1111": "kohya"}
COMPONENT = "unet"  # the pipeline component an identity's adapter lives on when it does not say (pv 0.1)


def component(meta: dict) -> str:
    """The diffusers pipeline component the adapter lives on (Backbone.component: unet, transformer)."""
    return meta.get("component") or COMPONENT
# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY, written out: importing it loads most of
# diffusers (3.4 s), which `pv export` needs for no other format (test_export checks they agree).
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
GATING_NOTE = ("tuned with the adapter active only in the last {pct}% of denoising steps (late-step gating); "
               "other tools apply a LoRA at every step, so the identity acts earlier and motion may change. "
               "Tune with --active-fraction 1 for identities you mainly export.")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise PVError(f"unknown export format {fmt!r}", f"choose {', '.join(FORMATS)} (comfy and a1111 = kohya for UNet "
                      "identities; a transformer family's own layout for its identities)")
    return FORMATS[fmt]


def gating_note(meta: dict) -> str:
    fraction = float(meta.get("active_fraction", 1.0))
    return GATING_NOTE.format(pct=round(fraction * 100)) if fraction < 1 else ""


def diffusers_lora(state: dict, meta: dict) -> tuple[dict, dict]:
    """(tensors, diffusers header) in the layout `save_lora_weights` writes."""
    prefix = component(meta)
    tensors = {f"{prefix}.{k}": v.contiguous() for k, v in state.items()}
    config = {"r": int(meta["rank"]), "lora_alpha": float(meta["alpha"]),
              "target_modules": sorted({k.split(".lora_")[0] for k in state})}
    header = {"format": "pt",
              LORA_ADAPTER_METADATA_KEY: json.dumps({f"{prefix}.{k}": v for k, v in config.items()}, indent=2, sort_keys=True)}
    return tensors, header


def kohya_lora(state: dict, meta: dict) -> tuple[dict, dict]:
    """(tensors, header) with kohya keys; diffusers' converter writes alpha = rank, so the real
    alpha is set afterwards (the scale alpha/rank must survive)."""
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    if component(meta) != COMPONENT:
        raise PVError(f"--format kohya/comfy/a1111 writes UNet LoRA keys; this identity's adapter is on the "
                      f"{component(meta)} of a {meta.get('backbone', 'non-UNet')} backbone",
                      "export it with --format diffusers (what diffusers' load_lora_weights reads)")
    tensors = convert_state_dict_to_kohya({f"{COMPONENT}.{k}": v for k, v in state.items()})
    alpha = torch.tensor(float(meta["alpha"]))
    tensors = {k: (alpha.clone() if k.endswith(".alpha") else v.contiguous()) for k, v in tensors.items()}
    header = {"ss_network_module": "networks.lora", "modelspec.implementation": "diffusers"}
    version = meta.get("base_model_version")
    if version:
        header["ss_base_model_version"] = version
        header["modelspec.architecture"] = f"{meta.get('architecture', version)}/lora"
    return tensors, header


def trainer_header(meta: dict) -> dict[str, str]:
    """The header keys LoRA trainers (kohya sd-scripts, musubi-tuner) write and UIs show: rank,
    alpha, base model, name, steps, seed, trigger phrase. Added to every format but diffusers'."""
    trigger = _trigger(meta)
    return {
        "ss_network_dim": str(meta["rank"]), "ss_network_alpha": str(float(meta["alpha"])),
        "ss_sd_model_name": meta.get("base_model", ""), "ss_output_name": meta.get("identity", ""),
        "ss_max_train_steps": str(meta.get("steps", "")), "ss_seed": str(meta.get("seed", "")),
        "ss_training_comment": f"pv {__version__} PersonalVideo identity adapter; trigger: {trigger}",
        "ss_tag_frequency": json.dumps({"pv": {trigger: 1}}),
        "modelspec.sai_model_spec": "1.0.0", "modelspec.title": meta.get("identity", ""),
        "modelspec.trigger_phrase": trigger,
    }


def _trigger(meta: dict) -> str:
    return f"{meta.get('token', 'sks')} {meta.get('class_word', 'person')}".strip()


_NOT_EXPORTED = {"lora_adapter_metadata", "format", "identity", "pv_version"}


def pv_metadata(name: str, meta: dict, fmt: str, tensors: dict) -> dict[str, str]:
    # everything the identity recorded (the backbone's and encoder's own ids, the adapter and tuning settings)
    out = {f"pv.{k}": str(v) for k, v in sorted(meta.items()) if k not in _NOT_EXPORTED and isinstance(v, (str, int, float))}
    out.update({"pv.identity": name, "pv.trigger_phrase": _trigger(meta), "pv.export_format": fmt,
                "pv.version": __version__, "pv.tuned_with": meta.get("pv_version", ""),
                "pv.tensors_sha256": tensor_hash(tensors)})
    note = gating_note(meta)
    if note:
        out["pv.gating"] = note
    return out


def family_formats(ctx: Context, backbone: str | None) -> dict:
    """The LoRA formats the identity's backbone plugin adds (`lora_formats` at registration)."""
    entry = ctx.registry.entries["backbones"].get(backbone) if backbone else None
    return entry.lora_formats if entry is not None else {}


def check_any_format(ctx: Context, fmt: str) -> None:
    """An unknown format fails before anything is read (built-in or any backbone family's own)."""
    if fmt in FORMATS or any(fmt in e.lora_formats for e in ctx.registry.entries["backbones"].values()):
        return
    check_format(fmt)


def family_workflow(ctx: Context, backbone: str | None, fmt: str):
    """The workflow writer the identity's backbone plugin registered for `fmt` (`workflows=`), if any."""
    entry = ctx.registry.entries["backbones"].get(backbone) if backbone else None
    return entry.workflows.get(fmt) if entry is not None else None


def expert_tag(meta: dict) -> str:
    """`_low_noise` for an adapter on one expert of a multi-expert model (its `expert`, e.g.
    "low-noise (transformer_2)"): the file's name says which expert it is for."""
    expert = str(meta.get("expert") or "").split("(")[0].strip()
    return "_" + "".join(c if c.isalnum() else "_" for c in expert).strip("_") if expert else ""


def adapter_parts(state: dict, meta: dict) -> list[tuple[dict, dict]]:
    """[(state, meta)] of each file an export writes: one, or one per part of an adapter on several
    denoisers (`adapter_parts`, {key prefix: expert}), its keys without the prefix and its meta naming
    its expert (the file's name and metadata say it)."""
    import json

    parts = json.loads(meta.get("adapter_parts") or "{}")
    if not parts:
        return [(state, meta)]
    out = []
    for prefix, expert in parts.items():
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own:
            out.append((own, {**meta, "expert": expert}))
    return out


def lora_writer(ctx: Context, meta: dict, fmt: str):
    """(format label, writer): the backbone family's own layout for `fmt` first, else pv's built-ins."""
    own = family_formats(ctx, meta.get("backbone"))
    if fmt in own:
        return fmt, own[fmt]
    kind = check_format(fmt)
    if kind == "kohya" and component(meta) != COMPONENT:
        offered = " or ".join(f"--format {f}" for f in ["diffusers", *sorted(own)])
        raise PVError(f"--format {fmt} writes UNet LoRA keys; this identity's adapter is on the {component(meta)} of "
                      f"a {meta.get('backbone', 'non-UNet')} backbone", f"export it with {offered}")
    return kind, diffusers_lora if kind == "diffusers" else kohya_lora


def export_lora(ctx: Context, name: str, fmt: str, output: Path | None = None, force: bool = False) -> dict:
    """Write identity `name`'s adapter as a LoRA file; returns what was written."""
    from safetensors.torch import save_file

    check_any_format(ctx, fmt)
    ctx.store.load_info(name)  # the "no identity named ..." error
    state, meta = read_adapter(ctx.store.folder(name))
    meta = {**meta, "identity": name}
    kind, writer = lora_writer(ctx, meta, fmt)
    parts = adapter_parts(state, meta)
    stem = name if kind == "diffusers" else f"{name}_{kind}"
    if len(parts) == 1:  # one file: -o names it
        example = Path(f"{stem}{expert_tag(meta)}.safetensors")
        outputs = [Path(output).expanduser() if output is not None else example]
        base = outputs[0]
    else:  # one file per expert: -o (or NAME_FORMAT) plus each expert's tag
        example = Path(f"{stem}.safetensors")
        base = Path(output).expanduser() if output is not None else example
        outputs = [base.with_name(f"{base.stem}{expert_tag(m)}{base.suffix}") for _, m in parts]
    for path in outputs:
        _check_writable(path, force, example.name)
    if base.suffix.lower() != ".safetensors":
        raise PVError(f"-o {base}: a LoRA export is a .safetensors file, not {base.suffix or 'a file without suffix'}",
                      f"e.g. -o {base.with_suffix('.safetensors')}")
    flow = family_workflow(ctx, meta.get("backbone"), fmt)
    workflow_path = base.with_name(f"{base.stem}_workflow.json") if flow is not None else None
    if workflow_path is not None and workflow_path.exists() and not force:
        raise PVError(f"{workflow_path} already exists (the workflow written beside the LoRA)",
                      "pass --force to replace it, or choose another -o")
    files = []
    for (part, part_meta), path in zip(parts, outputs, strict=True):
        tensors, header = writer(part, part_meta)
        if kind != "diffusers":
            header = {**trainer_header(part_meta), **header}
        header.update(pv_metadata(name, part_meta, kind, tensors))
        files.append((path, tensors, header, part_meta.get("expert", "")))
    # everything is built before anything is written
    lora_names = outputs[0].name if len(files) == 1 else {expert: path.name for path, _, _, expert in files}
    workflow, wiring = flow(meta, read_settings(ctx.store.path(name)), lora_names) if flow is not None else (None, None)
    written: list[Path] = []
    try:  # the temporary file beside each output is removed whatever fails
        for path, tensors, header, _ in files:
            try:
                atomic_write_file(path, lambda tmp, t=tensors, h=header: save_file(t, str(tmp), metadata=h))
            except OSError as exc:
                raise write_error(path, "-o", exc) from None
            written.append(path)
        if workflow is not None:
            try:
                atomic_write_file(workflow_path, lambda tmp: tmp.write_text(json.dumps(workflow, indent=1) + "\n"))
            except OSError as exc:
                raise write_error(workflow_path, "-o", exc) from None
    except PVError:
        for path in written:  # nothing half-written: the LoRA files go together, with their workflow
            path.unlink(missing_ok=True)
        raise
    if workflow is not None:
        ctx.reporter.status(f"{wiring}; {workflow_path.name} wires it")
    note = gating_note(meta) if workflow is None else ""  # a workflow carries the gating
    if note:
        ctx.reporter.warn(f"{name}: {note}")
    first, tensors, header, _ = files[0]
    record = {"identity": name, "path": str(first), "format": kind, "tensors": len(tensors),
              "bytes": first.stat().st_size, "trigger_phrase": header["pv.trigger_phrase"],
              "tensors_sha256": header["pv.tensors_sha256"], "gating": note or None,
              **({"workflow": str(workflow_path), "wiring": wiring} if workflow is not None else {})}
    if len(files) > 1:  # one file per expert
        record["experts"] = [{"path": str(p), "expert": e, "tensors": len(t), "bytes": p.stat().st_size,
                            "tensors_sha256": h["pv.tensors_sha256"]} for p, t, h, e in files]
    return record


def _check_writable(output: Path, force: bool, example: str = "") -> None:
    """Before anything is read or written: a file pv can create (or replace, with --force): no
    folder in its place, no parent path that is a file, no read-only folder."""
    flag = "--bundle" if output.suffix.lower() == ".pvid" else "-o"
    check_output(output, flag, example or f"NAME{output.suffix or '.safetensors'}")
    if output.exists() and not force:
        raise PVError(f"{output} already exists", "pass --force to replace it, or choose another -o")
