"""Community single-file checkpoints (`.safetensors` / `.ckpt` in the original layout) without the
hub: diffusers' `from_single_file` reads each component's config from a folder in diffusers layout.
pv ships those configs for the standard SD 1.5 and SDXL architectures (`single_file_configs/`), and
builds the CLIP tokenizers from OpenAI's BPE vocabulary that ships beside them (MIT, CLIP_LICENSE).
A checkpoint of another shape takes `backbone.options.single_file_config=FOLDER`."""

from __future__ import annotations

import gzip
import inspect
import json
import tempfile
from functools import cache
from pathlib import Path

from pvcli.errors import PVError
from pvcli.hub import causes, explain, short

CONFIGS = Path(__file__).parent / "single_file_configs"
BPE = CONFIGS / "clip_bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


@cache
def _vocab_files() -> tuple[dict, list[str]]:
    """(vocab, merges) as Hugging Face's CLIPTokenizer files hold them (49408 tokens)."""
    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP tokenizer SD 1.5 and SDXL use (SDXL's second one pads with "!"), offline."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_files()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token=pad_token,
                             model_max_length=77)


def load_single_file(family, path: str, dtype, config: str = ""):
    """The family's image pipeline from a single-file checkpoint, configs and tokenizers local."""
    import diffusers

    cls = getattr(diffusers, family.image_pipeline)
    folder = Path(config).expanduser() if config else CONFIGS / family.configs
    if not (folder / "model_index.json").is_file():
        raise PVError(f"backbone.options.single_file_config {folder} has no model_index.json",
                      "point it at a folder in diffusers layout (the base model's configs)")
    kwargs = {name: clip_tokenizer(pad) for name, pad in family.tokenizers.items() if not (folder / name).is_dir()}
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    source = Path(path).expanduser()
    if source.suffix.lower() == ".safetensors":
        _check_safetensors(source)
    try:
        return cls.from_single_file(str(source), config=str(folder), torch_dtype=dtype, local_files_only=True, **kwargs)
    except Exception as exc:
        raise single_file_error(exc, path, bool(config)) from None


def _check_safetensors(path: Path) -> None:
    """A damaged or truncated .safetensors file fails here, named as such, before diffusers reads it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:
        raise PVError(f"cannot load the single-file checkpoint {path}: not a readable safetensors file "
                      f"({explain(exc)})", "it is damaged or incomplete: download it again") from None
    if not keys:
        raise PVError(f"cannot load the single-file checkpoint {path}: it holds no tensors",
                      "download the model's full checkpoint again")


def single_file_error(exc: BaseException, path: str, config: bool) -> PVError:
    """What actually failed in diffusers' `from_single_file`, as one line with a hint that fits it:
    an unreadable file, a file without a component's weights, or weights of another shape."""
    chain = causes(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    where = f"cannot load the single-file checkpoint {path}"
    if names & {"SafetensorError", "UnpicklingError", "EOFError", "UnicodeDecodeError"} or \
            "Unable to load weights from checkpoint file" in text:
        return PVError(f"{where}: not a readable checkpoint ({short(chain[-1])})",
                       "it is damaged or incomplete, or not a model checkpoint (a .ckpt must hold plain tensors): "
                       "download it again, or use its .safetensors version")
    if "SingleFileComponentError" in names or "appear to be missing" in text:
        component = next((short(e) for e in reversed(chain) if type(e).__name__ == "SingleFileComponentError"),
                         short(exc))
        return PVError(f"{where}: {component}",
                       "it is not a full base-model checkpoint (a LoRA, a VAE or a UNet alone?): give the model's "
                       "full checkpoint, or a folder in diffusers layout")
    if "expected shape" in text or "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
        hint = ("its architecture differs from the configs pv ships: pass --set backbone.options.single_file_config="
                "FOLDER (the base model's diffusers configs)") if not config else "check that FOLDER matches the checkpoint"
        return PVError(f"{where}: its weights do not fit the configs ({short(exc)})", hint)
    return PVError(f"{where}: {explain(exc)}", "check the file (PV_DEBUG=1 shows the traceback)")
