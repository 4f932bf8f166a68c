"""Shared fixtures: real photos that ship with dependencies, the real FaceNet encoder, tiny
backbones built in-process, and a private PV_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per process it starts): with a worker per core, torch's and
    # OpenCV's own thread pools would fight over the same cores (measured: 2 workers x 2 threads
    # on 2 cores ran slower than one worker).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)


def use_home(monkeypatch, home: Path) -> Path:
    """PV_HOME is `home` for this test, with no plugin filter and no debug output."""
    monkeypatch.setenv("PV_HOME", str(home))
    monkeypatch.delenv("PV_PLUGINS", raising=False)
    monkeypatch.delenv("PV_DEBUG", raising=False)
    return home


@pytest.fixture(autouse=True)
def pv_home(tmp_path, monkeypatch):
    return use_home(monkeypatch, tmp_path / "pvhome")


def _write(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def shared_build(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, built once for the whole run by `build(folder)`: pytest-xdist's workers
    share it (it lies under the run's base temp folder; the first worker to ask builds it under a
    file lock, the others wait for it and reuse it). Read it or copy it; never write into it."""
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's popen-gwN
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """The test photos, one folder for the whole run (an identity tuned on them records the same
    path in every worker)."""
    return shared_build(tmp_path_factory, "photos", _write_photos)


def _write_photos(d: Path) -> None:
    import skimage.data

    astro = skimage.data.astronaut()
    _write(d / "astronaut.png", astro)
    _write(d / "astronaut_small.jpg", cv2.resize(astro, (384, 384)))
    _write(d / "blank.png", np.full((128, 128, 3), 127, np.uint8))
    (d / "not_an_image.jpg").write_text("hello")


@pytest.fixture(scope="session")
def astronaut(photo_dir) -> Path:
    return photo_dir / "astronaut.png"


@pytest.fixture(scope="session")
def group_photo() -> Path:
    """insightface's t1.jpg: six different people at a table."""
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="session")
def encoder():
    from pv_facenet.encoder import make_facenet

    return make_facenet()


@pytest.fixture
def tiny():
    """A fresh tiny backbone (tuning mutates its UNet)."""
    from pv_animatediff.backbone import make_tiny

    return make_tiny()


@pytest.fixture(scope="session")
def tiny_settings():
    from pvcli.settings import resolve

    return resolve("tiny")[1]


@pytest.fixture(scope="session")
def reference(encoder, astronaut):
    from pvcli.engine.face_crops import embed_crops, mean_embedding, reference_faces

    refs = reference_faces(encoder, [astronaut])
    return mean_embedding(embed_crops(encoder, [r.crop for r in refs]))


# Tests that do not look at the held-out measurement skip it (it costs 2 x 3 clips per tune).
NO_HELD_OUT = ("--set", "tune.held_out=0")


def run(*args, input=None, env=None):
    """`pv ARGS` through the real CLI, in-process (stdout and stderr apart)."""
    from typer.testing import CliRunner

    from pvcli.cli import create_app

    return CliRunner().invoke(create_app(), [str(a) for a in args], input=input, env=env)


def press_ctrl_c_at(monkeypatch, step_index: int):
    """Make Tuner.step act like Ctrl-C (raise KeyboardInterrupt) when `step_index` steps are done;
    the real step runs before that. Returns a function that puts the real step back."""
    from pvcli.engine.tune import Tuner

    real = Tuner.step

    def step(self):
        if self.step_index == step_index:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Tuner, "step", step)
    return lambda: monkeypatch.setattr(Tuner, "step", real)


# How the shared identities are tuned: hard enough (lr 0.05, no warm-up) that the adapter visibly
# changes frames; rank 4 with alpha 8 (scale 2, so an export that loses alpha shows); 2 steps.
HARD_TUNE = ("--steps", "2", "--lr", "0.05", "--rank", "4", "--set", "adapter.alpha=8", "--set", "tune.warmup_steps=0",
             *NO_HELD_OUT)


