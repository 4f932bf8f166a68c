"""The memory switches (issue 31) the planner chooses among: each keeps the loss and the adapter's
gradients of the plain run (within a stated tolerance), is validated in one line and recorded in the
identity. Measurements: bench/switches.py (shared here: its fixed-face detector and one-clip runner)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from conftest import HARD_TUNE, run

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def sw():
    spec = importlib.util.spec_from_file_location("pv_bench_switches", BENCH / "switches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _saved_bytes_and_grad(backbone, latents, weights):
    """Bytes autograd keeps for backward while `backbone` decodes `latents` (outside checkpointed
    regions, which keep none), and the latents' gradient of a fixed weighting of the frames."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    latents = latents.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        frames = backbone.decode(latents)
    (frames * weights).sum().backward()
    return sum(saved), latents.grad


def test_wan_decoder_checkpointing_keeps_every_gradient_and_drops_the_decoders_activations(sw, encoder, reference):
    """tune.decoder_checkpointing on tiny-wan (diffusers' AutoencoderKLWan has no checkpointing: pv
    checkpoints each latent frame with its feature cache): the input-latent gradient and the adapter's
    are the unchecked decoder's within 1e-5, and the decode keeps under a quarter of the bytes for backward."""
    plain = sw.make_tuner("tiny-wan", 64, encoder, reference, fixed_face=False)
    checked = sw.make_tuner("tiny-wan", 64, encoder, reference, {"decoder_checkpointing": True}, fixed_face=False)
    sw.same_adapter(plain, checked)
    assert not plain.bb.decoder_checkpointing and checked.bb.decoder_checkpointing
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(1, 9, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kept, grad = _saved_bytes_and_grad(plain.bb, latents, weights)
    kept_ck, grad_ck = _saved_bytes_and_grad(checked.bb, latents, weights)
    assert (grad - grad_ck).abs().max() <= 1e-5 and grad.abs().max() > 1e-2
    assert kept_ck < kept / 4, (kept_ck, kept)
    loss, _, g, _ = sw.one_clip(plain)
    loss_ck, _, g_ck, _ = sw.one_clip(checked)
    assert abs(loss - loss_ck) <= 1e-6 and (g - g_ck).abs().max() <= 1e-5 and g.abs().max() > 1e-4
    # tune.decode_dtype=bfloat16: the same clip decoded under bf16 autocast, an approximation (measured
    # on tiny-wan at 128 px: gradient cosine 0.965, loss within 7e-4)
    loss_bf, _, g_bf, _ = sw.one_clip(plain, decode_dtype="bfloat16")
    assert loss_bf != loss and abs(loss - loss_bf) < 1e-2 and sw.cosine(g, g_bf) > 0.9


def test_hunyuan_decoder_checkpointing_is_its_vaes_own_and_keeps_the_gradients(sw, encoder, reference):
    plain = sw.make_tuner("tiny-hunyuan", 64, encoder, reference, fixed_face=False)
    checked = sw.make_tuner("tiny-hunyuan", 64, encoder, reference, {"decoder_checkpointing": True}, fixed_face=False)
    sw.same_adapter(plain, checked)
    assert checked.bb.vae.is_gradient_checkpointing and not plain.bb.vae.is_gradient_checkpointing
    assert not checked.bb.denoiser.is_gradient_checkpointing  # the decoder's switch only
    loss, _, g, _ = sw.one_clip(plain)
    loss_ck, _, g_ck, _ = sw.one_clip(checked)
    assert abs(loss - loss_ck) <= 1e-6 and (g - g_ck).abs().max() <= 1e-5


def test_wan_window_decode_is_the_whole_frames_pixels_inside_its_margin():
    """Wan's decode_window runs the whole latent frame through the mid block (global spatial
    attention) and only the window through the up blocks, whose norms are per pixel: `window_margin`
    latent pixels in from the window's edge its pixels are the whole decode's. Cropping the latents
    instead (the contract's default) is not: the attention sees only the window."""
    from pv_wan.backbone import make_tiny_wan

    from pvcli.contracts import Backbone

    bb = make_tiny_wan()
    s, r = bb.vae_scale_factor, bb.window_margin
    lat = torch.randn(1, 16, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    box, idx = (1, 23, 2, 24), [0, 3]
    with torch.no_grad():
        whole = bb.decode_frames(lat, idx)
        window = bb.decode_window(lat, idx, box)
        cropped = Backbone.decode_window(bb, lat, idx, box)
    assert window.shape == (1, 2, 3, 22 * s, 22 * s)
    inner = (slice(None),) * 3 + (slice(r * s, -r * s),) * 2
    want = whole[..., (1 + r) * s:(23 - r) * s, (2 + r) * s:(24 - r) * s]
    assert (window[inner] - want).abs().max() < 1e-5
    assert (cropped[inner] - want).abs().max() > 1e-3


def test_face_decode_faces_decodes_a_window_and_keeps_the_embedding_and_gradient(sw, encoder, reference, monkeypatch):
    """tune.face_decode=faces on tiny-wan (faces found on a decode without gradient, only the window
    around them decoded under gradient): the face embedding's cosine to the full decode's >= 0.999 and
    the adapter gradient's >= 0.99 (margin 4 at 128 px; measured 0.9985 at 256 px), with a window smaller than the frame."""
    from pv_wan.backbone import WanBackbone

    boxes = []
    real = WanBackbone.decode_window

    def decode_window(self, latents, indices, box):
        boxes.append(box)
        return real(self, latents, indices, box)

    monkeypatch.setattr(WanBackbone, "decode_window", decode_window)
    monkeypatch.setattr(sw, "FACE_BOX", (0.4, 0.36, 0.58, 0.58))  # a smaller face: a window inside 128 px
    tuner = sw.make_tuner("tiny-wan", 128, encoder, reference)
    loss, emb, grad, _ = sw.one_clip(tuner, face_decode="full")
    assert not boxes
    loss_w, emb_w, grad_w, _ = sw.one_clip(tuner, face_decode="faces", face_margin=4)
    (y0, y1, x0, x1), = boxes
    assert (y1 - y0) * (x1 - x0) < 0.75 * 16 * 16
    assert sw.cosine(emb, emb_w) >= 0.999 and sw.cosine(grad, grad_w) >= 0.99 and abs(loss - loss_w) < 1e-3


@pytest.mark.parametrize("profile", ["tiny-wan", "tiny-hunyuan"])
def test_fp8_weights_store_the_frozen_base_in_float8_and_keep_the_adapter_gradient(sw, encoder, reference, profile):
    """backbone.options.weights=fp8: the frozen denoiser's weights are float8 (the adapter's stay float32)
    and one clip's adapter gradient keeps a cosine >= 0.98 to the full-precision base's (measured:
    tiny-wan 0.990, tiny-hunyuan 0.996), its loss within 1e-3."""
    base = sw.make_tuner(profile, 64, encoder, reference, fixed_face=False)
    low = sw.make_tuner(profile, 64, encoder, reference, fixed_face=False, options={"weights": "fp8"})
    sw.same_adapter(base, low)
    frozen = {p.dtype for n, p in low.bb.denoiser.named_parameters() if "lora_" not in n and p.dim() > 1}
    assert torch.float8_e4m3fn in frozen and {p.dtype for p in low.params} == {torch.float32}
    assert base.bb.weights == "bf16" and low.bb.weights == "fp8"
    lb, _, gb, _ = sw.one_clip(base)
    ll, _, gl, _ = sw.one_clip(low)
    assert sw.cosine(gb, gl) >= 0.98 and abs(lb - ll) < 1e-3


@pytest.mark.parametrize("item,message", [
    ("tune.face_decode=eyes", "tune.face_decode must be one of full, faces, got 'eyes'"),
    ("tune.decode_dtype=float16", "tune.decode_dtype must be one of float32, bfloat16"),
    ("tune.decoder_checkpointing=maybe", "tune.decoder_checkpointing must be true or false"),
    ("tune.offload=all", "tune.offload must be one of none, blocks"),
    ("tune.face_margin=-2", "tune.face_margin must be between -1 and 256"),
    ("backbone.options.weights=fp4", "backbone.options.weights must be one of bf16, fp8, got 'fp4'"),
])
def test_bad_switch_values_are_one_line(item, message, astronaut):
    r = run("tune", astronaut, "--name", "a", "--profile", "tiny-wan", "--set", item)
    assert r.exit_code != 0 and re.search(re.escape(message), r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_an_identity_records_the_switches_it_tuned_with(astronaut, pv_home):
    """Tuned through the CLI on tiny-wan with the decoder switches on: it finishes and its
    config.yaml says what it tuned with."""
    import yaml
    from conftest import tune_home

    sets = ["tune.face_decode=faces", "tune.decoder_checkpointing=true", "tune.decode_dtype=bfloat16"]
    info = tune_home(pv_home, astronaut, "switched", "tiny-wan", *HARD_TUNE, *[a for s in sets for a in ("--set", s)])
    config = yaml.safe_load((Path(info["path"]) / "config.yaml").read_text())
    assert config["tune"]["face_decode"] == "faces" and config["tune"]["decoder_checkpointing"] is True
    assert config["tune"]["decode_dtype"] == "bfloat16"


def test_wan_embeds_the_prompt_pool_before_its_experts_arrive_and_keeps_the_idle_one_on_the_host(
        monkeypatch, encoder, reference):
    """Load order on a two-expert tiny Wan (A14B's layout), with a fake device record: "cpu" plays the
    accelerator and "host" the host. Tuning embeds its whole prompt pool (text encoder forwards) before
    any expert reaches the device, and in a step (high-noise steps without gradient, then the adapted
    low-noise ones) at most one expert is ever on the device."""
    import pv_wan.backbone as wb
    from transformers import UMT5EncoderModel

    from pvcli.engine.tune import Tuner
    from pvcli.settings import parse_set, resolve

    bb = wb.make_tiny_wan({"experts": 2})
    monkeypatch.setattr(wb, "HOST", "host")
    bb.where = dict.fromkeys(bb.where, "host")
    names = {id(bb.denoiser): "low", id(bb.high_noise): "high"}
    log = []
    monkeypatch.setattr(wb, "_move", lambda module, device: log.append((names[id(module)], device)))
    real = UMT5EncoderModel.forward

    def forward(self, *args, **kwargs):
        log.append(("encode", None))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UMT5EncoderModel, "forward", forward)
    settings = resolve("tiny-wan", [parse_set(["tune.offload_text_encoder=always", "backbone.options.experts=2"])])[1]
    tuner = Tuner(bb, encoder, settings, reference)
    first_move = next(i for i, (what, _) in enumerate(log) if what != "encode")
    assert log[:first_move].count(("encode", None)) >= len(tuner.prompts.prompts) and log[first_move:] == [("low", "cpu")]
    log.clear()
    tuner.step()
    on_device = {"low"}
    for what, device in log:
        assert what != "encode"  # the pool is embedded: nothing encodes during a step
        (on_device.add if device == "cpu" else on_device.discard)(what)
        assert len(on_device) <= 1, log
    assert ("high", "cpu") in log and log[-1] == ("low", "cpu")  # high-noise steps swapped in, then back


def test_hunyuan_places_its_transformer_after_the_prompt_pool_is_embedded(monkeypatch, encoder, reference):
    """HunyuanVideo loads its transformer on the host: tuning embeds the pool (LLaMA and CLIP forwards)
    first, then places it, once (recorded on a tiny model whose placement is pretended pending)."""
    from pv_hunyuanvideo.backbone import make_tiny_hunyuanvideo
    from transformers import LlamaModel

    from pvcli.engine.tune import Tuner
    from pvcli.settings import parse_set, resolve

    bb = make_tiny_hunyuanvideo()
    bb.placed = False
    log = []
    monkeypatch.setattr(bb.denoiser, "to", lambda device: log.append(("place", str(device))))
    real = LlamaModel.forward
    monkeypatch.setattr(LlamaModel, "forward", lambda self, *a, **k: (log.append(("encode", None)), real(self, *a, **k))[1])
    settings = resolve("tiny-hunyuan", [parse_set(["tune.offload_text_encoder=always"])])[1]
    tuner = Tuner(bb, encoder, settings, reference)
    assert log.count(("encode", None)) >= len(tuner.prompts.prompts) and log[-1] == ("place", "cpu")
    assert log.count(("place", "cpu")) == 1
    tuner.step()
    assert log.count(("place", "cpu")) == 1


def test_block_offload_keeps_the_gradients_and_autograd_never_holds_a_blocks_weights(sw, encoder, reference):
    """tune.offload=blocks on tiny-wan: the loss and adapter gradient are the plain run's (1e-5), and
    while the clip runs under gradient autograd keeps no tensor that is a frozen block weight (the
    plain run keeps them for backward), so those weights can wait on the host."""
    plain = sw.make_tuner("tiny-wan", 64, encoder, reference, fixed_face=False)
    off = sw.make_tuner("tiny-wan", 64, encoder, reference, {"offload": "blocks"}, fixed_face=False)
    sw.same_adapter(plain, off)

    def kept_block_weights(tuner):
        weights = {p.data_ptr() for b in tuner.bb.offload_blocks() for p in b.parameters() if not p.requires_grad}
        hits = []

        def pack(t):
            hits.append(t.data_ptr() in weights)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = sw.one_clip(tuner)
        return sum(hits), out

    kept, (loss, _, g, _) = kept_block_weights(plain)
    kept_off, (loss_off, _, g_off, _) = kept_block_weights(off)
    assert kept > 0 and kept_off == 0
    assert abs(loss - loss_off) <= 1e-6 and (g - g_off).abs().max() <= 1e-5


def test_wan_generation_keeps_only_the_expert_at_work_on_the_device(monkeypatch):
    """pv generate on a two-expert tiny Wan (A14B's layout) through diffusers' WanPipeline, with the
    fake device record above: with swap_experts (the default) at most one expert is ever on the
    device, the high-noise one first, and the clip is the one both experts resident give."""
    import dataclasses

    import pv_wan.backbone as wb

    from pvcli.engine.generate import render_latents
    from pvcli.settings import resolve

    g = dataclasses.replace(resolve("tiny-wan")[1].generate, steps=4, frames=5, height=32, width=32)
    clips = {}
    for swap in (False, True):
        bb = wb.make_tiny_wan({"experts": 2, "swap_experts": swap})
        monkeypatch.setattr(wb, "HOST", "host")
        bb.where = dict.fromkeys(bb.where, "host")
        names = {id(bb.denoiser): "low", id(bb.high_noise): "high"}
        log = []
        monkeypatch.setattr(wb, "_move", lambda module, device, names=names, log=log: log.append((names[id(module)], device)))
        clips[swap] = render_latents(bb, "a person", g)
        on_device = set()
        for what, device in log:
            (on_device.add if device == "cpu" else on_device.discard)(what)
            assert len(on_device) <= (1 if swap else 2), log
        assert ("low", "cpu") in log and ("high", "cpu") in log
        if swap:
            assert log[0] == ("high", "cpu") and log[-1] == ("low", "cpu")  # high-noise steps first, then swapped
    torch.testing.assert_close(clips[True], clips[False], rtol=0, atol=0)


def test_block_offload_prefetches_the_next_block_in_passes_without_gradient(monkeypatch):
    """tune.offload=blocks in the sampler's passes (no gradient): each block starts the next block's
    copy before it computes, and the velocity is the plain model's."""
    import pv_wan.backbone as wb

    import pvcli.engine.offload as off

    made = []
    init = off.Prefetch.__init__
    monkeypatch.setattr(off.Prefetch, "__init__", lambda self, *a: (init(self, *a), made.append(self))[0])
    bb = wb.make_tiny_wan({})
    x = torch.randn(1, bb.latent_channels, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds = bb.encode_prompt(["a portrait of a person"])
    with torch.no_grad():
        plain = bb.predict_noise(x, 500, embeds)
        blocks = off.offload_blocks(bb)
        offloaded = bb.predict_noise(x, 500, embeds)
    (prefetch,) = made
    assert blocks > 1 and prefetch.hits == blocks - 1 and not prefetch.pending
    torch.testing.assert_close(offloaded, plain, rtol=0, atol=0)
