"""Text encoders off the accelerator while tuning: their embeddings of the prompt pool are computed
once, and the encoders (a large T5-class encoder can weigh four times the video model) wait on the CPU until
something needs a prompt encoded again (a sample clip through a pipeline, a prompt not in the pool)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..contracts import Backbone

HOST = "cpu"


def move_text_encoders(backbone: Backbone, device) -> None:
    for name in backbone.text_encoders:
        module = getattr(backbone, name, None)
        if module is not None:
            module.to(device)


def text_encoders_where(backbone: Backbone) -> set[str]:
    """The device types the backbone's text encoders' weights are on now."""
    out = set()
    for name in backbone.text_encoders:
        module = getattr(backbone, name, None)
        if module is not None:
            out |= {p.device.type for p in module.parameters()}
    return out


def text_encoders_off(backbone: Backbone) -> None:
    move_text_encoders(backbone, HOST)


@contextmanager
def text_encoders_on(backbone: Backbone) -> Iterator[None]:
    """The text encoders on the backbone's device for the block, then back on the host."""
    move_text_encoders(backbone, backbone.device)
    try:
        yield
    finally:
        text_encoders_off(backbone)