def tune_home(home: Path, photo: Path, name: str, profile: str, *args) -> dict:
    """Tune `name` into the PV_HOME `home` through the CLI; returns the record `--json` printed."""
    import json

    mp = pytest.MonkeyPatch()
    mp.setenv("PV_HOME", str(home))
    try:
        r = run("tune", photo, "--name", name, "--profile", profile, *args, "--json", "--quiet")
        assert r.exit_code == 0, r.stderr
    finally:
        mp.undo()
    return json.loads(r.stdout)


@pytest.fixture(scope="session")
def tuned_alice(tmp_path_factory, astronaut) -> Path:
    """A PV_HOME holding `alice`, tuned once per session on the tiny profile (HARD_TUNE). Read it
    through `alice_home` (a copy per module) or copy it; never write into it. Tuned once for the
    whole run: pytest-xdist's workers share it (shared_build)."""
    return shared_build(tmp_path_factory, "alice-home",
                        lambda home: tune_home(home, astronaut, "alice", "tiny", *HARD_TUNE))


def fixed_clip_similarities(backbone, encoder, reference, settings, steps: int = 6, lr: float = 5e-3) -> list[float]:
    """ID similarity of the supervised clip over `steps` tuning steps that all draw the same noise,
    prompt and frames (lr `lr`, no warm-up): how the ID loss moves one clip."""
    import random

    import torch

    from pvcli.engine.tune import Tuner
    from pvcli.settings import from_dict

    settings = from_dict(settings.to_dict(), [{"tune": {"lr": lr, "warmup_steps": 0}}])
    tuner = Tuner(backbone, encoder, settings, reference)
    tuner.prompts.prompts = tuner.prompts.prompts[:1]
    sims = []
    for _ in range(steps):
        tuner.noise = torch.Generator().manual_seed(11)
        tuner.frame_rng = random.Random(0)
        sims.append(tuner.step().id_sim)
    return sims


def randomize_lora_b(module, seed: int = 0, std: float = 0.3) -> None:
    """Random values in every LoRA B matrix of `module` (a fresh adapter changes nothing until
    trained), from `seed`, leaving torch's global random state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, std)


def random_adapter(backbone, std: float = 0.3) -> None:
    """A rank-4 identity adapter on the backbone's `spatial` set that visibly changes its clips."""
    from pvcli.engine.adapter import add_adapter

    add_adapter(backbone, "spatial", 4, 4)
    randomize_lora_b(backbone.denoiser, 0, std)


def copy_home(src: Path, dst: Path) -> Path:
    """A private copy of a PV_HOME (identities and all), for a test that writes into it."""
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def alice_home(tuned_alice, tmp_path_factory) -> Path:
    """This module's own copy of the session's tuned `alice` home (tests in a module may share it)."""
    return copy_home(tuned_alice, tmp_path_factory.mktemp("alice") / "pvhome")


def write_manifest(folder: Path, photos: dict[str, Path]) -> Path:
    """A `pv tune --manifest` file: one identity per name with its photo, on the tiny profile,
    1 step, no held-out measurement."""
    lines = ["defaults:", "  profile: tiny", "  settings: {tune: {steps: 1, held_out: 0}}", "identities:"]
    for name, photo in photos.items():
        lines += [f"  - name: {name}", f"    photos: [{photo}]"]
    path = folder / "people.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


CHROMIUM = "/usr/bin/chromium"  # Debian's (CI installs it; the browser tests skip without it)


def chromium_probe(page: Path, script: str, element_id: str, tmp_path: Path, budget_ms: int = 5000) -> dict:
    """Open `page` in headless Chromium with `script` added before its </body>; the JSON the script
    wrote into <pre id=element_id>."""
    import html
    import json
    import re
    import subprocess

    probe = tmp_path / f"probe_{page.name}"
    probe.write_text(page.read_text().replace("</body>", script, 1))
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--virtual-time-budget={budget_ms}",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(rf'<pre id="{element_id}">(.*?)</pre>', out.stdout, re.S)
    assert m, out.stderr[-2000:]
    return json.loads(html.unescape(m.group(1)))


def load_bench_gpu(monkeypatch, module_name: str = "pv_bench_gpu"):
    """bench/gpu.py as a module (bench/ on sys.path for its own imports)."""
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location(module_name, bench / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
