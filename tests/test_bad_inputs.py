"""Every command's inputs, wrong the ways users get them wrong: a missing path, the wrong kind of
file, an empty file, a bad number, an unknown name. Each ends in one line naming the input and
its fault (plus pv's hint line), exit 1, no traceback, nothing written, and, where the input
can be checked without a model, before any model loads. One identity is tuned for the module."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
from conftest import run

from pvcli.plugins import Registry

MODELS = ("backbones", "encoders", "scorers")  # what a registry builds that costs seconds to minutes


@pytest.fixture(scope="module")
def home(alice_home):
    return alice_home


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Files that are not what the flags expect, each named for what is wrong with it."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("bad")
    torch.save({"lora_A.weight": torch.zeros(2, 2)}, d / "pickle.safetensors")  # a pickle renamed
    torch.save({"state_dict": {"lora_A.weight": torch.zeros(2, 2)}}, d / "style.ckpt")
    save_file({"foo.weight": torch.zeros(2, 2)}, str(d / "nolora.safetensors"))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "notes.txt").write_text("shopping list\n")
    (d / "junk.mp4").write_text("not a video\n")
    (d / "empty.mp4").write_bytes(b"")
    (d / "empty.png").write_bytes(b"")
    (d / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    (d / "empty.txt").write_text("")
    (d / "textonly").mkdir()
    (d / "textonly" / "a.txt").write_text("x")
    for folder in ("afolder", "afolder.mp4", "out.safetensors"):
        (d / folder).mkdir()
    # kohya keys in SDXL's (sgm) block names, 640-wide: a LoRA for SDXL
    k = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{k}.lora_down.weight": torch.zeros(4, 640), f"{k}.lora_up.weight": torch.zeros(640, 4),
               f"{k}.alpha": torch.tensor(4.0)}, str(d / "sdxl_style.safetensors"))
    # the tiny UNet's layer names at twice its width: a LoRA for a model of another size
    layer = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{layer}.lora_A.weight": torch.zeros(4, 64), f"{layer}.lora_B.weight": torch.zeros(64, 4)},
              str(d / "wide.safetensors"))
    # layers no SD-family UNet has
    save_file({"unet.foo_blocks.0.bar.lora_A.weight": torch.zeros(4, 32),
               "unet.foo_blocks.0.bar.lora_B.weight": torch.zeros(32, 4)}, str(d / "othernet.safetensors"))
    return d


@pytest.fixture
def loads(monkeypatch):
    """The kinds of plugin objects built during the test: a bad input must fail before a model loads."""
    built: list[str] = []
    create = Registry.create

    def recording(self, kind, name, **kwargs):
        made = create(self, kind, name, **kwargs)
        built.append(kind)
        return made

    monkeypatch.setattr(Registry, "create", recording)
    return built


def one_error(r, *expected: str, local: bool = True) -> str:
    """Exit 1, stdout empty, stderr = `Error: ...` (+ pv's one hint line), naming what it must."""
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("Error: ") and len(lines) <= 2, r.stderr
    for bad_sign in ("Traceback", "bug in pv", "unexpected ", "Warning"):
        assert bad_sign not in r.stderr, r.stderr
    if local:  # a local path is never a hub id
        assert "hf download" not in r.stderr and "offline" not in r.stderr, r.stderr
    for text in expected:
        assert text in lines[0], (text, r.stderr)
    return lines[0]


GEN = ("generate", "alice", "a walk", "--frames", "2", "--steps", "1", "-q")

# (id, extra args for `pv generate`, what the error line must say); {d} is the folder of bad files
GENERATE_CASES = [
    ("lora-missing", ["--lora", "./missing.safetensors"], ["./missing.safetensors", "file not found"]),
    ("lora-missing-folder", ["--lora", "{d}/nowhere/style.safetensors"], ["{d}/nowhere/style.safetensors", "not found"]),
    ("lora-pickle-renamed", ["--lora", "{d}/pickle.safetensors"],
     ["{d}/pickle.safetensors", "not a safetensors file", "pickle"]),
    ("lora-ckpt", ["--lora", "{d}/style.ckpt"], ["{d}/style.ckpt", "pickle"]),
    ("lora-no-lora-keys", ["--lora", "{d}/nolora.safetensors"], ["{d}/nolora.safetensors", "no LoRA tensors"]),
    ("lora-empty", ["--lora", "{d}/empty.safetensors"], ["{d}/empty.safetensors", "empty file"]),
    ("lora-text", ["--lora", "{d}/notes.txt"], ["{d}/notes.txt", "not a safetensors file"]),
    ("lora-folder-without-lora", ["--lora", "{d}/textonly"], ["{d}/textonly", "no .safetensors"]),
    ("lora-sdxl", ["--lora", "{d}/sdxl_style.safetensors"], ["{d}/sdxl_style.safetensors", "for SDXL", "SD 1.x"]),
    ("lora-bad-weight", ["--lora", "{d}/nolora.safetensors:abc"], ["{d}/nolora.safetensors", "weight 'abc'"]),
    ("lora-bad-weight-missing-file", ["--lora", "./missing.safetensors:abc"], ["weight 'abc'"]),
    ("lora-nan-weight", ["--lora", "{d}/nolora.safetensors:nan"], ["weight 'nan'"]),
    ("control-text", ["--control", "canny={d}/notes.txt"], ["canny={d}/notes.txt", "as a video"]),
    ("control-junk-video", ["--control", "canny={d}/junk.mp4"], ["canny={d}/junk.mp4", "as a video"]),
    ("control-empty-video", ["--control", "canny={d}/empty.mp4"], ["canny={d}/empty.mp4", "empty file"]),
    ("control-empty-image", ["--control", "canny={d}/empty.png"], ["canny={d}/empty.png", "empty file"]),
    ("control-raw-text", ["--control-raw", "canny={d}/notes.txt"], ["canny={d}/notes.txt", "as a video"]),
    ("control-missing", ["--control", "canny={d}/nope.mp4"], ["canny={d}/nope.mp4", "file not found"]),
    ("control-folder-without-images", ["--control", "canny={d}/textonly"], ["{d}/textonly", "no images"]),
    ("control-model-missing", ["--control", "canny={photo}", "--control-model", "canny={d}/missing.safetensors"],
     ["canny={d}/missing.safetensors", "not found"]),
    ("control-model-text", ["--control", "canny={photo}", "--control-model", "canny={d}/notes.txt"],
     ["canny={d}/notes.txt", "not a ControlNet"]),
    ("control-start", ["--control", "canny={photo}", "--control-start", "1.5"], ["start", "1.5"]),
    ("video-text", ["--steps", "4", "--video", "{d}/notes.txt"], ["--video {d}/notes.txt", "as a video"]),
    ("video-junk", ["--steps", "4", "--video", "{d}/junk.mp4"], ["--video {d}/junk.mp4", "as a video"]),
    ("video-empty", ["--steps", "4", "--video", "{d}/empty.mp4"], ["--video {d}/empty.mp4", "empty file"]),
    ("video-missing", ["--steps", "4", "--video", "{d}/nope.mp4"], ["--video {d}/nope.mp4", "not found"]),
    ("video-folder-without-images", ["--steps", "4", "--video", "{d}/textonly"], ["{d}/textonly", "no images"]),
    ("output-parent-is-a-file", ["-o", "{d}/notes.txt/clip.mp4"], ["{d}/notes.txt", "is a file, not a folder"]),
    ("output-suffix", ["-o", "{d}/clip.avi"], ["clip.avi"]),
    ("output-folder-with-suffix", ["-o", "{d}/afolder.mp4"], ["afolder.mp4", "is a folder"]),
    ("steps-negative", ["--steps", "-1"], ["generate.steps", "-1"]),
    ("frames-zero", ["--frames", "0"], ["generate.frames", "got 0"]),
    ("fps-zero", ["--fps", "0"], ["generate.fps", "got 0"]),
    ("guidance-negative", ["--guidance", "-1"], ["generate.guidance_scale", "-1"]),
    ("guidance-nan", ["--guidance", "nan"], ["generate.guidance_scale", "nan"]),
    ("strength-above-1", ["--strength", "1.5", "--video", "{photo}"], ["generate.strength", "1.5"]),
    ("height-not-multiple-of-8", ["--height", "13"], ["generate.height", "13"]),
    ("adapter-scale-negative", ["--adapter-scale", "-1"], ["generate.adapter_scale", "-1"]),
    ("profile-unknown", ["--profile", "nope"], ["'nope'"]),
    ("profile-not-yaml-mapping", ["--profile", "{d}/notes.txt"], ["{d}/notes.txt"]),
    ("set-unknown", ["--set", "bogus=1"], ["'bogus'"]),
    ("set-not-a-number", ["--set", "generate.steps=abc"], ["generate.steps", "'abc'"]),
    ("device-unknown", ["--device", "gpu"], ["--device 'gpu'"]),
    ("addon-unknown", ["--addon", "sparkles:a=1"], ["'sparkles'"]),
    ("addon-option-unknown", ["--addon", "controlnet:bogus=1"], ["bogus"]),
    ("addon-lora-without-source", ["--addon", "lora"], ["needs a source"]),
]


def _fill(items, d, photo):
    return [str(a).replace("{d}", str(d)).replace("{photo}", str(photo)) for a in items]


@pytest.mark.parametrize("args,expected", [c[1:] for c in GENERATE_CASES], ids=[c[0] for c in GENERATE_CASES])
def test_generate_refuses_a_bad_input_before_any_model_loads(home, bad, astronaut, loads, monkeypatch, tmp_path,
                                                             args, expected):
    monkeypatch.setenv("PV_HOME", str(home))
    monkeypatch.chdir(bad)
    before = sorted(p.name for p in bad.iterdir())
    out = ["-o", tmp_path / "clip.mp4"] if "-o" not in args else []
    line = one_error(run(*GEN, *out, *_fill(args, bad, astronaut)), *_fill(expected, bad, astronaut))
    assert not [k for k in loads if k in MODELS], (loads, line)  # failed before any model loaded
    assert not list(tmp_path.iterdir()) and sorted(p.name for p in bad.iterdir()) == before  # nothing written


@pytest.mark.parametrize("name,expected", [
    ("wide.safetensors", ["wide.safetensors", "another size", "[4, 64]", "[4, 32]"]),
    ("othernet.safetensors", ["othernet.safetensors", "does not have", "foo_blocks.0.bar"]),
])
def test_a_lora_that_does_not_fit_the_loaded_backbone_says_so_quietly(home, bad, monkeypatch, tmp_path, name,
                                                                     expected):
    """Shapes and layer names are only known once the backbone is loaded: still one line naming
    the file, no peft/torch warnings, no diffusers log lines, and never a download hint."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    monkeypatch.setenv("PV_HOME", str(home))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = run(*GEN, "-o", tmp_path / "clip.mp4", "--lora", bad / name)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    one_error(r, *[str(bad / e) if e == name else e for e in expected])
    assert not records, [rec.getMessage()[:200] for rec in records]
    noisy = [w for w in caught if re.search(r"(peft|diffusers|torch)", w.filename)]
    assert not noisy, [str(w.message)[:200] for w in noisy]
    assert not list(tmp_path.iterdir())


def test_prompt_files_that_are_no_prompts(home, bad, loads, monkeypatch, tmp_path):
    monkeypatch.setenv("PV_HOME", str(home))
    tpl = ["-o", tmp_path / "{index}.mp4", "-q"]
    one_error(run("generate", "alice", "--prompts", bad / "binary.txt", *tpl), f"{bad}/binary.txt", "not a UTF-8")
    one_error(run("generate", "alice", "--prompts", bad / "empty.txt", *tpl), f"{bad}/empty.txt", "no prompts")
    one_error(run("generate", "alice", "--prompts", bad / "nope.txt", *tpl), f"{bad}/nope.txt", "not found")
    one_error(run("generate", "alice", "--prompts", bad / "textonly", *tpl), f"{bad}/textonly", "folder")
    one_error(run("generate", "bob", "x", "-q"), "'bob'")
    assert not [k for k in loads if k in MODELS] and not list(tmp_path.iterdir())


TUNE = ("--profile", "tiny", "--steps", "1", "-q")
TUNE_CASES = [
    ("photo-missing", ["{d}/nope.png", "--name", "bob"], ["{d}/nope.png", "not found"]),
    ("photo-empty", ["{d}/empty.png", "--name", "bob"], ["{d}/empty.png", "empty file"]),
    ("photo-text", ["{d}/notes.txt", "--name", "bob"], ["{d}/notes.txt", "not an image"]),
    ("photo-folder-without-images", ["{d}/textonly", "--name", "bob"], ["{d}/textonly", "no images"]),
    ("name-invalid", ["{photo}", "--name", "bad name"], ["'bad name'"]),
    ("profile-unknown", ["{photo}", "--name", "bob", "--profile", "nope"], ["'nope'"]),
    ("steps-negative", ["{photo}", "--name", "bob", "--steps", "-1"], ["tune.steps", "-1"]),
    ("lr-nan", ["{photo}", "--name", "bob", "--lr", "nan"], ["tune.lr", "nan"]),
    ("lr-negative", ["{photo}", "--name", "bob", "--lr", "-1"], ["tune.lr", "-1"]),
    ("rank-zero", ["{photo}", "--name", "bob", "--rank", "0"], ["adapter.rank", "0"]),
    ("active-fraction-above-1", ["{photo}", "--name", "bob", "--active-fraction", "1.5"], ["active_fraction", "1.5"]),
    ("targets-unknown", ["{photo}", "--name", "bob", "--targets", "bogus"], ["'bogus'"]),
    ("prompts-mode-unknown", ["{photo}", "--name", "bob", "--prompts-mode", "bogus"], ["'bogus'"]),
    ("encoder-unknown", ["{photo}", "--name", "bob", "--encoder", "bogus"], ["encoder 'bogus'"]),
    ("prompts-binary", ["{photo}", "--name", "bob", "--prompts", "{d}/binary.txt"], ["{d}/binary.txt", "UTF-8"]),
    ("prompts-missing", ["{photo}", "--name", "bob", "--prompts", "{d}/nope.txt"], ["{d}/nope.txt"]),
    ("device-unknown", ["{photo}", "--name", "bob", "--device", "gpu"], ["'gpu'"]),
    ("manifest-missing", ["--manifest", "{d}/nope.yaml"], ["{d}/nope.yaml"]),
    ("manifest-empty", ["--manifest", "{d}/empty.txt"], ["{d}/empty.txt"]),
    ("resume-unknown", ["--resume", "nobody"], ["'nobody'"]),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in TUNE_CASES], ids=[c[0] for c in TUNE_CASES])
def test_tune_refuses_a_bad_input_before_any_model_loads(home, bad, astronaut, loads, monkeypatch, args, expected):
    monkeypatch.setenv("PV_HOME", str(home))
    extra = [] if ("--manifest" in args or "--resume" in args) else list(TUNE)  # first: a case's own flags win
    one_error(run("tune", *extra, *_fill(args, bad, astronaut)), *_fill(expected, bad, astronaut))
    assert not [k for k in loads if k in MODELS], loads
    assert not (home / "identities" / "bob").exists()


EXPORT_CASES = [
    ("identity-unknown", ["bob", "-o", "{d}/x.safetensors"], ["'bob'"]),
    ("format-unknown", ["alice", "--format", "onnx", "-o", "{d}/x.safetensors"], ["'onnx'"]),
    ("parent-is-a-file", ["alice", "-o", "{d}/notes.txt/alice.safetensors"], ["{d}/notes.txt", "is a file"]),
    ("output-is-a-folder", ["alice", "-o", "{d}/afolder"], ["{d}/afolder", "is a folder"]),
    ("output-is-a-folder-with-suffix", ["alice", "-o", "{d}/out.safetensors"], ["{d}/out.safetensors", "is a folder"]),
    ("suffix", ["alice", "-o", "{d}/alice.txt"], ["{d}/alice.txt", ".safetensors"]),
    ("bundle-parent-is-a-file", ["alice", "--bundle", "{d}/notes.txt/alice.pvid"], ["{d}/notes.txt", "is a file"]),
    ("bundle-suffix", ["alice", "--bundle", "{d}/alice.zip"], [".pvid"]),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_export_refuses_an_output_it_cannot_write_and_leaves_nothing(home, bad, monkeypatch, args, expected):
    monkeypatch.setenv("PV_HOME", str(home))
    before = sorted(p.name for p in bad.iterdir())
    one_error(run("export", *_fill(args, bad, "")), *_fill(expected, bad, ""))
    assert sorted(p.name for p in bad.iterdir()) == before  # nothing half-written, no temporary file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PV_HOME", str(home))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        one_error(run("export", "alice", "-o", locked / "a.safetensors"), f"{locked}", "not writable")
        one_error(run("export", "alice", "--bundle", locked / "a.pvid"), f"{locked}", "not writable")
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("path,expected", [
    ("nope.pvid", ["nope.pvid", "not found"]),
    ("empty.txt", ["empty.txt", "not a valid pv identity bundle"]),
    ("notes.txt", ["notes.txt", "not a valid pv identity bundle: it is not a tar archive"]),
    ("textonly", ["textonly"]),
])
def test_import_refuses_what_is_no_bundle(home, bad, monkeypatch, path, expected):
    monkeypatch.setenv("PV_HOME", str(home))
    one_error(run("import", bad / path, "--name", "bob"), *expected)
    assert not (home / "identities" / "bob").exists()


@pytest.mark.parametrize("args,expected", [
    (["show", "bob"], ["'bob'"]),
    (["show", "../x"], ["'../x'"]),
    (["rm", "bob", "--yes"], ["'bob'"]),
    (["rm", "../x", "--yes"], ["'../x'"]),
    (["profiles", "--show", "nope"], ["'nope'"]),
    (["profiles", "--show", "{d}/notes.txt"], ["{d}/notes.txt"]),
])
def test_store_and_info_commands_name_the_unknown_input(home, bad, monkeypatch, args, expected):
    monkeypatch.setenv("PV_HOME", str(home))
    one_error(run(*_fill(args, bad, "")), *_fill(expected, bad, ""))


EVAL_CASES = [
    ("video-missing", ["{d}/nope.mp4", "--ref", "{photo}"], ["{d}/nope.mp4", "no such video"]),
    ("video-text", ["{d}/notes.txt", "--ref", "{photo}"], ["{d}/notes.txt", "as a video"]),
    ("video-junk", ["{d}/junk.mp4", "--ref", "{photo}"], ["{d}/junk.mp4", "as a video"]),
    ("video-empty", ["{d}/empty.mp4", "--ref", "{photo}"], ["{d}/empty.mp4", "empty file"]),
    ("identity-unknown", ["bob"], ["'bob'"]),
    ("ref-missing", ["alice", "--ref", "{d}/nope.png"], ["--ref {d}/nope.png"]),
    ("ref-text", ["alice", "--ref", "{d}/notes.txt"], ["{d}/notes.txt", "not an image"]),
    ("encoder-unknown", ["alice", "--encoder", "bogus"], ["'bogus'"]),
    ("scorer-unknown", ["alice", "--scorer", "bogus"], ["scorer 'bogus'"]),
    ("flow-unknown", ["alice", "--flow", "bogus"], ["'bogus'"]),
    ("no-face-unknown", ["alice", "--no-face", "bogus"], ["'bogus'"]),
    ("scorer-option-malformed", ["alice", "--scorer-option", "bogus"], ["--scorer-option", "'bogus'"]),
    ("csv-parent-is-a-file", ["alice", "--csv", "{d}/notes.txt/m.csv"], ["--csv {d}/notes.txt/m.csv", "is a file"]),
    ("csv-is-a-folder", ["alice", "--csv", "{d}/afolder"], ["--csv {d}/afolder", "is a folder"]),
    ("sheets-is-a-file", ["alice", "--sheets", "{d}/notes.txt"], ["--sheets {d}/notes.txt", "not a folder"]),
    ("out-dir-is-a-file", ["alice", "--out-dir", "{d}/notes.txt"], ["--out-dir {d}/notes.txt", "not a folder"]),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_a_bad_input_before_any_model_loads(home, bad, astronaut, loads, monkeypatch, args, expected):
    monkeypatch.setenv("PV_HOME", str(home))
    one_error(run("eval", *_fill(args, bad, astronaut), "-q"), *_fill(expected, bad, astronaut))
    assert not [k for k in loads if k in MODELS], loads


@pytest.mark.parametrize("args,option", [
    (["generate", "alice", "x", "--seed", "abc"], "--seed"),
    (["generate", "alice", "x", "--num", "0"], "--num"),
    (["generate", "alice", "x", "--steps", "many"], "--steps"),
    (["tune", "{photo}", "--name", "bob", "--seed", "abc"], "--seed"),
    (["tune", "{photo}", "--name", "bob", "--face-index", "-1"], "--face-index"),
    (["tune", "{photo}", "--name", "bob", "--clips-per-step", "0"], "--clips-per-step"),
    (["eval", "alice", "--seed", "abc"], "--seed"),
])
def test_values_of_the_wrong_type_are_usage_errors(home, astronaut, monkeypatch, args, option):
    """Typed options are refused by the command-line parser itself: its usage error (exit 2)
    names the option; no traceback, nothing run."""
    monkeypatch.setenv("PV_HOME", str(home))
    r = run(*_fill(args, "", astronaut))
    assert r.exit_code == 2 and r.stdout == "", (r.exit_code, r.stderr)
    assert f"Invalid value for '{option}'" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr and "bug in pv" not in r.stderr


def test_a_cut_off_or_garbled_safetensors_header_is_named_in_one_line(tmp_path):
    """LoRA and ControlNet files are read through safetensors' safe_open: its errors become pv's lines."""
    from pv_conditioners.lora_file import read_header
    from safetensors.torch import save_file

    from pvcli.errors import PVError

    whole = tmp_path / "style.safetensors"
    save_file({"a.lora_A.weight": torch.zeros(4, 8)}, str(whole), metadata={"ss_network_alpha": "4"})
    assert read_header(whole, "--lora style.safetensors") == ({"a.lora_A.weight": [4, 8]}, {"ss_network_alpha": "4"})
    cut, garbled = tmp_path / "cut.safetensors", tmp_path / "garbled.safetensors"
    cut.write_bytes(whole.read_bytes()[:-8])
    garbled.write_bytes((10).to_bytes(8, "little") + b"{not json}" + bytes(8))
    for path, expected in [(cut, "is truncated"), (garbled, "is not a safetensors file (its header is not valid")]:
        with pytest.raises(PVError) as err:
            read_header(path, f"--lora {path.name}")
        assert err.value.message.startswith(f"--lora {path.name} {expected}"), err.value.message
