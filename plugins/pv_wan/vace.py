"""Wan VACE for `--control` on a Wan 2.1 backbone: diffusers' `WanVACEPipeline` around a
`WanVACETransformer3DModel` that pv assembles from the backbone's own T2V transformer.

A VACE transformer is a Wan 2.1 T2V transformer (`blocks`, patch embedding, condition embedder,
output head: the same module names, and in the released checkpoints the T2V model's weights) plus
a control branch, `vace_patch_embedding` and `vace_blocks`, whose hints are added (times the
pipeline's `conditioning_scale`) after the base blocks listed in `vace_layers`.

The choice: the VACE transformer's base modules ARE the backbone's denoiser's module objects (no
copy); only the control branch is new. Consequences:
  - the identity adapter (peft layers inside `blocks`) acts in the VACE transformer as it is, and
    late-step gating, which sets the adapter scale on `backbone.denoiser` from the step callback,
    gates it there too: no second copy of the adapter to keep in sync, no denoiser swap;
  - style LoRAs loaded into the backbone (`--lora`) land in the same layers and compose with VACE;
  - a real VACE model costs only its branch in memory, not a second base model.
The condition: the VACE checkpoint's base must be the backbone's T2V model. `load_branch` streams
the checkpoint tensor by tensor, loads the branch, compares every base tensor with the denoiser's
(in the run's dtype), and refuses in one line when they differ.

`--control-start/--control-end` are real: outside the window the transformer gets
`conditioning_scale` 0, which adds exactly nothing (the clip then follows the T2V model exactly),
by ControlNet's rule in diffusers (step i is controlled unless i/N < start or (i+1)/N > end).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from pvcli.errors import PVError

# T2V model -> its VACE model (diffusers layout); backbone.options.vace_model overrides
TINY_VACE_LAYERS = (0, 1)  # the tiny transformer has 2 blocks: a hint after each
_BRANCH = ("vace_",)  # module-name prefixes of the control branch


def vace_in_channels(vae) -> int:
    """The control branch's input: inactive + reactive video latents and the mask folded to latent size."""
    c = vae.config
    spatial = int(getattr(c, "scale_factor_spatial", 0) or 2 ** len(c.temperal_downsample))
    return 2 * c.z_dim + spatial * spatial


def vace_config(t2v_config, vace_layers, in_channels: int) -> dict:
    """WanVACETransformer3DModel arguments with the T2V transformer's shape."""
    import inspect

    from diffusers import WanVACETransformer3DModel

    allowed = set(inspect.signature(WanVACETransformer3DModel.__init__).parameters) - {"self"}
    base = {k: v for k, v in dict(t2v_config).items() if k in allowed and not k.startswith("vace_")}
    return {**base, "vace_layers": list(vace_layers), "vace_in_channels": int(in_channels)}


def tie_base(vace: torch.nn.Module, t2v: torch.nn.Module) -> torch.nn.Module:
    """Make every base module and parameter of `vace` the T2V transformer's own object."""
    for name, _ in list(vace.named_children()):
        if not name.startswith(_BRANCH):
            setattr(vace, name, getattr(t2v, name))
    for name, _ in list(vace.named_parameters(recurse=False)):
        if not name.startswith(_BRANCH):
            setattr(vace, name, getattr(t2v, name))
    return vace


def branch_modules(vace: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for n, m in vace.named_children() if n.startswith(_BRANCH)]


def tiny_vace(transformer, vae, seed: int = 0, layers=TINY_VACE_LAYERS):
    """A VACE transformer around the tiny T2V `transformer` (its base modules shared, so its base
    weights are exactly the T2V's and an identity tuned on tiny-wan applies unchanged), with a
    control branch of random weights drawn under `seed`."""
    from diffusers import WanVACETransformer3DModel

    config = vace_config(transformer.config, layers, vace_in_channels(vae))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vace = WanVACETransformer3DModel(**config)
    param = next(transformer.parameters())
    for module in branch_modules(vace):
        module.to(param.device, param.dtype)
    return tie_base(vace, transformer).eval().requires_grad_(False)


# --------------------------------------------------------------------------- real checkpoints


def transformer_folder(ref: str, local_files_only: bool = False) -> Path:
    """The folder holding a VACE transformer's config.json and .safetensors: a local diffusers
    pipeline folder (its `transformer/`) or transformer folder, or a hub id fetched (only its
    `transformer/` files) through the Hugging Face cache."""
    path = Path(ref).expanduser()
    if path.exists():
        for folder in (path / "transformer", path):
            if (folder / "config.json").is_file():
                return folder
        raise FileNotFoundError(f"no transformer/config.json in {path}")
    from huggingface_hub import snapshot_download

    root = Path(snapshot_download(ref, allow_patterns=["transformer/*"], local_files_only=local_files_only))
    if not (root / "transformer" / "config.json").is_file():
        raise FileNotFoundError(f"{ref} has no transformer/config.json")
    return root / "transformer"


