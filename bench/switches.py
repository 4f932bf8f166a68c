"""The memory switches (issue 31) measured on the tiny backbones, CPU: what each changes in one
tuning clip's loss, adapter gradient and face embeddings against the plain run, and its time.

    python bench/switches.py [--size 256] [--margins 2 4 8 -1] [--only faces|pairs|fp8] [--out FILE.json]

face_decode=faces is measured with a face placed by hand (the tiny models draw none, and without a
face the crop is the whole frame, which the window then covers exactly): the detector is replaced
by one that returns a fixed box, so both runs crop the same region of the same clip."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

PROFILES = {"tiny-wan": "wan", "tiny-hunyuan": "hunyuan", "tiny": "animatediff"}
FACE_BOX = (0.36, 0.28, 0.62, 0.6)  # x1, y1, x2, y2 as fractions of the frame: a portrait's face


class FixedFace:
    """An identity encoder whose detector always finds one face at FACE_BOX (everything else is the
    wrapped encoder's)."""

    def __init__(self, encoder):
        self._enc = encoder

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def detect(self, image):
        import numpy as np

        from pvcli.faces import Face

        h, w = image.shape[:2]
        x1, y1, x2, y2 = FACE_BOX[0] * w, FACE_BOX[1] * h, FACE_BOX[2] * w, FACE_BOX[3] * h
        eyes_y, mouth_y, cx = y1 + 0.38 * (y2 - y1), y1 + 0.78 * (y2 - y1), (x1 + x2) / 2
        marks = np.array([[cx - 0.2 * (x2 - x1), eyes_y], [cx + 0.2 * (x2 - x1), eyes_y], [cx, (eyes_y + mouth_y) / 2],
                          [cx - 0.15 * (x2 - x1), mouth_y], [cx + 0.15 * (x2 - x1), mouth_y]])
        return [Face((x1, y1, x2, y2), 0.99, marks)]


def make_tuner(profile: str, size: int, encoder, reference, overrides: dict | None = None, options: dict | None = None,
               fixed_face: bool = True):
    """A Tuner on a tiny profile at size x size, adapter B matrices random (so gradients reach every
    layer and the decoded clip depends on the adapter)."""
    import torch

    from pvcli.engine.tune import Tuner
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import from_dict, resolve

    settings = resolve(profile)[1]
    tune = {"height": size, "width": size, "warmup_steps": 0, "held_out": 0, **(overrides or {})}
    settings = from_dict(settings.to_dict(), [{"tune": tune, "backbone": {"options": options or {}}}])
    backbone = build_plugin_manager().create("backbones", settings.backbone.name, options=settings.backbone.options,
                                             device="cpu")
    tuner = Tuner(backbone, FixedFace(encoder) if fixed_face else encoder, settings, reference)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name, p in backbone.denoiser.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.05)
    return tuner


def one_clip(tuner, **tune):
    """(loss, face embeddings, adapter gradient, seconds) of one clip at a fixed draw, with `tune`
    settings changed for it."""
    import torch

    for k, v in tune.items():
        setattr(tuner.s.tune, k, v)
    tuner.noise = torch.Generator().manual_seed(11)
    tuner.frame_rng = random.Random(0)
    tuner.prompts.rng.seed(0)
    for p in tuner.params:
        p.grad = None
    start = time.perf_counter()
    loss, _, _, faces, _ = tuner._clip_loss(tuner.reference)
    loss.backward()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        emb = tuner.enc.embed(faces.crops).float()
    grad = torch.cat([p.grad.flatten() for p in tuner.params if p.grad is not None])
    return float(loss.detach()), emb, grad, seconds


def cosine(a, b) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.flatten()[None].double(), b.flatten()[None].double())[0])


def face_decode(profile: str, size: int, margins: list[int], encoder, reference) -> dict:
    """face_decode=faces against full, per margin: embedding cosine, gradient cosine, window share
    of the latent frame, time ratio."""
    tuner = make_tuner(profile, size, encoder, reference)
    one_clip(tuner, face_decode="full")  # warm
    loss, emb, grad, sec = one_clip(tuner, face_decode="full")
    out = {"size": size, "full_seconds": round(sec, 3), "margins": {}}
    for m in margins:
        lw, ew, gw, sw = one_clip(tuner, face_decode="faces", face_margin=m)
        from pvcli.engine.face_crops import face_window

        lat = size // tuner.bb.vae_scale_factor
        mats = [tuner.enc.align_matrix(tuner.enc.detect(__import__("numpy").zeros((size, size, 3)))[0])]
        own = tuner.bb.window_margin if m < 0 else m
        y0, y1, x0, x1 = face_window(mats, tuner.enc.input_size, tuner.bb.vae_scale_factor, own, (lat, lat))
        out["margins"][m] = {"embedding_cos": round(cosine(emb, ew), 5), "grad_cos": round(cosine(grad, gw), 5),
                             "loss_diff": round(abs(loss - lw), 6), "window_share": round((y1 - y0) * (x1 - x0) / lat**2, 3),
                             "time_ratio": round(sw / sec, 3)}
    return out


