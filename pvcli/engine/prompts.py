"""Simulated prompt augmentation: prompts around the identity, independent of the reference
photos, so one photo is enough and the adapter does not overfit to it. `{id}` is replaced by
the identity phrase (token + class word, e.g. "sks person")."""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..errors import PVError

PROMPTS = [
    # scenes
    "a photo of {id} standing on a beach at sunset",
    "{id} walking through a busy city street at night, neon lights",
    "{id} hiking on a mountain trail, wide landscape",
    "{id} sitting in a cozy cafe, warm light",
    "{id} in a snowy forest, winter coat",
    "{id} on a rooftop overlooking the skyline",
    "{id} in a library surrounded by books",
    "{id} at a market stall full of fruit",
    "{id} in a desert with sand dunes, golden hour",
    "{id} on a boat on a calm lake",
    # actions
    "{id} riding a bicycle along a river",
    "{id} playing the guitar on a stage",
    "{id} surfing a big wave",
    "{id} cooking in a modern kitchen",
    "{id} running in a park in the morning",
    "{id} dancing at a party with colorful lights",
    "{id} reading a newspaper on a bench",
    "{id} painting on a canvas in a studio",
    "{id} skiing down a snowy slope",
    "{id} drinking coffee and looking out of a window",
    "{id} playing basketball on an outdoor court",
    "{id} swimming in a clear blue pool",
    # expressions
    "close-up portrait of {id} smiling",
    "{id} laughing with friends",
    "{id} looking surprised",
    "{id} with a serious expression, studio lighting",
    "{id} talking to the camera",
    "{id} turning the head slowly to the left",
    # outfits
    "{id} wearing a black suit and tie",
    "{id} wearing a red hoodie",
    "{id} in an astronaut suit inside a space station",
    "{id} wearing a chef's uniform",
    "{id} in medieval armor in a castle",
    "{id} wearing sunglasses and a leather jacket",
    "{id} in a lab coat in a laboratory",
    "{id} wearing a raincoat in the rain",
    # styles
    "an oil painting of {id}",
    "a watercolor painting of {id} in a garden",
    "{id} as a comic book character",
    "a pencil sketch of {id}",
    "{id}, cinematic film still, shallow depth of field",
    "{id} in the style of a 1980s photograph",
    "a pixar style 3d render of {id}",
    "{id}, anime style, vibrant colors",
    "a black and white photo of {id}",
    "{id}, cyberpunk style, futuristic city",
    "{id} in a van gogh style painting",
    "a polaroid photo of {id} at a picnic",
    "{id}, low-key lighting, dramatic shadows",
    "{id} as a statue made of marble",
]


def identity_phrase(token: str, class_word: str) -> str:
    return f"{token} {class_word}".strip()


def load_prompt_file(path: str) -> list[str]:
    p = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines()]
    except OSError as exc:
        raise PVError(f"cannot read prompts file {path}: {exc.strerror}") from None
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise PVError(f"prompts file {path} has no prompts")
    return prompts


def with_identity(prompt: str, phrase: str) -> str:
    """`{id}` placeholders become the phrase; a prompt without one gets it in front."""
    if "{id}" in prompt:
        return prompt.replace("{id}", phrase)
    if re.search(rf"(?<!\w){re.escape(phrase.split()[0])}(?!\w)", prompt):  # the token, whatever follows it
        return prompt
    return f"{phrase}, {prompt}"


class PromptSampler:
    def __init__(self, prompts: list[str], phrase: str, seed: int):
        self.prompts = [with_identity(p, phrase) for p in prompts]
        self.rng = random.Random(seed)

    def __call__(self) -> str:
        return self.rng.choice(self.prompts)

    def state(self):
        return self.rng.getstate()

    def set_state(self, state) -> None:
        self.rng.setstate(state)
