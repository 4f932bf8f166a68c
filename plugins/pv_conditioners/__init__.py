"""Built-in conditioners (generation-time add-ons): `controlnet` (ControlNet models with canny,
depth, pose and lineart preprocessors, or ready maps; several at once; on a backbone that brings
its own control model, such as Wan's VACE, the maps go to that model) and `lora` (style LoRAs
in diffusers or kohya/A1111 format, stacked beside the identity adapter).

Registration only names factories; torch and diffusers are imported when one is called."""

from __future__ import annotations

from pvcli import hookimpl


# factory names differ from the submodules': importing `.controlnet` would rebind a `controlnet` name here
def controlnet_factory(**kwargs):
    from .controlnet import make_controlnet

    return make_controlnet(**kwargs)


def lora_factory(**kwargs):
    from .style_lora import make_lora

    return make_lora(**kwargs)


@hookimpl
def register_conditioners(register):
    register("controlnet", controlnet_factory, description="ControlNet: canny/depth/pose/lineart maps from a video, frames or an image")
    register("lora", lora_factory, description="style LoRA (diffusers or kohya/A1111 keys) stacked with the identity")
