"""What a `--lora` source is, found out before any model loads: a local path (never a hub id),
its safetensors header read without torch (LoRA tensors present? made for which base family?),
and the weight after the colon. Every problem is one PVError naming the file and what to do.

A source is local when it exists, or looks like a path: a weights suffix (.safetensors, .ckpt,
.pt, .pth, .bin), a leading ./ ../ / or ~, or a path separator in anything that is not an
`owner/name` hub id."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pvcli.errors import PVError

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes into a folder
DOWN_MARKS = ("lora_A.", "lora_down.", "lora.down.")  # the down matrix of a layer: diffusers/PEFT, kohya, old diffusers
FORMAT_HINT = ("a LoRA is a .safetensors file whose tensors are named *lora_A*/*lora_B* (diffusers, PEFT) or "
               "*lora_down*/*lora_up* (kohya, A1111)")

# base families, as Backbone.describe()["base_model_version"] names them (kohya's ss_base_model_version)
FAMILY_NAMES = {"sd_v1": "SD 1.x", "sd_v2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3", "flux": "Flux",
                "transformer": "a transformer (DiT) model"}
FAMILY_PROFILES = {"sd_v1": "animatediff", "sdxl": "animatediff-sdxl"}  # pv profiles of each family
# cross-attention width (the text encoder's hidden size) of each UNet family: in-features of attn2.to_k/to_v
CROSS_ATTENTION = {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl"}


def is_local(source: str) -> bool:
    """Whether `source` names a file or folder on this machine (so never a hub id)."""
    text = str(source)
    if Path(text).expanduser().exists():
        return True
    if text.lower().endswith(WEIGHT_SUFFIXES) or text in (".", ".."):
        return True
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")):
        return True
    separators = [s for s in (os.sep, os.altsep, "\\") if s]
    return any(s in text for s in separators) and not HUB_ID.match(text)


@dataclass
class LoraFile:
    """A local LoRA file, read as far as its header."""

    path: Path
    shapes: dict[str, list[int]] = field(default_factory=dict)  # tensor name -> shape
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str | None:
        return detect_family(self.shapes, self.metadata)

    @property
    def layers(self) -> list[str]:
        """The layers it adapts: one down (A) matrix each, in every key format."""
        return [k for k in self.shapes if any(m in k for m in DOWN_MARKS)]


def _is_pickle(head: bytes) -> bool:
    # torch.save writes a zip archive (PK..); older files and plain pickles start with the protocol byte 0x80
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _convert_hint(path: Path) -> str:
    target = path.with_suffix(".safetensors") if path.suffix.lower() != ".safetensors" else \
        path.with_name(path.stem + "_converted.safetensors")
    return (f"convert it to safetensors once (torch.load with weights_only=True, then "
            f"safetensors.torch.save_file to {target}) and pass {target.name}")


def read_header(path: Path, what: str, hint: str = FORMAT_HINT) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(tensor name -> shape, metadata) of a safetensors file, read by safetensors' `safe_open`
    without torch. `what` names the input in errors (e.g. "--lora style.safetensors"); `hint` says
    what the file should be."""
    from safetensors import SafetensorError, safe_open

    if path.stat().st_size == 0:
        raise PVError(f"{what} is an empty file (0 bytes)", "download or export it again")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if _is_pickle(head):
        pickle = "a PyTorch pickle (torch.save)"
        if path.suffix.lower() == ".safetensors":
            pickle += " renamed .safetensors"
        raise PVError(f"{what} is not a safetensors file: it is {pickle}", _convert_hint(path))
    try:
        with safe_open(path, framework="numpy") as fh:
            return {name: fh.get_slice(name).get_shape() for name in fh.keys()}, fh.metadata() or {}
    except SafetensorError as exc:
        why = str(exc).removeprefix("Error while deserializing header: ")
        if "incomplete metadata" in why:
            raise PVError(f"{what} is truncated: its header lists more bytes than the file has",
                          "download or export it again") from None
        if "header too" in why:
            raise PVError(f"{what} is not a safetensors file (no valid safetensors header)", hint) from None
        raise PVError(f"{what} is not a safetensors file (its header is not valid: {why})", hint) from None


def lora_file_in(folder: Path, what: str) -> Path:
    """The LoRA file of a folder: diffusers' pytorch_lora_weights.safetensors, else its only .safetensors."""
    if (folder / LORA_FILE).is_file():
        return folder / LORA_FILE
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".safetensors"
                   and not any(s in p.name for s in ("scheduler", "optimizer", "checkpoint")))
    if len(files) == 1:
        return files[0]
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        found = f" (only {', '.join(others[:3])}: pickles)" if others else ""
        raise PVError(f"{what} is a folder with no .safetensors LoRA file{found}",
                      f"pass the LoRA file itself: --lora {folder / 'NAME.safetensors'}")
    names = ", ".join(p.name for p in files[:4]) + (", ..." if len(files) > 4 else "")
    raise PVError(f"{what} is a folder with several .safetensors files ({names})",
                  f"pass the one you mean: --lora {folder / files[0].name}")


