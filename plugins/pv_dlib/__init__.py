"""Identity encoder `dlib`: an independent judge for `pv eval`. dlib's ResNet face recogniser
(`dlib_face_recognition_resnet_model_v1.dat`, 128-d) on its own face chips (150 px, padding 0.25,
aligned by dlib's 5-point landmark model) after dlib's HOG frontal face detector. The model files
ship in the `face-recognition-models` package (CC0), dlib in the `dlib-bin` wheel (Boost licence).

It is not differentiable, so pv never optimises against it: a FaceNet- or ArcFace-tuned identity
cannot have learnt its quirks, which is what makes it a judge. `pv tune --encoder dlib` is refused."""

from __future__ import annotations

from pvcli import hookimpl


def dlib(**kwargs):
    from .encoder import make_dlib

    return make_dlib(**kwargs)


dlib.differentiable = False  # IdentityEncoder.differentiable, known before the models load


@hookimpl
def register_encoders(register):
    register("dlib", dlib, description="dlib ResNet (128-d) + HOG detector, 5-point chips; offline, CC0 weights; "
             "evaluation only (not differentiable)")
