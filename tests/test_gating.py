"""Late-step gating on the transformers as the real Wan profiles run it: UniPC with flow sigmas
(the Wan repos' multistep sampler), the adapter in the last quarter of the steps and one step
under grad, on tiny-wan. The gate is a noise level recorded in the identity: generation adapts
the same noise levels whatever its steps or flow shift; the trajectory pool resumes UniPC's
history; a step's clean estimate is the clean sample."""

import json

import pytest
import torch
from conftest import random_adapter, randomize_lora_b, run, tune_home, use_home

from pvcli.engine.adapter import ADAPTER_NAME, adapter_disabled, set_adapter_scale
from pvcli.engine.generate import render_latents
from pvcli.engine.sampling import (
    adapted_steps,
    gate_level,
    initial_latents,
    noise_level,
    sample,
    schedule_levels,
    steps_within_gate,
)
from pvcli.engine.tune import Tuner
from pvcli.settings import parse_set, resolve

# the real Wan profiles' sampler and gating, on tiny-wan's 8 sampling steps
REAL_GATING = ["backbone.options.scheduler=unipc", "adapter.active_fraction=0.25", "tune.grad_steps=1",
               "tune.num_inference_steps=8", "generate.steps=8"]


def _settings(*items):
    return resolve("tiny-wan", [parse_set([*REAL_GATING, *items])])[1]


def _wan(**options):
    from pv_wan.backbone import make_tiny_wan

    return make_tiny_wan({"scheduler": "unipc", **options})


