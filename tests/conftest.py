"""Shared fixtures: real photos that ship with dependencies, the real FaceNet encoder, tiny
backbones built in-process, and a private PV_HOME per test."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


@pytest.fixture(autouse=True)
def pv_home(tmp_path, monkeypatch):
    home = tmp_path / "pvhome"
    monkeypatch.setenv("PV_HOME", str(home))
    monkeypatch.delenv("PV_PLUGINS", raising=False)
    monkeypatch.delenv("PV_DEBUG", raising=False)
    return home


def _write(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    import skimage.data

    d = tmp_path_factory.mktemp("photos")
    astro = skimage.data.astronaut()
    _write(d / "astronaut.png", astro)
    _write(d / "astronaut_small.jpg", cv2.resize(astro, (384, 384)))
    _write(d / "blank.png", np.full((128, 128, 3), 127, np.uint8))
    (d / "not_an_image.jpg").write_text("hello")
    return d


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
    from pvcli.engine.identity import embed_crops, mean_embedding, reference_faces

    refs = reference_faces(encoder, [astronaut])
    return mean_embedding(embed_crops(encoder, [r.crop for r in refs]))


@contextmanager
def tuned_home(tmp_path_factory, photo, label: str, *tune_args: str):
    """A PV_HOME (set for the block) holding `alice`, tuned through the CLI on the tiny profile hard
    enough (lr 0.05, no warm-up) that the adapter visibly changes frames."""
    from typer.testing import CliRunner

    from pvcli.cli import create_app

    home = tmp_path_factory.mktemp(label)
    mp = pytest.MonkeyPatch()
    mp.setenv("PV_HOME", str(home))
    args = ["tune", str(photo), "--name", "alice", "--profile", "tiny", "--steps", "2", "--lr", "0.05",
            "--set", "tune.warmup_steps=0", "--quiet", *tune_args]
    r = CliRunner().invoke(create_app(), args)
    assert r.exit_code == 0, r.stderr
    try:
        yield home
    finally:
        mp.undo()
