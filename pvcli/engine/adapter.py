"""The Spatial Identity Adapter: LoRA (via peft) on the backbone's spatial layers only."""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

import torch

from ..contracts import Backbone
from ..errors import PVError

ADAPTER_NAME = "pv_identity"
ADAPTER_SEED_OFFSET = 5  # see add_adapter


def lora_layers(model: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def saved_layers(state: dict[str, torch.Tensor]) -> list[str]:
    """The layers a saved adapter state (peft keys) adapts, by module name."""
    return sorted({k.split(".lora_")[0] for k in state})


def add_adapter(backbone: Backbone, targets: str, rank: int, alpha: float, seed: int = 0,
                adapter_name: str = ADAPTER_NAME, layers: list[str] | None = None) -> list[str]:
    """Inject the adapter into backbone.adapted (the denoiser, or the experts that take it), freeze
    everything else, return adapted layer names.
    Its initial weights are a function of `seed` alone (the tune seed): peft draws lora_A from
    torch's global generator, whose state depends on whatever ran before in the process (a cached
    model that was or was not built, an earlier tune), so the draw is made from `seed` and the global
    stream is left as it was. The draw's generator is seeded `seed + 5`, apart from the tune's noise
    stream (seeded `seed`), so the first lora_A is not the first clip's noise rescaled. Several
    identities in one clip each get their own `adapter_name`. `layers` (a saved identity's own,
    `saved_layers`): the adapter goes on exactly those, whatever the target set names today, so an
    identity tuned before a plugin moved its targets loads and renders as it was tuned (tuning
    never passes them: a new adapter always follows the target set and its protected modules)."""
    from peft import LoraConfig, inject_adapter_in_model

    pattern = "|".join(map(re.escape, layers)) if layers else backbone.adapter_targets(targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=pattern)
    try:
        # peft builds each lora_A on the CPU and draws it there before moving it to the layer's
        # device: the CPU generator alone decides it, whatever the device
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.default_generator.manual_seed(seed + ADAPTER_SEED_OFFSET)
            # peft warns that a second adapter (several identities) is a second adapter
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, backbone.adapted, adapter_name=adapter_name)
    except ValueError as exc:
        raise PVError(f"cannot add the identity adapter ({targets}): {exc}") from None
    names = [n for n, _ in lora_layers(backbone.adapted)]
    protected = re.compile(backbone.protected_pattern())
    leaked = [] if layers else [n for n in names if protected.search(n)]
    if leaked:  # a plugin's target regex must never reach the motion modules
        raise PVError(f"adapter target set {targets!r} would touch protected modules: {leaked[:3]}")
    for name, param in backbone.adapted.named_parameters():
        is_lora = f".{adapter_name}." in name or name.endswith(f".{adapter_name}")
        param.requires_grad_(is_lora)
        if is_lora:
            param.data = param.data.float()  # train the adapter in fp32 even on a fp16 UNet
    return names


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().clone()  # a snapshot, never a view of live weights
            for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME).items()}


def load_adapter_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor],
                            adapter_name: str = ADAPTER_NAME) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", []) or []
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if f".{adapter_name}." in k]
    if unexpected or missing:
        raise PVError("the saved adapter does not fit this backbone "
                      f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")


def set_adapter_scale(model: torch.nn.Module, scale: float) -> None:
    for _, layer in lora_layers(model):
        layer.set_scale(ADAPTER_NAME, scale)


@contextmanager
def adapter_disabled(model: torch.nn.Module):
    """Run the base model exactly (the adapter's layers pass through). Nests: leaving restores each
    layer's previous state (an inner "off" inside an outer "off" leaves it off) and requires_grad."""
    flags = {id(p): p.requires_grad for p in model.parameters()}
    layers = [m for _, m in lora_layers(model)]
    was_disabled = [m.disable_adapters for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m, disabled in zip(layers, was_disabled, strict=True):
            if not disabled:
                m.enable_adapters(True)
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])


def activate_adapters(modules: list[torch.nn.Module], weights: dict[str, float]) -> None:
    """Make exactly the adapters in `weights` active on every LoRA layer of `modules`, each at its
    weight (0 reproduces the output without it exactly); adapters not named are switched off."""
    for module in modules:
        for _, layer in lora_layers(module):
            names = [n for n in weights if n in layer.lora_A]
            layer.enable_adapters(True)
            layer.set_adapter(names or [])
            for n in names:
                layer.set_scale(n, weights[n])
