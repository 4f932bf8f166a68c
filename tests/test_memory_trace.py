"""The memory trace and plan: `pv tune --dry-run` offline on real profiles (from the shipped traces),
bad --gpu-memory / tune.memory values, the shipped traces against a fresh trace of a tiny profile,
and the trace against the 1.3B component measurements BENCHMARKS.md made on real modules."""

from __future__ import annotations

import json

import pytest
from conftest import run


@pytest.mark.parametrize("profile,card,limit", [("wan2.1-14b", 24, 22.0), ("wan2.2-a14b", 24, 22.0),
                                                ("hunyuanvideo", 24, 22.0), ("wan2.1-1.3b", 16, 14.0),
                                                ("wan2.2-5b", 16, 14.0)])
def test_dry_run_plans_a_real_profile_offline(astronaut, profile, card, limit):
    r = run("tune", astronaut, "--name", "x", "--profile", profile, "--dry-run", "--gpu-memory", card, "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["fits"] is True and plan["peak_gib"] <= limit
    assert plan["gpu_memory_gib"] == card and plan["usable_gib"] == card - 2
    assert set(plan["phases_gib"]) == {"load", "prompt_encoding", "sampling", "gradient_step"}
    assert plan["peak_gib"] == max(plan["phases_gib"].values())
    assert plan["traced_now"] == 0  # from the traces pv ships: no model built, nothing downloaded
    assert plan["step_seconds"] > 0 and plan["step_tflop"] > 0
    assert any("fused" in n for n in plan["notes"]) and any("scaled linearly" in n for n in plan["notes"])
    assert plan["tuning_clip"].startswith("17x")  # every DiT profile tunes on 17 frames


def test_dry_run_without_a_card_plans_every_card_class_and_says_it_in_words(astronaut):
    r = run("tune", astronaut, "--name", "x", "--profile", "wan2.1-14b", "--dry-run")
    assert r.exit_code == 0, r.stderr
    for card in ("12 GB", "16 GB", "24 GB", "48 GB", "80 GB"):
        assert card in r.stdout
    assert "pv will set" in r.stdout and "Traceback" not in r.stdout + r.stderr
    plan = json.loads(run("tune", astronaut, "--name", "x", "--profile", "wan2.1-14b", "--dry-run", "--json").stdout)
    assert plan["gpu_memory_gib"] is None and plan["cards"]["80"]["fits"] and not plan["cards"]["12"]["fits"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "text", "inf"])
def test_bad_gpu_memory_is_one_line(astronaut, value):
    r = run("tune", astronaut, "--name", "x", "--profile", "tiny-wan", "--dry-run", f"--gpu-memory={value}")
    assert r.exit_code != 0
    assert "--gpu-memory must be auto or a number of GiB above 0" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["0", "-3", "nan", "lots"])
def test_bad_tune_memory_is_one_line_before_anything_loads(astronaut, value):
    r = run("tune", astronaut, "--name", "x", "--profile", "tiny-wan", "--set", f"tune.memory={value}")
    assert r.exit_code != 0
    assert "tune.memory must be auto or a number of GiB above 0" in r.stderr and "Traceback" not in r.stderr


def test_dry_run_needs_the_photo_to_exist(tmp_path):
    r = run("tune", tmp_path / "missing.png", "--name", "x", "--profile", "wan2.1-14b", "--dry-run")
    assert r.exit_code != 0 and "photo not found" in r.stderr


def test_tune_memory_too_small_is_refused_before_any_model_loads(astronaut, monkeypatch):
    import pvcli.jobs.resources as resources

    monkeypatch.setattr(resources, "build_backbone", lambda *a, **k: pytest.fail("a model loaded"))
    r = run("tune", astronaut, "--name", "x", "--profile", "tiny-wan", "--set", "tune.memory=0.01")
    assert r.exit_code != 0
    assert "does not fit 0.0 GiB (tune.memory)" in r.stderr and "Traceback" not in r.stderr


def test_shipped_traces_equal_a_fresh_trace_of_a_tiny_profile():
    from pvcli.engine.memplan import CACHE, Planner, _read, switches_of
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import resolve

    _, settings = resolve("tiny-wan")
    key = Planner.key(settings, switches_of(settings))
    shipped = _read(CACHE)
    assert key in shipped  # pv profiles / --dry-run read it without tracing
    fresh = Planner(build_plugin_manager())
    fresh.cache = {}
    trace = fresh.trace(settings).to_dict()
    assert fresh.traced == 1
    for field in ("phases", "breakdown", "flops", "block_param_bytes", "text_encoder_bytes", "units"):
        assert trace[field] == shipped[key][field], field