def _base_state(t2v: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The T2V transformer's own tensors by their plain names (peft's `base_layer.` folded away,
    LoRA tensors left out)."""
    return {key.replace(".base_layer.", "."): value for key, value in t2v.named_parameters()
            if ".lora_" not in key and "lora_magnitude" not in key}


def load_branch(folder: Path, ref: str, t2v: torch.nn.Module, base_model: str):
    """A VACE transformer from a checkpoint folder, assembled around `t2v`: the control branch
    loaded from the files, every base tensor checked equal to the T2V's (streamed one at a time:
    the checkpoint's base never sits in memory)."""
    from accelerate import init_empty_weights
    from diffusers import WanVACETransformer3DModel
    from safetensors import safe_open

    hint = f"set backbone.options.vace_model to the VACE model built on {base_model}"
    config = json.loads((folder / "config.json").read_text())
    mine = dict(t2v.config)
    shape = [k for k in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "ffn_dim",
                         "text_dim", "patch_size") if k in config and list(_seq(config[k])) != list(_seq(mine.get(k)))]
    if shape:
        k = shape[0]
        raise PVError(f"the VACE model {ref} does not fit this Wan transformer ({k} {config[k]} vs {mine.get(k)})", hint)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PVError(f"the VACE model {ref} has no .safetensors weights in {folder}",
                      "convert it to safetensors, or point backbone.options.vace_model at a diffusers VACE folder")
    with init_empty_weights():
        vace = WanVACETransformer3DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    tie_base(vace, t2v)
    param = next(t2v.parameters())
    for module in branch_modules(vace):
        module.to_empty(device=param.device).to(param.dtype)
    branch = {k: v for k, v in vace.state_dict(keep_vars=True).items() if k.startswith(_BRANCH)}
    base = _base_state(t2v)
    seen, differ, first = set(), 0, None
    for file in files:
        with safe_open(str(file), "pt", device="cpu") as fh:
            for key in fh.keys():
                tensor = fh.get_tensor(key)
                if key in branch:
                    with torch.no_grad():
                        branch[key].copy_(tensor.to(param.device, branch[key].dtype))
                elif key in base:
                    mine_t = base[key]
                    if tensor.shape != mine_t.shape or not torch.equal(tensor.to(mine_t.device, mine_t.dtype), mine_t):
                        differ += 1
                        first = first or key
                else:
                    continue  # keys diffusers ignores on load (norm_added_q)
                seen.add(key)
    missing = [k for k in branch if k not in seen]
    if missing:
        raise PVError(f"the VACE model {ref} lacks {len(missing)} control-branch tensors (first: {missing[0]})",
                      "check that it is a complete WanVACETransformer3DModel checkpoint")
    absent = [k for k in base if k not in seen]
    if differ or absent:
        what = f"{differ} of {len(base)} base tensors differ from it (first: {first})" if differ \
            else f"{len(absent)} base tensors are missing (first: {absent[0]})"
        raise PVError(f"the VACE model {ref} is not built on this backbone's transformer ({base_model}): {what}", hint)
    return vace.eval().requires_grad_(False)


def _seq(value):
    return value if isinstance(value, (list, tuple)) else [value]


def load_vace(ref: str, t2v: torch.nn.Module, base_model: str, setting: str = "backbone.options.vace_model"):
    from pvcli.hub import load_pretrained

    folder = load_pretrained(setting, ref, lambda r, local_files_only=False, **kw: transformer_folder(r, local_files_only),
                             what="Wan VACE model",
                             offline_hint="run --control offline with --profile tiny-wan (its VACE is built in-process)")
    return load_branch(folder, ref, t2v, base_model)


# --------------------------------------------------------------------------- the call


def window_keep(i: int, steps: int, start: float, end: float) -> bool:
    """Whether step i of `steps` is controlled (diffusers' ControlNet rule for control_guidance_start/end)."""
    return not (i / steps < start or (i + 1) / steps > end)


@contextmanager
def control_window(vace: torch.nn.Module, steps: int, start: float, end: float):
    """While inside: the VACE transformer's `conditioning_scale` is zeroed on steps outside
    [start, end). Yields `advance(i)`, to call from the step callback after step i."""
    if start <= 0 and end >= 1:
        yield lambda i: None
        return
    state = {"step": 0}

    def hook(module, args, kwargs):
        if window_keep(state["step"], steps, start, end):
            return None
        scale = kwargs.get("control_hidden_states_scale")
        if scale is None:
            scale = torch.ones(len(module.config.vace_layers), device=kwargs["hidden_states"].device)
        return args, {**kwargs, "control_hidden_states_scale": torch.zeros_like(scale)}

    handle = vace.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield lambda i: state.__setitem__("step", i + 1)
    finally:
        handle.remove()
