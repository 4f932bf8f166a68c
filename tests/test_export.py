"""`pv export` / `pv import`: LoRA files that diffusers (and through kohya keys ComfyUI/A1111)
load and that render the same frames as pv; bundles that move an identity between machines and
refuse anything unsafe without touching the store."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from conftest import NO_HELD_OUT, run
from safetensors import safe_open
from safetensors.torch import load_file

PROMPT = "sks person, surfing at sunset"


@pytest.fixture(scope="module")
def home(alice_home):
    """alice: rank 4, alpha 8 (scale 2, so a lost alpha shows), trained hard enough to change frames."""
    return alice_home


@pytest.fixture
def store(home, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(home))
    return home / "identities"


def _pipeline():
    """diffusers' own AnimateDiffPipeline on the tiny backbone's weights, no pv adapter in it."""
    from diffusers import AnimateDiffPipeline, MotionAdapter
    from pv_animatediff.backbone import make_tiny

    tiny = make_tiny()
    pipe = AnimateDiffPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
                               motion_adapter=MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2,
                                                            motion_norm_num_groups=2, motion_num_attention_heads=4),
                               scheduler=tiny.new_scheduler())
    pipe.unet = tiny.unet
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(pipe):
    return pipe(PROMPT, negative_prompt="", num_frames=4, height=64, width=64, num_inference_steps=4, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(3), output_type="pt").frames[0]


# pv's frames are uint8 (x * 255 rounded): a float frame of the same clip is within half a level of them
QUANTIZED = 0.5 / 255 + 1e-4


@pytest.fixture(scope="module")
def pv_frames(home, tmp_path_factory):
    """What `pv generate` writes for alice (its gating is off: active_fraction 1), read back from a
    lossless folder of PNG frames, as floats (F, 3, H, W) in [0, 1] like the pipeline's "pt" output."""
    from pvcli.video import read_frames, read_metadata

    out = tmp_path_factory.mktemp("pvgenerate") / "frames"
    mp = pytest.MonkeyPatch()
    mp.setenv("PV_HOME", str(home))
    try:
        r = run("generate", "alice", "surfing at sunset", "--seed", 3, "--frames", 4, "--steps", 4, "--height", 64,
                "--width", 64, "--guidance", 1.0, "--negative", "", "-o", out, "-q")
    finally:
        mp.undo()
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out) and out.is_dir()
    meta = read_metadata(out)
    assert meta["prompt"] == PROMPT and meta["seed"] == 3 and meta["negative_prompt"] == ""
    assert meta["active_fraction"] == 1.0 and meta["adapter_scale"] == 1.0
    frames = read_frames(out)
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def base_frames():
    return _frames(_pipeline())


