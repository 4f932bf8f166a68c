"""The core (pvcli/) knows no backbone family: only plugins and profiles name families, pipeline
classes and model ids. A third-party family then needs nothing from the core that the built-in
ones get."""

import re
from pathlib import Path

import yaml

import pvcli
from pvcli.plugins import build_plugin_manager
from pvcli.settings import shipped_profiles

CORE = Path(pvcli.__file__).parent
FAMILY_WORDS = ["animatediff", "animate diff", "sdxl", "stable diffusion", "stable-diffusion", "sd1.5", "sd 1.5", "sd15",
                "sd_v1", "lightning", "animatelcm", "motion adapter", "motionadapter", "unet2d", "unetmotion",
                "wan", "umt5", "vace", "hunyuan", "hunyuanvideo", "hunyuan_video", "llama"]
PIPELINE_CLASS = re.compile(r"\b[A-Z][A-Za-z0-9]*Pipeline\b")


def _model_ids() -> set[str]:
    ids = set()

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", node):
            ids.add(node.lower())

    for path in shipped_profiles().values():
        walk(yaml.safe_load(path.read_text()))
    return ids


def test_core_names_no_backbone_family_pipeline_class_or_model_id():
    backbones = {n.lower() for n in build_plugin_manager().entries["backbones"]}
    assert {"animatediff-tiny", "animatediff-sdxl-tiny", "wan-tiny"} <= backbones  # the words to look for are real
    ids = _model_ids()
    assert ids  # profiles name model ids
    words = set(FAMILY_WORDS) | backbones | ids
    hits = []
    for path in sorted(CORE.rglob("*.py")):
        text = path.read_text()
        low = text.lower()
        # anywhere, class names included (WanTransformer3DModel); the tracker wandb is not the family wan
        low = low.replace("wandb", "")
        hits += [f"{path.relative_to(CORE)}: {w!r}" for w in sorted(words) if w in low]
        hits += [f"{path.relative_to(CORE)}: {m!r}" for m in PIPELINE_CLASS.findall(text)]
    assert not hits, "the core names backbone specifics:\n" + "\n".join(hits)