def pairs(profile: str, size: int, encoder, reference) -> dict:
    """decoder_checkpointing and decode_dtype against the plain run: loss and gradient agreement, time."""
    tuner = make_tuner(profile, size, encoder, reference, fixed_face=False)
    one_clip(tuner)
    base = one_clip(tuner)
    out = {}
    bf = one_clip(tuner, decode_dtype="bfloat16")
    out["decode_dtype=bfloat16"] = {"grad_cos": round(cosine(base[2], bf[2]), 5), "loss_diff": round(abs(base[0] - bf[0]), 6),
                                    "time_ratio": round(bf[3] / base[3], 3)}
    tuner.s.tune.decode_dtype = "float32"
    checked = make_tuner(profile, size, encoder, reference, {"decoder_checkpointing": True}, fixed_face=False)
    same_adapter(tuner, checked)
    one_clip(checked)
    ck = one_clip(checked)
    out["decoder_checkpointing"] = {"grad_max_abs_diff": float((base[2] - ck[2]).abs().max()),
                                    "loss_diff": abs(base[0] - ck[0]), "time_ratio": round(ck[3] / base[3], 3)}
    from pvcli.errors import PVError

    try:
        off = make_tuner(profile, size, encoder, reference, {"offload": "blocks"}, fixed_face=False)
    except PVError as exc:
        out["offload=blocks"] = {"refused": str(exc)}
        return out
    same_adapter(tuner, off)
    one_clip(off)
    ob = one_clip(off)
    out["offload=blocks"] = {"grad_max_abs_diff": float((base[2] - ob[2]).abs().max()),
                             "loss_diff": abs(base[0] - ob[0]), "time_ratio": round(ob[3] / base[3], 3),
                             "note": "CPU: host and device are one memory, so this is the recomputation's cost only"}
    return out


def diffusers_group_offload(profile: str, size: int, encoder, reference) -> dict:
    """diffusers' group offloading (`apply_group_offloading`, block level, one block a group) with
    streams on the tuner's transformer, as the issue asks: what it answers on this machine. Without a
    CUDA device it cannot run with streams, and without streams on the CPU host and device are one
    memory (its moves are no-ops), so the training question is answered from its code (BENCHMARKS.md)."""
    from diffusers.hooks import apply_group_offloading

    tuner = make_tuner(profile, size, encoder, reference, fixed_face=False)
    try:
        apply_group_offloading(tuner.bb.denoiser, onload_device="cpu", offload_type="block_level",
                               num_blocks_per_group=1, use_stream=True)
        return {"use_stream": "applied"}
    except Exception as exc:  # noqa: BLE001 - the error is the measurement
        return {"use_stream": f"{type(exc).__name__}: {exc}"}


def same_adapter(src, dst) -> None:
    from pvcli.engine.adapter import adapter_state_dict, load_adapter_state_dict

    load_adapter_state_dict(dst.bb.denoiser, adapter_state_dict(src.bb.denoiser))


def clip(tuner, seed: int = 1001, adapter: bool = True):
    """A clip's frames (F, 3, H, W) from `seed`, as the held-out measure samples it."""
    import torch

    from pvcli.engine.sampling import initial_latents

    t = tuner.s.tune
    with torch.no_grad():
        g = torch.Generator("cpu").manual_seed(seed)
        latents = initial_latents(tuner.bb, t.frames, t.height, t.width, g)
        return tuner.bb.decode(tuner._final(tuner.prompts.prompts[0], latents, grad=False, adapter=adapter,
                                            generator=g))[0]


def fp8(profile: str, size: int, encoder, reference, steps: int = 3) -> dict:
    """backbone.options.weights=fp8 against the full-precision base: one clip's adapter-gradient cosine
    and time, then an identity tuned `steps` steps over fp8 weights generating over full-precision
    ones: the clip's mean abs difference, beside what the adapter itself changes."""
    base = make_tuner(profile, size, encoder, reference, fixed_face=False)
    low = make_tuner(profile, size, encoder, reference, fixed_face=False, options={"weights": "fp8"})
    same_adapter(base, low)
    one_clip(base), one_clip(low)
    lb, _, gb, tb = one_clip(base)
    ll, _, gl, tl = one_clip(low)
    for _ in range(steps):
        low.step()
    same_adapter(low, base)
    over_fp8, over_full, no_adapter = clip(low), clip(base), clip(base, adapter=False)
    return {"grad_cos": round(cosine(gb, gl), 5), "loss_diff": round(abs(lb - ll), 6), "time_ratio": round(tl / tb, 3),
            "clip_diff_fp8_vs_full": round(float((over_fp8 - over_full).abs().mean()), 5),
            "adapter_effect": round(float((over_full - no_adapter).abs().mean()), 5)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--margins", type=int, nargs="+", default=[2, 4, 8, -1])  # -1: the backbone's window_margin
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES))
    ap.add_argument("--only", choices=["faces", "pairs", "fp8", "group_offload"], default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from common import astronaut_photo
    from pv_facenet.encoder import make_facenet

    from pvcli.engine.face_crops import embed_crops, mean_embedding, reference_faces

    encoder = make_facenet()
    refs = reference_faces(encoder, [astronaut_photo()])
    reference = mean_embedding(embed_crops(encoder, [r.crop for r in refs]))
    results = {}
    for profile in args.profiles:
        r = {}
        if args.only in (None, "faces"):
            r["face_decode"] = face_decode(profile, args.size, args.margins, encoder, reference)
        if args.only in (None, "pairs"):
            r.update(pairs(profile, args.size, encoder, reference))
        if args.only in (None, "fp8"):
            r["weights=fp8"] = fp8(profile, args.size, encoder, reference)
        if args.only in (None, "group_offload") and profile != "tiny":
            r["diffusers_group_offload"] = diffusers_group_offload(profile, min(args.size, 128), encoder, reference)
        results[profile] = r
        print(profile, json.dumps(r, indent=1), file=sys.stderr)
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