def inspect_local(source: str) -> LoraFile:
    """Read a local LoRA source as far as its header: missing, not safetensors, truncated, no
    LoRA tensors all fail here with the file named."""
    path = Path(source).expanduser()
    what = f"--lora {source}"
    if not path.exists():
        parent = path.parent if str(path.parent) not in ("", ".") else Path.cwd()
        where = "" if parent.is_dir() else f" (no folder {path.parent})"
        raise PVError(f"{what}: file not found{where}",
                      "check the path; a LoRA on the Hugging Face hub is given as owner/name")
    if path.is_dir():
        path = lora_file_in(path, what)
        what = f"--lora {path}"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise PVError(f"{what} is a PyTorch pickle checkpoint ({path.suffix}); pv reads LoRAs only from safetensors "
                      "(a pickle can run code when it is loaded)", _convert_hint(path))
    shapes, metadata = read_header(path, what)
    lora = LoraFile(path, shapes, metadata)
    keys = list(shapes)
    if not any("lora" in k.lower() for k in keys):
        if any(m in k for k in keys for m in (".hada_w1", ".lokr_w1", ".oft_", ".diff_b")):
            raise PVError(f"{what} is a LyCORIS file (LoHa/LoKr/OFT), which diffusers cannot load",
                          "use a plain LoRA of that style")
        if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "conv_in.", "down_blocks."))
               for k in keys):
            raise PVError(f"{what} holds no LoRA tensors: it is a full model checkpoint ({len(keys)} tensors)",
                          "a full checkpoint is a base model (backbone.options.base_model in a profile), not a --lora")
        sample = keys[0] if keys else "none"
        raise PVError(f"{what} holds no LoRA tensors ({len(keys)} tensors, e.g. {sample!r})", FORMAT_HINT)
    return lora


def family_of(version: str | None) -> str | None:
    """A base_model_version (ss_base_model_version, Backbone.describe()) -> one of FAMILY_NAMES' keys."""
    v = (version or "").lower()
    for prefix, family in (("sdxl", "sdxl"), ("sd_xl", "sdxl"), ("stable-diffusion-xl", "sdxl"),
                           ("sd_v1", "sd_v1"), ("stable-diffusion-v1", "sd_v1"), ("sd_v2", "sd_v2"),
                           ("stable-diffusion-v2", "sd_v2"), ("sd3", "sd3"), ("stable-diffusion-v3", "sd3"),
                           ("flux", "flux")):
        if v.startswith(prefix):
            return family
    return None


def detect_family(shapes: dict[str, list[int]], metadata: dict[str, str]) -> str | None:
    """The base family a LoRA was made for, from its header: kohya's metadata, its key names, or
    the width of its cross-attention layers. None when nothing tells."""
    for key in ("ss_base_model_version", "modelspec.architecture"):
        family = family_of(metadata.get(key))
        if family:
            return family
    keys = list(shapes)
    if any(k.startswith(("lora_te2_", "text_encoder_2.", "te2.")) or "lora_unet_input_blocks_" in k
           or "lora_unet_output_blocks_" in k or "lora_unet_middle_block_" in k for k in keys):
        return "sdxl"  # kohya's SDXL keys use the original (sgm) block names; SD 1.x kohya keys don't
    if any(m in k for k in keys for m in ("double_blocks", "single_blocks", "single_transformer_blocks")):
        return "flux"
    if any("joint_blocks" in k for k in keys):
        return "sd3"
    if any(k.startswith(("transformer.", "lora_transformer_", "diffusion_model.blocks.", "lora_unet_blocks_"))
           for k in keys):
        return "transformer"  # diffusers' DiT keys; ComfyUI's and musubi-tuner's native Wan keys
    for name, shape in shapes.items():
        low = name.lower()
        if ("attn2" in low and ("to_k" in low or "to_v" in low) and len(shape) == 2
                and any(d in low for d in ("lora_a", "lora_down", "lora.down"))):
            family = CROSS_ATTENTION.get(int(shape[1]))
            if family:
                return family
    return None


def check_family(lora: LoraFile, source: str, target: dict) -> None:
    """Refuse a LoRA made for another base family than the backbone's (`target`: what the
    identity recorded of its backbone: backbone, base_model_version)."""
    made_for, ours = lora.family, family_of(target.get("base_model_version"))
    if not made_for or not ours or made_for == ours:
        return
    profile = FAMILY_PROFILES.get(made_for)
    other = f", or tune an identity on {FAMILY_NAMES[made_for]} (--profile {profile})" if profile else ""
    backbone = target.get("backbone") or "this backbone"
    raise PVError(f"--lora {source} is a LoRA for {FAMILY_NAMES[made_for]}; this identity renders with {backbone}, "
                  f"an {FAMILY_NAMES[ours]} model", f"use a LoRA made for {FAMILY_NAMES[ours]}{other}")


def check_finite(lora: LoraFile, source: str) -> None:
    """Refuse a LoRA with NaN or infinite values (it would turn every frame black), reading its
    tensors one at a time (safetensors, never pickle)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(lora.path), framework="pt") as fh:
        for name in fh.keys():
            tensor = fh.get_tensor(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise PVError(f"--lora {source} holds NaN or infinite values ({bad} of {tensor.numel()} in {name}): it "
                              "would turn the clip black", "the file is damaged or was saved from a diverged training "
                              "run; use another copy or an earlier checkpoint")
