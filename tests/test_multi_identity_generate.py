"""`pv generate PROMPT --id alice --id bob`: several identities in one clip, each in its region
(latent mode). The exact checks: one identity over the whole frame is that identity's own clip bit
for bit, and identities at weight 0 are the base model bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import randomize_lora_b, run

QUICK = ("--set", "generate.frames=4")


@pytest.fixture(scope="module")
def pair_home(alice_home) -> Path:
    """alice (tuned) and bob: alice's folder with other adapter weights."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pvcli.identity_files import tensor_hash

    src = alice_home / "identities" / "alice"
    dst = alice_home / "identities" / "bob"
    if not dst.exists():
        shutil.copytree(src, dst)
        info = json.loads((dst / "identity.json").read_text())
        info["name"] = "bob"
        (dst / "identity.json").write_text(json.dumps(info))
        path = dst / "adapter.safetensors"
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
        state = load_file(str(path))
        holder = torch.nn.Module()
        for k, (key, value) in enumerate(sorted(state.items())):
            holder.register_parameter(f"p{k}_lora_B" if "lora_B" in key else f"p{k}", torch.nn.Parameter(value))
        randomize_lora_b(holder, seed=7, std=0.3)
        state = {key: p.data for key, p in zip(sorted(state), holder.parameters(), strict=True)}
        save_file(state, str(path), metadata={**meta, "tensors_sha256": tensor_hash(state)})
    return alice_home


@pytest.fixture
def home(pair_home, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(pair_home))
    return pair_home


def _frames(*args) -> np.ndarray:
    from pvcli.video import read_frames

    res = run("generate", *args, *QUICK, "--json", "--quiet")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout.splitlines()[-1])
    return read_frames(Path(record["path"])), record


def test_one_identity_over_the_frame_is_its_own_clip(home, tmp_path):
    alone, _ = _frames("alice", "{id} surfing", "-o", tmp_path / "alone")
    boxed, record = _frames("alice surfing", "--id", "alice=box:0,0,1,1", "-o", tmp_path / "boxed")
    assert np.array_equal(alone, boxed)
    layered, layer_record = _frames("alice surfing", "--id", "alice=box:0,0,1,1", "--region-mode", "layer",
                                    "-o", tmp_path / "layered")
    assert np.array_equal(alone, layered) and layer_record["region_mode"] == "layer"
    assert record["prompt"] == "sks person surfing"
    assert [{k: r[k] for k in ("identity", "box", "weight", "active_fraction")} for r in record["regions"]] == [
        {"identity": "alice", "box": [0.0, 0.0, 1.0, 1.0], "weight": 1.0, "active_fraction": 1.0}]