def test_trace_agrees_with_the_measured_wan_components():
    """The trace's bytes kept for backward by the real Wan VAE decoder (64 px, 1 and 5 frames) and the
    real 1.3B transformer (128 tokens, without checkpointing), fp32, against what bench/wan_size.py
    measured on real modules with saved-tensor hooks (bench/wan_size.json): within 10%."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from trace_check import check

    for name, traced, measured in check(("vae 64 1 False", "vae 64 2 False", "transformer 128 False")):
        assert abs(traced - measured) <= 0.1 * measured, (name, traced, measured)


def test_dry_run_and_profiles_give_generation_from_the_trace(astronaut):
    """pv generate's clip per phase beside the tuning plan (the same keys as before), the A14B's with
    only the expert at work on the GPU (the 14B's clip, the same transformer: the same peak), and the
    smallest card for each in `pv profiles`."""
    plans = {}
    for profile in ("wan2.2-a14b", "wan2.1-14b"):
        r = run("tune", astronaut, "--name", "x", "--profile", profile, "--dry-run", "--gpu-memory", 48, "--json")
        assert r.exit_code == 0, r.stderr
        plans[profile] = plan = json.loads(r.stdout)
        g = plan["generation"]
        assert set(g["phases_gib"]) == {"load", "prompt_encoding", "denoising", "decode"}
        assert g["peak_gib"] == max(g["phases_gib"].values()) == plan["generation_gib"] and g["fits"]
        assert g["clip"] == "81x480x832" and plan["traced_now"] == 0
    assert plans["wan2.2-a14b"]["generation"]["peak_gib"] == plans["wan2.1-14b"]["generation"]["peak_gib"]
    rows = {r["name"]: r for r in json.loads(run("profiles", "--json").stdout)}
    for profile in ("wan2.1-1.3b", "wan2.2-5b", "wan2.1-14b", "wan2.2-a14b", "hunyuanvideo"):
        memory = rows[profile]["tuning_memory"]
        assert memory["smallest_card_gb"] is not None and memory["generation"]["smallest_card_gb"] is not None
    text = run("profiles").stdout
    assert "generation (traced): smallest card" in text


def test_out_of_memory_names_what_the_traced_plan_would_change(monkeypatch):
    """An out-of-memory error on a CUDA card (its total memory pretended) names, first in its one
    line, the switches tune.memory=auto picks for that card; where the settings fit it by the trace
    already, the tune.memory a GiB lower and what it adds; for generation the fp8 weights that fit;
    nothing from the plan off CUDA (the general advice stays)."""
    from types import SimpleNamespace

    import torch

    from pvcli.engine.memplan import with_changes
    from pvcli.errors import PVError
    from pvcli.jobs.plan import memory_hint
    from pvcli.jobs.resources import out_of_memory_hint
    from pvcli.plugins import build_plugin_manager
    from pvcli.settings import resolve

    card = {"gib": 24}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=card["gib"] * 2**30))
    ctx = SimpleNamespace(registry=build_plugin_manager(), store=SimpleNamespace(home=None),
                          reporter=SimpleNamespace(status=lambda m: pytest.fail(f"traced at an OOM: {m}")))
    wan = resolve("wan2.1-14b")[1]
    with pytest.raises(PVError) as err, out_of_memory_hint("tune", "cuda:0", lambda: memory_hint(ctx, wan, "tune", "cuda:0")):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    line = str(err.value)
    assert "set tune.face_decode=faces, tune.offload=blocks (what tune.memory=auto picks for this 24 GiB card" in line
    assert "otherwise lower memory with" in line and "\n" not in line
    tuned = with_changes(wan, {"tune.face_decode": "faces", "tune.offload": "blocks"})  # what auto ran with
    assert memory_hint(ctx, tuned, "tune", "cuda:0") == "set tune.memory=21 (its plan adds tune.decode_dtype=bfloat16 to what ran)"
    card["gib"] = 48
    assert memory_hint(ctx, resolve("hunyuanvideo")[1], "generate", "cuda").startswith("set backbone.options.weights=fp8")
    assert memory_hint(ctx, wan, "tune", "cpu") == ""