def test_diffusers_export_loads_with_load_lora_weights_and_renders_pv_frames(store, tmp_path, pv_frames, base_frames):
    out = tmp_path / "alice.safetensors"
    r = run("export", "alice", "--format", "diffusers", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["path"] == str(out) and record["format"] == "diffusers" and record["gating"] is None
    with safe_open(str(out), "pt") as fh:
        meta, keys = fh.metadata(), list(fh.keys())
    assert all(k.startswith("unet.") and ".lora_" in k for k in keys)
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    assert json.loads(meta[LORA_ADAPTER_METADATA_KEY])["unet.lora_alpha"] == 8.0
    assert meta["pv.identity"] == "alice" and meta["pv.trigger_phrase"] == "sks person"
    assert meta["pv.rank"] == "4" and meta["pv.backbone"] == "animatediff-tiny" and meta["pv.encoder"] == "facenet"
    assert {"pv.base_model", "pv.motion_adapter", "pv.targets", "pv.active_fraction", "pv.steps", "pv.seed",
            "pv.version", "pv.tensors_sha256"} <= set(meta)

    pipe = _pipeline()
    pipe.load_lora_weights(str(out), adapter_name="alice")
    theirs = _frames(pipe)
    assert (pv_frames - base_frames).abs().max() > 1e-2  # the adapter does change the clip
    assert (theirs - pv_frames).abs().max() < QUANTIZED


def test_kohya_export_reads_back_through_diffusers_non_diffusers_loader(store, tmp_path, pv_frames):
    out = tmp_path / "alice_comfy.safetensors"
    r = run("export", "alice", "--format", "comfy", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    tensors = load_file(out)
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in tensors} == {"lora_down", "lora_up",
                                                                                            "alpha"}
    alphas = [v for k, v in tensors.items() if k.endswith(".alpha")]
    assert alphas and all(float(a) == 8.0 for a in alphas)  # the real alpha, not the rank
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.trigger_phrase"] == "sks person" and meta["pv.export_format"] == "kohya"

    pipe = _pipeline()
    pipe.load_lora_weights(str(out), adapter_name="alice")
    assert (_frames(pipe) - pv_frames).abs().max() < QUANTIZED


def test_kohya_export_loads_on_the_plain_image_model(store, tmp_path):
    """AnimateDiff front ends (ComfyUI, A1111) put a LoRA on the SD 1.5 image UNet: the spatial keys fit it."""
    from diffusers import StableDiffusionPipeline
    from pv_animatediff.backbone import build_tiny_components

    out = tmp_path / "a.safetensors"
    assert run("export", "alice", "--format", "a1111", "-o", out).exit_code == 0
    c = build_tiny_components()
    pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                   unet=c["unet2d"], scheduler=c["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe(PROMPT, height=64, width=64, num_inference_steps=2, guidance_scale=1.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    before = image()
    pipe.load_lora_weights(str(out), adapter_name="alice")
    assert (image() - before).abs().max() > 1e-3


def _error(r, code=1):
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


def test_export_refuses_bad_requests_and_keeps_existing_files(store, tmp_path):
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"precious")
    assert "already exists" in _error(run("export", "alice", "-o", existing))
    assert existing.read_bytes() == b"precious"
    assert run("export", "alice", "-o", existing, "--force").exit_code == 0
    assert existing.read_bytes() != b"precious"
    assert "unknown export format 'onnx'" in _error(run("export", "alice", "--format", "onnx", "-o", tmp_path / "x.st"))
    assert "no identity named 'bob'" in _error(run("export", "bob", "-o", tmp_path / "b.safetensors"))
    assert ".safetensors" in _error(run("export", "alice", "-o", tmp_path / "x.pt"))
    assert ".pvid" in _error(run("export", "alice", "--bundle", tmp_path / "x.zip"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_export_of_a_gated_identity_says_gating_does_not_travel(store, astronaut, tmp_path):
    r = run("tune", astronaut, "--name", "gated", "--profile", "tiny", *NO_HELD_OUT, "--steps", "0", "--active-fraction", "0.5",
            "--quiet")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "g.safetensors"
    r = run("export", "gated", "-o", out)
    assert r.exit_code == 0 and "last 50% of denoising steps" in r.stderr and "--active-fraction 1" in r.stderr
    with safe_open(str(out), "pt") as fh:
        assert "other tools apply a LoRA at every step" in fh.metadata()["pv.gating"]
    assert run("rm", "gated", "--yes").exit_code == 0


def test_bundle_round_trip_imports_an_identical_identity(store, tmp_path):
    bundle = tmp_path / "alice.pvid"
    r = run("export", "alice", "--bundle", bundle, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(bundle)
    with tarfile.open(bundle) as tar:
        assert {m.name for m in tar} == {"manifest.json", "adapter.safetensors", "reference.safetensors",
                                         "refs/face_0.png", "refs/photo_0.png", "config.yaml", "identity.json",
                                         "log.jsonl"}

    r = run("import", bundle, "--name", "bob", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "bob"
    a, b = store / "alice", store / "bob"
    assert (a / "adapter.safetensors").read_bytes() == (b / "adapter.safetensors").read_bytes()
    assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
    import cv2

    assert np.array_equal(cv2.imread(str(a / "refs" / "face_0.png")), cv2.imread(str(b / "refs" / "face_0.png")))
    assert np.array_equal(cv2.imread(str(a / "refs" / "photo_0.png")), cv2.imread(str(b / "refs" / "photo_0.png")))
    info = json.loads(run("show", "bob", "--json").stdout)
    assert info["name"] == "bob" and info["imported_name"] == "alice"

    import pvcli as pv

    clip_a = pv.Identity.load("alice").generate("surfing", seed=2, frames=4)
    clip_b = pv.Identity.load("bob").generate("surfing", seed=2, frames=4)
    assert np.array_equal(clip_a.frames, clip_b.frames)

    assert "already exists" in _error(run("import", bundle, "--name", "bob"))
    assert run("import", bundle, "--name", "bob", "--force").exit_code == 0
    assert run("rm", "bob", "--yes").exit_code == 0


def _tar(path, members):
    """members: (TarInfo fields..., data) -> a gzipped tar written as an attacker would."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name, data=b"x", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data) if data is not None else 0
    for k, v in fields.items():
        setattr(info, k, v)
    return info, data


@pytest.fixture
def good_members(store, tmp_path):
    bundle = tmp_path / "good.pvid"
    assert run("export", "alice", "--bundle", bundle).exit_code == 0
    with tarfile.open(bundle) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]


def test_import_refuses_unsafe_or_damaged_archives_and_leaves_the_store_alone(store, tmp_path, good_members,
                                                                            monkeypatch):
    before = sorted(p.name for p in store.iterdir())
    manifest = json.loads(dict((m.name, d) for m, d in good_members)["manifest.json"])

    def with_extra(*extra):
        return [*good_members, *extra]

    def tampered():
        out = []
        for m, d in good_members:
            if m.name == "config.yaml":
                d = d.replace(b"steps: 2", b"steps: 3")
                m.size = len(d)
            out.append((m, d))
        return out

    cases = {
        "unsafe path '../evil'": with_extra(_member("../evil")),
        "unsafe path '/etc/evil'": with_extra(_member("/etc/evil")),
        "is a link": with_extra(_member("log2", None, type=tarfile.SYMTYPE, linkname="/etc/passwd")),
        "is not a regular file": with_extra(_member("dev", None, type=tarfile.CHRTYPE, devmajor=1, devminor=3)),
        "unexpected member 'payload.pt'": with_extra(_member("payload.pt", b"\x80\x04pickle")),
        "config.yaml does not match its hash": tampered(),
        "no manifest.json": [(m, d) for m, d in good_members if m.name != "manifest.json"],
    }
    for why, members in cases.items():
        path = _tar(tmp_path / "bad.pvid", members)
        err = _error(run("import", path, "--name", "mallory"))
        assert "not a valid pv identity bundle" in err and why in err, (why, err)
        assert err.count("\n") <= 2

    (tmp_path / "junk.pvid").write_bytes(b"definitely not a tar archive")
    assert "not a valid pv identity bundle" in _error(run("import", tmp_path / "junk.pvid", "--name", "mallory"))
    assert "bundle not found" in _error(run("import", tmp_path / "missing.pvid"))

    import pvcli.jobs.bundle as bundle_job

    monkeypatch.setattr(bundle_job, "MAX_BUNDLE_BYTES", 1000)
    assert "MiB limit" in _error(run("import", _tar(tmp_path / "big.pvid", good_members), "--name", "mallory"))

    assert sorted(p.name for p in store.iterdir()) == before  # nothing written, no temp folders
    assert manifest["name"] == "alice"