def test_the_trajectory_pool_on_unipc_tunes_on_the_clip_generation_renders(encoder, reference):
    """A pooled clip resumes after the adapter-free steps with UniPC's history of them: the latents
    the loss decodes are the full trajectory's from the pair's noise (a fresh scheduler at the
    resume step lost 36% of the adapter's effect on this model)."""
    settings = _settings("tune.trajectory_pool=1", "tune.scr_weight=0", "tune.supervised_frames=1")
    tuner = Tuner(_wan(), encoder, settings, reference)
    randomize_lora_b(tuner.bb.denoiser)  # an adapter that changes the clip
    assert tuner.pool.start == 6  # 8 steps, the last 2 adapted: 6 adapter-free steps kept
    prompt, seed = tuner.pool.pairs[0]
    noise = initial_latents(tuner.bb, 9, 64, 64, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = tuner._final(prompt, noise, grad=False)
        base = tuner._final(prompt, noise, grad=False, adapter=False)
    decoded = []
    real = tuner.bb.decode_frames
    tuner.bb.decode_frames = lambda latents, idx: decoded.append(latents.detach().clone()) or real(latents, idx)
    tuner.step()
    effect = (full - base).norm()
    assert effect > 1.0
    assert (decoded[0] - full).norm() / effect < 1e-5


def test_wanpipeline_on_unipc_is_pvs_sampler_with_the_real_gating():
    """diffusers' WanPipeline with UniPC and pv's step-callback gate gives pv's sampler's latents at
    the profiles' gating (last quarter), and the steps before the gate are the base model's."""
    wan = _wan()
    random_adapter(wan)
    g = _settings().generate
    g = type(g)(**{**g.__dict__, "seed": 3, "guidance_scale": 5.0, "negative_prompt": "blurry"})
    prompt, adapted = "sks person, surfing at sunset", adapted_steps(8, 0.25)
    gate = gate_level(wan.scheduler, 8, adapted)
    ours = render_latents(wan, prompt, g, gate=gate)
    set_adapter_scale(wan.denoiser, 1.0)
    seen, base_seen = [], []
    with torch.no_grad():
        lat = initial_latents(wan, g.frames, g.height, g.width, torch.Generator().manual_seed(3))
        cond, uncond = wan.encode_prompt([prompt]), wan.encode_prompt([g.negative_prompt])
        mine = sample(wan, cond, uncond, lat, 8, 5.0, adapter_steps=adapted, on_step=lambda i, x: seen.append(x.clone()))
        with adapter_disabled(wan.denoiser):
            sample(wan, cond, uncond, lat, 8, 5.0, on_step=lambda i, x: base_seen.append(x.clone()))
    assert (ours - mine.latents).abs().max() < 1e-4
    assert all(torch.equal(seen[i], base_seen[i]) for i in range(8 - adapted))
    assert (seen[-1] - base_seen[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("steps,shift", [(10, 3.0), (12, 1.5)])
def test_generation_adapts_the_tuned_noise_levels_whatever_the_steps_and_shift(steps, shift):
    """The gate picked on the tuning schedule (8 steps, shift 3, the last quarter) is a noise level;
    generating with more steps or another flow shift adapts exactly the steps at or below it, which
    is not the last quarter of those steps."""
    gate = gate_level(_wan().scheduler, 8, adapted_steps(8, 0.25))
    wan = _wan(shift=shift)
    random_adapter(wan)
    levels = schedule_levels(wan.scheduler, steps)
    k = steps_within_gate(levels, gate)
    assert k != adapted_steps(steps, 0.25)  # the step-index rule would move the gate
    assert all(level > gate for level in levels[:steps - k]) and all(level <= gate for level in levels[steps - k:])
    g = _settings().generate
    g = type(g)(**{**g.__dict__, "seed": 5, "steps": steps})
    prompt = "sks person, surfing"
    ours = render_latents(wan, prompt, g, gate=gate)
    set_adapter_scale(wan.denoiser, 1.0)
    with torch.no_grad():
        lat = initial_latents(wan, g.frames, g.height, g.width, torch.Generator().manual_seed(5))
        mine = sample(wan, wan.encode_prompt([prompt]), None, lat, steps, 1.0, adapter_steps=k).latents
        index_rule = sample(wan, wan.encode_prompt([prompt]), None, lat, steps, 1.0,
                            adapter_steps=adapted_steps(steps, 0.25)).latents
    assert (ours - mine).abs().max() < 1e-4
    assert (ours - index_rule).abs().max() > 1e-3
    # video-to-video runs the schedule's tail (strength): the adapter keeps the same noise levels in it
    from pvcli.engine.generate import gated_steps

    assert [gated_steps(wan, steps, run, gate) for run in range(1, steps + 1)] == [min(run, k) for run in
                                                                                   range(1, steps + 1)]


def test_a_steps_clean_estimate_is_the_clean_sample_on_flow_schedulers():
    """SampleResult.x0 after a step at sigma is x_t - sigma * v (the clean sample flow matching
    predicts), not the next noisy latent, on flow-matching Euler and UniPC alike."""
    for options in ({"scheduler": "euler"}, {}):
        wan = _wan(**options)
        cond = wan.encode_prompt(["sks person"])
        lat = initial_latents(wan, 9, 64, 64, torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = sample(wan, cond, None, lat, 4, 1.0, stop=1)
            scheduler = wan.new_scheduler()
            scheduler.set_timesteps(4)
            t = scheduler.timesteps[0]
            expected = lat - noise_level(scheduler, t) * wan.predict_noise(lat, t, cond)
        assert (out.x0 - expected).abs().max() < 2e-3 * expected.abs().max(), options
        assert (out.x0 - out.latents).abs().max() > 0.1  # not the next noisy latent


def test_one_step_at_the_real_gating_moves_only_the_adapter_and_acts_only_past_its_gate(encoder, reference):
    """tiny-wan on UniPC at the real Wan profiles' gating (the last quarter of 8 steps, one under grad),
    one gradient step. The optimizer holds exactly the adapter's parameters (were pv to stop freezing,
    it would hold the frozen ones and move them); a frozen weight that something made trainable is
    frozen again before the step by pv's guard (Tuner._keep_frozen) and gets no gradient; the adapter
    moves and every other weight (the transformer's frozen layers, the text encoder, the VAE) stays
    bit-identical. Generation with the tuned adapter at the gate the identity records is the base
    model's, step for step, until the gate, and departs from it in the steps past it."""
    wan = _wan()
    tuner = Tuner(wan, encoder, _settings("tune.supervised_frames=1"), reference)
    adapter = {n: p for n, p in wan.denoiser.named_parameters() if ADAPTER_NAME in n}
    held = [p for group in tuner.optimizer.param_groups for p in group["params"]]
    assert len(held) == len(adapter) == 24 and {id(p) for p in held} == {id(p) for p in adapter.values()}
    frozen = {f"{part}.{n}": p.detach().clone() for part in ("denoiser", "text_encoder", "vae")
              for n, p in getattr(wan, part).named_parameters() if ADAPTER_NAME not in n}
    start = {n: p.detach().clone() for n, p in adapter.items()}
    leaked = wan.denoiser.blocks[1].attn1.to_q.weight  # a forced bug: frame-mixing attention made trainable
    leaked.requires_grad_(True)
    assert tuner.step().loss is not None
    assert not leaked.requires_grad and leaked.grad is None
    assert all(not torch.equal(p, start[n]) for n, p in adapter.items() if "lora_B" in n)  # every layer learned
    for part in ("denoiser", "text_encoder", "vae"):
        for n, p in getattr(wan, part).named_parameters():
            assert ADAPTER_NAME in n or torch.equal(p, frozen[f"{part}.{n}"]), f"{part}.{n} changed"

    g = _settings().generate
    g = type(g)(**{**g.__dict__, "seed": 2})
    k = steps_within_gate(schedule_levels(wan.scheduler, g.steps), tuner.gate)
    assert k == tuner.adapter_steps == 2  # the recorded gate opens the last 2 of the 8 steps
    tuned, base = [], []
    render_latents(wan, "sks person, surfing", g, gate=tuner.gate, on_step=lambda i, x: tuned.append(x.clone()))
    render_latents(wan, "sks person, surfing", g, adapter_scale=0.0, on_step=lambda i, x: base.append(x.clone()))
    assert len(tuned) == len(base) == 8
    assert all(torch.equal(tuned[i], base[i]) for i in range(8 - k))
    assert all((tuned[i] - base[i]).abs().max() > 1e-6 for i in range(8 - k, 8))


@pytest.fixture(scope="module")
def gated_home(tmp_path_factory, astronaut):
    """A PV_HOME with `g`, tuned one step on tiny-wan with the real Wan gating and sampler."""
    home = tmp_path_factory.mktemp("gated_home")
    sets = [x for item in REAL_GATING for x in ("--set", item)]
    return home, tune_home(home, astronaut, "g", "tiny-wan", "--steps", "1", "--set", "tune.held_out=0", *sets)


def test_the_identity_records_its_gate_and_generation_reports_the_steps_it_adapts(gated_home, monkeypatch,
                                                                                 tmp_path):
    from safetensors.torch import load_file, save_file

    home, info = gated_home
    use_home(monkeypatch, home)
    levels = schedule_levels(_wan().scheduler, 8)
    assert info["gate_noise_level"] == round(levels[6], 4)  # the first of the last 2 of 8 steps
    r = run("generate", "g", "surfing", "--steps", "10", "-o", tmp_path / "g.mp4", "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    gate = rec["gate_noise_level"]
    assert gate == pytest.approx(levels[6]) and rec["adapted_steps"] == steps_within_gate(
        schedule_levels(_wan().scheduler, 10), gate) == 2  # the index rule says 3 of 10
    # an identity from before the recorded level gates by step index, as it always did
    old = tmp_path / "old"
    import shutil

    shutil.copytree(home, old)
    adapter = old / "identities" / "g" / "adapter.safetensors"
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != "gate_noise_level"}
    save_file(load_file(str(adapter)), str(adapter), metadata=meta)
    use_home(monkeypatch, old)
    r = run("generate", "g", "surfing", "--steps", "10", "-o", tmp_path / "old.mp4", "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["gate_noise_level"] is None and rec["adapted_steps"] == adapted_steps(10, 0.25) == 3


# ComfyUI's node signatures, extracted from its official workflow templates and node docs (PyPI:
# comfyui-workflow-templates-json 0.1.123, comfyui-embedded-docs 0.5.15; see the file's "source")
COMFY = json.loads((__import__("pathlib").Path(__file__).parent / "data" / "comfyui_nodes.json").read_text())


def assert_comfy_workflow(wf: dict) -> dict:
    """Every node type and input name pv writes appears in ComfyUI's templates (and its node docs),
    every link points at a node, and the sampler and scheduler are names the templates use.
    Returns the KSamplerAdvanced stages in schedule order."""
    for node_id, node in wf.items():
        sig = COMFY["nodes"].get(node["class_type"])
        assert sig is not None and sig["template_count"] > 0, node["class_type"]
        assert set(node["inputs"]) <= set(sig["template_inputs"]) | set(sig["doc_inputs"]), (node_id, node)
        assert set(node["inputs"]) & set(sig["template_inputs"]) or not sig["template_inputs"], node
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in wf and value[0] != node_id, (node_id, value)
    stages = sorted((n["inputs"] for n in wf.values() if n["class_type"] == "KSamplerAdvanced"),
                    key=lambda s: s["start_at_step"])
    assert {s["sampler_name"] for s in stages} <= set(COMFY["sampler_names"])
    assert {s["scheduler"] for s in stages} <= set(COMFY["schedulers"])
    return stages


def _chain(wf: dict, link: list) -> list[str]:
    """The class types along a MODEL input back to its loader."""
    out = []
    while link is not None:
        node = wf[link[0]]
        out.append(node["class_type"])
        link = node["inputs"].get("model")
    return out


def test_comfy_export_writes_a_workflow_that_applies_the_lora_from_the_gate(gated_home, monkeypatch, tmp_path):
    home, info = gated_home
    use_home(monkeypatch, home)
    r = run("export", "g", "--format", "comfy", "-o", tmp_path / "g.safetensors")
    assert r.exit_code == 0, r.stderr
    assert "from step 6 of 8" in r.stderr and "g_workflow.json" in r.stderr  # the one line of wiring
    wf = json.loads((tmp_path / "g_workflow.json").read_text())
    base, tuned = assert_comfy_workflow(wf)
    switch = 8 - steps_within_gate(schedule_levels(_wan().scheduler, 8), info["gate_noise_level"])
    assert switch == 6  # the gate: the last 2 of the 8 steps
    assert (base["start_at_step"], base["end_at_step"], tuned["start_at_step"], tuned["end_at_step"]) == (0, 6, 6, 8)
    assert (base["add_noise"], base["return_with_leftover_noise"], tuned["add_noise"]) == ("enable", "enable", "disable")
    assert tuned["latent_image"][0] in wf and wf[tuned["latent_image"][0]]["inputs"] is base
    assert _chain(wf, base["model"]) == ["ModelSamplingSD3", "UNETLoader"]
    assert _chain(wf, tuned["model"]) == ["ModelSamplingSD3", "LoraLoaderModelOnly", "UNETLoader"]
    lora = next(n["inputs"] for n in wf.values() if n["class_type"] == "LoraLoaderModelOnly")
    assert lora["lora_name"] == "g.safetensors" and lora["strength_model"] == 1.0
    shift = next(n["inputs"]["shift"] for n in wf.values() if n["class_type"] == "ModelSamplingSD3")
    assert shift == 3.0 and base["sampler_name"] == "uni_pc_bh2" and (base["steps"], base["cfg"]) == (8, 1.0)
    latent = next(n["inputs"] for n in wf.values() if n["class_type"] == "EmptyHunyuanLatentVideo")
    assert (latent["width"], latent["height"], latent["length"]) == (64, 64, 9)
    text = [n["inputs"]["text"] for n in wf.values() if n["class_type"] == "CLIPTextEncode"]
    assert any(t.startswith("sks person") for t in text)
    # an existing workflow is not replaced without --force, and nothing is written then
    (tmp_path / "h_workflow.json").write_text("{}")
    r = run("export", "g", "--format", "comfy", "-o", tmp_path / "h.safetensors")
    assert r.exit_code == 1 and "h_workflow.json already exists" in r.stderr and not (tmp_path / "h.safetensors").exists()


def test_a14b_exports_name_their_expert_and_wire_the_lora_on_the_low_noise_expert_only(astronaut, monkeypatch,
                                                                                        tmp_path):
    """A two-expert identity (tiny-wan's A14B layout) exports as NAME_comfy_low_noise.safetensors with
    pv.expert in its metadata; on the real A14B profile's schedule the workflow wires the experts as
    ComfyUI's Wan 2.2 template (high-noise stage, then low-noise) with the LoRA on the low-noise only."""
    from pv_wan.workflow import comfy_workflow
    from safetensors import safe_open

    home = tmp_path / "home"
    tune_home(home, astronaut, "a", "tiny-wan", "--steps", "1", "--set", "tune.held_out=0",
              "--set", "backbone.options.experts=2")
    use_home(monkeypatch, home)
    monkeypatch.chdir(tmp_path)
    r = run("export", "a", "--format", "comfy", "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["path"] == "a_comfy_low_noise.safetensors" and "low-noise expert" in rec["wiring"]
    with safe_open(str(tmp_path / rec["path"]), "pt") as fh:
        assert fh.metadata()["pv.expert"] == "low-noise (transformer_2)"
    assert_comfy_workflow(json.loads((tmp_path / "a_comfy_low_noise_workflow.json").read_text()))

    settings = resolve("wan2.2-a14b")[1].to_dict()
    meta = {"base_model": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "expert": "low-noise (transformer_2)",
            "boundary_ratio": "0.875", "scheduler": "UniPCMultistepScheduler", "flow_shift": "3"}
    on = 40 - steps_within_gate(schedule_levels(_wan().scheduler, 40), 0.3)  # UniPC, shift 3: as the profile
    assert 13 < on < 40
    # the profile's gating (active fraction 1: every low-noise step), and a gate below the experts' boundary
    for gate, spans in (("1.0", [(0, 13), (13, 40)]), ("0.3", [(0, 13), (13, on), (on, 40)])):
        wf, wiring = comfy_workflow({**meta, "gate_noise_level": gate}, settings, "a.safetensors")
        stages = assert_comfy_workflow(wf)
        assert [(s["start_at_step"], s["end_at_step"]) for s in stages] == spans, gate
        loaders = [wf[_chain_link(wf, s["model"])]["inputs"]["unet_name"] for s in stages]
        assert loaders[0] == "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
        assert set(loaders[1:]) == {"wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"}
        with_lora = ["LoraLoaderModelOnly" in _chain(wf, s["model"]) for s in stages]
        assert with_lora == [False] * (len(stages) - 1) + [True]  # the LoRA only on the low-noise tail
        assert f"from step {spans[-1][0]} of 40" in wiring


def test_a14b_with_both_experts_exports_a_file_per_expert_and_wires_each_lora_after_the_gate(astronaut, monkeypatch,
                                                                                               tmp_path):
    """An identity with backbone.options.adapter_experts=both (tiny-wan's A14B layout) exports one file
    per expert, each naming its expert in its file name and metadata, prints the one line of wiring,
    and its workflow puts each LoRA on its own expert after the gate, each expert at its own cfg
    (guidance_scale high-noise, guidance_scale_2 low-noise); on the real A14B profile's schedule too."""
    from pv_wan.backbone import HIGH_NOISE, LOW_NOISE
    from pv_wan.workflow import comfy_workflow
    from safetensors import safe_open

    home = tmp_path / "home"
    scales = [f"--set={k}.guidance_scale{n}={v}" for k in ("tune", "generate") for n, v in (("", 4), ("_2", 3))]
    info = tune_home(home, astronaut, "b", "tiny-wan", "--steps", "1", "--set", "tune.held_out=0", "--set",
                     "backbone.options.experts=2", "--set", "backbone.options.adapter_experts=both", "--set",
                     "tune.num_inference_steps=2", "--set", "tune.grad_steps=2", *scales)
    assert json.loads(info["adapter_parts"]) == {"transformer.": HIGH_NOISE, "transformer_2.": LOW_NOISE}
    use_home(monkeypatch, home)
    monkeypatch.chdir(tmp_path)
    r = run("generate", "b", "surfing", "-o", tmp_path / "b.mp4", "--json")  # the identity loads on both experts
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["guidance_scale_2"] == 3.0
    r = run("export", "b", "--format", "comfy")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == ["b_comfy_high_noise.safetensors", "b_comfy_low_noise.safetensors"]
    assert "high-noise expert" in r.stderr and "low-noise expert" in r.stderr and "b_comfy_workflow.json" in r.stderr
    for path, expert in (("b_comfy_high_noise.safetensors", HIGH_NOISE), ("b_comfy_low_noise.safetensors", LOW_NOISE)):
        with safe_open(str(tmp_path / path), "pt") as fh:
            assert fh.metadata()["pv.expert"] == expert
            assert fh.keys() and all(k.startswith("diffusion_model.blocks.") for k in fh.keys())
    wf = json.loads((tmp_path / "b_comfy_workflow.json").read_text())
    stages = assert_comfy_workflow(wf)
    loras = [wf[s["model"][0]]["inputs"]["model"] for s in stages]  # ModelSamplingSD3 <- the LoRA
    assert [wf[link[0]]["inputs"].get("lora_name") for link in loras] == [
        "b_comfy_high_noise.safetensors", "b_comfy_low_noise.safetensors"]  # the gate is open at every step
    assert [s["cfg"] for s in stages] == [4.0, 3.0]
    r = run("export", "b", "--format", "diffusers", "--json")
    assert r.exit_code == 0, r.stderr
    files = json.loads(r.stdout)["experts"]
    assert [f["path"] for f in files] == ["b_high_noise.safetensors", "b_low_noise.safetensors"]
    with safe_open(str(tmp_path / files[0]["path"]), "pt") as fh:
        assert all(k.startswith("transformer.blocks.") for k in fh.keys())
    r = run("generate", "b surfing", "--id", "b")  # several identities' region mixing drives one denoiser
    assert r.exit_code == 1 and "adapter on several denoisers" in r.stderr and "loading backbone" not in r.stderr

    settings = resolve("wan2.2-a14b")[1].to_dict()
    meta = {"base_model": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "expert": f"{HIGH_NOISE} + {LOW_NOISE}",
            "boundary_ratio": "0.875", "scheduler": "UniPCMultistepScheduler", "flow_shift": "12",
            "gate_noise_level": "0.95"}
    on = 40 - steps_within_gate(schedule_levels(_wan(shift=12.0).scheduler, 40), 0.95)
    assert 0 < on < 26  # the gate opens inside the high-noise expert's 26 steps (shift 12)
    wf, wiring = comfy_workflow(meta, settings, {HIGH_NOISE: "h.safetensors", LOW_NOISE: "l.safetensors"})
    stages = assert_comfy_workflow(wf)
    assert [(s["start_at_step"], s["end_at_step"], s["cfg"]) for s in stages] == [(0, on, 4.0), (on, 26, 4.0),
                                                                                 (26, 40, 3.0)]
    assert [wf[_chain_link(wf, s["model"])]["inputs"]["unet_name"] for s in stages] == [
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"] * 2 + ["wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"]
    assert [next((wf[n[0]]["inputs"]["lora_name"] for n in _links(wf, s["model"])
                  if wf[n[0]]["class_type"] == "LoraLoaderModelOnly"), None) for s in stages] == [
        None, "h.safetensors", "l.safetensors"]
    assert f"acts from step {on}, the low-noise one from step 26, of 40" in wiring
    assert {n["inputs"]["shift"] for n in wf.values() if n["class_type"] == "ModelSamplingSD3"} == {12.0}


def _links(wf: dict, link: list) -> list:
    """The links along a MODEL chain, back to its loader."""
    out = [link]
    while "model" in wf[out[-1][0]]["inputs"]:
        out.append(wf[out[-1][0]]["inputs"]["model"])
    return out


def _chain_link(wf: dict, link: list) -> str:
    """The id of the loader at the end of a MODEL chain."""
    while "model" in wf[link[0]]["inputs"]:
        link = wf[link[0]]["inputs"]["model"]
    return link[0]


def test_hunyuanvideo_workflow_uses_embedded_guidance_and_the_recorded_gate():
    """HunyuanVideo's workflow, on the real profile's schedule (30 steps, shift 7, the last quarter):
    FluxGuidance carries the guidance and cfg is 1 (no unconditional branch, as pv), the base model
    before the gate, the LoRA after it; node types and inputs as ComfyUI's templates have them."""
    from pv_hunyuanvideo.backbone import HunyuanFlowScheduler
    from pv_hunyuanvideo.workflow import comfy_workflow

    settings = resolve("hunyuanvideo")[1].to_dict()
    scheduler = HunyuanFlowScheduler(shift=7.0)
    gate = gate_level(scheduler, 30, adapted_steps(30, 0.25))
    meta = {"base_model": "hunyuanvideo-community/HunyuanVideo", "scheduler": "flow-match-euler(shift=7)",
            "gate_noise_level": repr(gate), "identity": "h"}
    wf, wiring = comfy_workflow(meta, settings, "h_comfy.safetensors")
    base, tuned = assert_comfy_workflow(wf)
    assert (base["end_at_step"], tuned["start_at_step"], tuned["end_at_step"]) == (22, 22, 30)
    assert base["cfg"] == tuned["cfg"] == 1.0 and base["sampler_name"] == "euler"
    guidance = wf[base["positive"][0]]
    assert guidance["class_type"] == "FluxGuidance" and guidance["inputs"]["guidance"] == 6.0
    assert _chain(wf, tuned["model"]) == ["ModelSamplingSD3", "LoraLoaderModelOnly", "UNETLoader"]
    assert wf[_chain_link(wf, base["model"])]["inputs"]["unet_name"] == "hunyuan_video_t2v_720p_bf16.safetensors"
    assert "from step 22 of 30" in wiring


@pytest.mark.parametrize("family", ["wan", "hunyuanvideo"])
def test_the_real_loaders_ask_diffusers_for_the_vae_in_fp32(family, monkeypatch):
    """The model loads in bf16 and its VAE in fp32 (one dtype per component), not bf16 weights
    upcast afterwards; checked on what the loader asks from_pretrained, without weights."""
    import diffusers

    from pvcli.errors import PVError

    asked = []

    def from_pretrained(ref, **kwargs):
        asked.append(kwargs.get("dtype", kwargs.get("torch_dtype")))
        raise OSError("no weights in this test")

    if family == "wan":
        from pv_wan.backbone import make_wan as make
        monkeypatch.setattr(diffusers.WanPipeline, "from_pretrained", from_pretrained)
    else:
        from pv_hunyuanvideo.backbone import make_hunyuanvideo as make
        monkeypatch.setattr(diffusers.HunyuanVideoPipeline, "from_pretrained", from_pretrained)
    with pytest.raises(PVError):
        make({"dtype": "bfloat16"}, device="cpu")
    assert asked and all(a == {"default": torch.bfloat16, "vae": torch.float32} for a in asked)


def test_compile_acts_on_the_transformer_backbones():
    """backbone.options.compile compiles the denoiser (and A14B's high-noise expert) instead of being
    accepted and ignored; tf32 goes through the same switch (it acts on CUDA only)."""
    from pvcli.plugins import build_plugin_manager

    registry = build_plugin_manager()
    for name, options in (("wan-tiny", {"experts": 2}), ("hunyuanvideo-tiny", {})):
        plain = registry.create("backbones", name, options=options, device="cpu")
        compiled = registry.create("backbones", name, options={**options, "compile": True}, device="cpu")
        assert plain.denoiser._compiled_call_impl is None and compiled.denoiser._compiled_call_impl is not None
        if name == "wan-tiny":
            assert compiled.high_noise._compiled_call_impl is not None


def test_a_guidance_distilled_backbone_encodes_no_negative_prompt(encoder, reference):
    from pv_hunyuanvideo.backbone import make_tiny_hunyuanvideo

    settings = resolve("tiny-hunyuan", [parse_set(["generate.negative_prompt=blurry, low quality"])])[1]
    assert settings.tune.guidance_scale > 1  # embedded guidance 6: no unconditional branch to feed
    tuner = Tuner(make_tiny_hunyuanvideo(), encoder, settings, reference)
    assert tuner.uncond is None and "blurry, low quality" not in tuner.embeds.cache


def test_a_size_the_backbone_cannot_patch_is_refused_in_one_line_before_loading(gated_home, astronaut, monkeypatch,
                                                                                tmp_path):
    home, _ = gated_home
    use_home(monkeypatch, home)
    r = run("generate", "g", "surfing", "--height", "72", "-o", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "--height 72: the wan-tiny backbone renders sizes in multiples of 16" in r.stderr
    assert "use 64 or 80" in r.stderr and "Traceback" not in r.stderr and "loading backbone" not in r.stderr
    use_home(monkeypatch, tmp_path / "home")
    for profile, setting, multiple in (("tiny-wan", "tune.width=72", 16), ("wan2.2-5b", "tune.height=272", 32),
                                       ("tiny-hunyuan", "generate.width=40", 16)):
        r = run("tune", astronaut, "--name", "s", "--profile", profile, "--set", setting)
        assert r.exit_code == 1 and f"multiples of {multiple} pixels" in r.stderr, (profile, r.stderr)
        assert setting.split("=")[0] in r.stderr and "loading backbone" not in r.stderr
        assert not (tmp_path / "home" / "runs" / "s").exists()


def test_supervising_a_random_adapted_step_reads_its_clean_estimate(encoder, reference):
    """tune.supervise_at=random: a clip's loss reads the predicted clean sample x0 of a step drawn
    inside the open gate (step 6 or 7 of 8 here; step 6 below), the trajectory stopping there (one denoiser call
    per step run), with gradient to the adapter; it is the sampler's own x0 of that step."""
    settings = _settings("tune.supervise_at=random", "tune.supervised_frames=1")
    tuner = Tuner(_wan(), encoder, settings, reference)
    assert {tuner._supervised_step() for _ in range(50)} == {6, 7}
    tuner._supervised_step = lambda: 6  # the step whose estimate is not the final sample
    randomize_lora_b(tuner.bb.denoiser)
    calls, decoded = [], []
    predict, decode = tuner.bb.predict_noise, tuner.bb.decode_frames
    tuner.bb.predict_noise = lambda *a, **k: calls.append(1) or predict(*a, **k)
    tuner.bb.decode_frames = lambda latents, idx: decoded.append(latents.detach().clone()) or decode(latents, idx)
    state = tuner.noise.get_state()
    loss, _, _, _, prompt = tuner._clip_loss(tuner.reference)
    assert len(calls) == 7  # the step supervised is the last one run
    noise = initial_latents(tuner.bb, 9, 64, 64, torch.Generator().set_state(state))
    with torch.no_grad():
        x0 = sample(tuner.bb, tuner.embeds(prompt), tuner.uncond, noise, 8, 1.0, adapter_steps=2, stop=7).x0
        final = tuner._final(prompt, noise, grad=False)
    assert torch.equal(decoded[0], x0) and not torch.equal(decoded[0], final)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in tuner.params if p.grad is not None) > 0