def test_zero_weights_are_the_base_model_and_regions_differ(home, tmp_path):
    base, _ = _frames("alice", "{id} and {id} talking", "--no-adapter", "-o", tmp_path / "base")
    zero, _ = _frames("alice and bob talking", "--id", "alice:0", "--id", "bob:0", "-o", tmp_path / "zero")
    assert np.array_equal(base, zero)
    both, record = _frames("alice and bob talking", "--id", "alice", "--id", "bob", "-o", tmp_path / "both")
    assert record["identities"] == ["alice", "bob"] and record["region_mode"] == "latent"
    assert [r["box"] for r in record["regions"]] == [[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]
    a, _ = _frames("alice and bob talking", "--id", "alice=box:0,0,1,1", "-o", tmp_path / "a")
    b, _ = _frames("alice and bob talking", "--id", "bob=box:0,0,1,1", "-o", tmp_path / "b")
    half = both.shape[2] // 2

    def dist(x, y):
        return float(np.abs(x.astype(np.float64) - y).mean())

    # each half is drawn by its own identity: nearer that identity's own clip than the other's
    assert dist(both[:, :, :half], a[:, :, :half]) < dist(both[:, :, :half], b[:, :, :half])
    assert dist(both[:, :, half:], b[:, :, half:]) < dist(both[:, :, half:], a[:, :, half:])
    assert not np.array_equal(both, base)


def test_a_batch_from_stdin_names_the_group(home, tmp_path):
    res = run("generate", "-", "--id", "alice", "--id", "bob", "-o", str(tmp_path / "{name}_{index}.gif"), *QUICK,
              input="alice waves\nbob waves\n")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.split() == [str(tmp_path / "alice+bob_0.gif"), str(tmp_path / "alice+bob_1.gif")]
    # the clip's record says where each identity stands, and pv eval --id reads it
    res = run("eval", tmp_path / "alice+bob_0.gif", "--id", "alice", "--id", "bob", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["videos"][0]["regions_from"] == "clip record"


@pytest.mark.parametrize("args, message", [
    (["x", "--id", "carol"], "no identity named 'carol'"),
    (["x", "--id", "alice", "--id", "alice"], "--id alice is given twice"),
    (["x", "--id", "alice=box:0,0,0.5,1", "--id", "bob"], "give a box for every --id or for none"),
    (["x", "--id", "alice=box:0,0,0.6,1", "--id", "bob=box:0.5,0,1,1"], "the boxes of alice and bob overlap"),
    (["x", "--id", "alice=box:0.5,0,0.5,1"], "is empty"),
    (["x", "--id", "alice=box:0,0,2,1"], "must lie in [0, 1]"),
    (["x", "--id", "alice:lots"], "the weight 'lots' is not a number"),
    (["x", "--id", "alice:nan"], "the weight must be between 0 and 4"),
    (["x", "--id", "alice=circle:1"], "a region is box:x1,y1,x2,y2"),
    (["x", "--id", "alice", "--layout", "[bold]diag"], "unknown --layout '[bold]diag'"),
    (["x", "--id", "alice", "--region-mode", "pixel"], "unknown --region-mode 'pixel'"),
    (["x", "y", "--id", "alice"], "with --id the prompt comes first and alone"),
])
def test_bad_groups_are_one_line(home, tmp_path, args, message):
    res = run("generate", *args, "-o", tmp_path / "out.gif")
    assert res.exit_code != 0
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.output and "loading backbone" not in res.stderr
    assert not (tmp_path / "out.gif").exists()


def test_identities_on_different_backbones_are_refused(home, tmp_path):
    info_path = home / "identities" / "bob" / "identity.json"
    original = info_path.read_text()
    info = json.loads(original)
    info["backbone"] = "wan-tiny"
    info_path.write_text(json.dumps(info))
    try:
        res = run("generate", "x", "--id", "alice", "--id", "bob", "-o", tmp_path / "out.gif")
    finally:
        info_path.write_text(original)
    assert res.exit_code != 0
    assert "tuned on different backbones (alice on animatediff-tiny, bob on wan-tiny)" in res.stderr


def test_masks_tile_and_feather():
    import torch

    from pvcli.engine.face_assignment import layout_regions
    from pvcli.engine.regions import region_mask, region_masks

    masks = region_masks(layout_regions(2), 16, 32, feather=0.125)
    assert torch.allclose(masks.sum(0), torch.ones(16, 32))  # strips that tile the frame sum to 1
    assert masks[0, :, 0].eq(1).all() and masks[0, :, -1].eq(0).all()
    assert 0 < masks[0, 0, 15] < 1  # a soft edge at the seam
    hard = region_mask((0.25, 0.25, 0.75, 0.75), 4, 4, feather=0)
    assert hard.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


def _three_adapters(family: str, factory: str):
    """A tiny backbone with the single-identity adapter, pv_person1 (the same weights) and pv_person2
    (other weights), all random."""
    import importlib

    import torch

    from pvcli.engine.adapter import ADAPTER_NAME, add_adapter

    bb = getattr(importlib.import_module(family), factory)()
    for name in (ADAPTER_NAME, "pv_person1", "pv_person2"):
        add_adapter(bb, "attention", 4, 4, adapter_name=name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for n, p in bb.denoiser.named_parameters():
            if "lora_B" in n and (".pv_person2." in n or f".{ADAPTER_NAME}." in n):
                p.data.normal_(0, 0.3)
    lora = {n: p for n, p in bb.denoiser.named_parameters() if f".{ADAPTER_NAME}." in n}
    for n, p in bb.denoiser.named_parameters():  # person 1 = the single identity's weights
        if ".pv_person1." in n:
            p.data.copy_(lora[n.replace(".pv_person1.", f".{ADAPTER_NAME}.")])
    return bb


@pytest.mark.parametrize("mode", ["latent", "layer"])
@pytest.mark.parametrize("family, factory, profile", [
    ("pv_animatediff_sdxl.backbone", "make_tiny_sdxl", "tiny-sdxl"),
    ("pv_wan.backbone", "make_tiny_wan", "tiny-wan"),
    ("pv_hunyuanvideo.backbone", "make_tiny_hunyuanvideo", "tiny-hunyuan"),
])
def test_every_family_mixes_regions(family, factory, profile, mode):
    """On each family's own pipeline (SDXL's extra conditioning, Wan's separate CFG calls, HunyuanVideo's
    embedded guidance): an identity over the whole frame renders exactly what its single-identity path
    renders, and two identities in halves give a clip unlike either alone."""
    import dataclasses

    import torch

    from pvcli.engine.generate import render_latents
    from pvcli.engine.regions import LayerMixer, Person, RegionMixer
    from pvcli.settings import resolve

    Mixer = RegionMixer if mode == "latent" else LayerMixer
    bb = _three_adapters(family, factory)
    g = dataclasses.replace(resolve(profile)[1].generate, steps=2, seed=1)
    prompt = "sks person waving"
    single = render_latents(bb, prompt, g)
    whole = Mixer(bb, [Person("pv_person1", 1.0, None)], [(0, 0, 1, 1)], {})
    assert torch.equal(render_latents(bb, prompt, g, regions=whole), single)
    assert whole.calls > 0
    halves = Mixer(bb, [Person("pv_person1", 1.0, None), Person("pv_person2", 1.0, None)],
                         [(0, 0, 0.5, 1), (0.5, 0, 1, 1)], {})
    mixed = render_latents(bb, prompt, g, regions=halves)
    assert not torch.equal(mixed, single)


@pytest.mark.parametrize("family, factory, profile", [
    ("pv_wan.backbone", "make_tiny_wan", "tiny-wan"),
    ("pv_hunyuanvideo.backbone", "make_tiny_hunyuanvideo", "tiny-hunyuan"),
])
def test_regions_leak_less_than_both_adapters_everywhere(family, factory, profile):
    """Leakage in each half: distance of the group clip's half from that identity's own clip, over the
    same for the naive run with both adapters on everywhere (bench/multi_identity.py measures it per
    family). Both modes stay well under the naive run."""
    import dataclasses

    from pvcli.contracts import GenerationPlan
    from pvcli.engine.generate import render_latents
    from pvcli.engine.regions import LayerMixer, Person, RegionMixer
    from pvcli.settings import resolve

    bb = _three_adapters(family, factory)
    g = dataclasses.replace(resolve(profile)[1].generate, steps=2, seed=1)
    pair = [Person("pv_person1", 1.0, None), Person("pv_person2", 1.0, None)]
    alone = [render_latents(bb, "x", g, regions=RegionMixer(bb, [p], [(0, 0, 1, 1)], {})) for p in pair]
    naive = render_latents(bb, "x", g, adapter_scale=0.0,
                           plan=GenerationPlan(g.frames, g.height, g.width, loras={"pv_person1": 1.0, "pv_person2": 1.0}))
    w = naive.shape[-1] // 2
    sides = [(..., slice(0, w)), (..., slice(w, None))]
    for mixer in (RegionMixer, LayerMixer):
        clip = render_latents(bb, "x", g, regions=mixer(bb, pair, [(0, 0, 0.5, 1), (0.5, 0, 1, 1)], {}))
        for k in range(2):
            leak = (clip[sides[k]] - alone[k][sides[k]]).abs().mean() / (naive[sides[k]] - alone[k][sides[k]]).abs().mean()
            assert leak < 0.5, (mixer.__name__, k, float(leak))


def test_layout_auto_finds_the_people_and_says_when_it_cannot(home, tmp_path, encoder):
    """The regions of --layout auto come from the faces a first pass drew, left to right; the tiny model
    draws none, so it says so and falls back to left-right strips."""
    import cv2
    import skimage.data

    from pvcli.jobs.generate_identities import regions_from_faces

    astro = skimage.data.astronaut()
    face = max(encoder.detect(astro), key=lambda f: f.area)
    x1, y1, x2, y2 = (int(v) for v in face.box)
    crop = cv2.resize(astro[max(0, y1 - 40):y2 + 60, max(0, x1 - 40):x2 + 40], (128, 160))
    frame = np.concatenate([np.full((160, 64, 3), 128, np.uint8), crop, crop, np.full((160, 64, 3), 128, np.uint8)], 1)
    found = [encoder.detect(frame)] * 3
    warnings = []
    boxes = regions_from_faces(found, 2, *frame.shape[:2], warnings.append)
    assert not warnings and len(boxes) == 2
    centres = sorted(((f.box[0] + f.box[2]) / 2 / frame.shape[1], (f.box[1] + f.box[3]) / 2 / frame.shape[0])
                     for f in found[0])
    for (cx, cy), (bx1, by1, bx2, by2) in zip(centres, boxes, strict=True):
        assert bx1 <= cx <= bx2 and by1 <= cy <= by2  # each region holds its person's face
    assert boxes[0][2] <= boxes[1][0]  # and they do not overlap
    res = run("generate", "alice and bob talking", "--id", "alice", "--id", "bob", "--layout", "auto", *QUICK,
              "-o", tmp_path / "auto.gif", "--json")
    assert res.exit_code == 0, res.stderr
    assert "--layout auto: the first pass shows 0 face(s) for 2 identities" in res.stderr
    record = json.loads(res.stdout)
    assert record["layout"] == "auto" and [r["box"] for r in record["regions"]] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
