"""Checkpoints hold the tuner's whole state without pickle, and nothing in pv loads pickle."""

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pvcli.checkpoint import load_state, save_state
from pvcli.errors import PVError

ROOT = Path(__file__).resolve().parents[1]


def test_nested_state_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(5)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3, 2))], lr=1e-3)
    opt.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    opt.step()
    state = {"step": 7, "optimizer": opt.state_dict(), "python_rng": random.Random(3).getstate(),
             "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "lr": 1e-3,
             "nothing": None, "flag": True, "nested": [1, (2.5, "x"), {"a": torch.arange(4)}]}
    save_state(state, tmp_path / "c.safetensors")
    back = load_state(tmp_path / "c.safetensors")
    assert back["step"] == 7 and back["nothing"] is None and back["flag"] is True and back["lr"] == 1e-3
    assert back["python_rng"] == state["python_rng"]  # tuples and their big ints come back as they were
    assert back["numpy_rng"] == state["numpy_rng"]
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    assert set(back["optimizer"]["state"]) == {0}  # int keys stay ints
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["nested"][1] == (2.5, "x") and torch.equal(back["nested"][2]["a"], torch.arange(4))
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3, 2))], lr=1e-3)
    restored.load_state_dict(back["optimizer"])


def test_a_pickle_file_is_refused_not_loaded(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"x": 1}, path)  # a pickle under a safetensors name
    with pytest.raises(PVError, match="cannot read checkpoint"):
        load_state(path)


def test_no_pickle_loading_remains_in_pv():
    pattern = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|torch\.load\(")
    hits = [f"{p.relative_to(ROOT)}:{n}" for folder in ("pvcli", "plugins", "tests", "bench")
            for p in (ROOT / folder).rglob("*.py") if p.name != "test_checkpoint.py"
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
