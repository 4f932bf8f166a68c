"""The real `animatediff` loader, exercised offline on local folders in the real layout."""

import pytest
import torch

from pvcli.engine.sampling import initial_latents, sample
from pvcli.errors import PVError


def _frames(bb):
    with torch.no_grad():
        lat = initial_latents(bb, 4, 64, 64, torch.Generator().manual_seed(2))
        return bb.decode(sample(bb, bb.encode_prompt(["sks person"]), None, lat, 3, 1.0).latents)


def test_animatediff_loads_local_base_and_motion_adapter_folders(tmp_path, tiny):
    from pv_animatediff.backbone import make_animatediff, save_tiny

    base, motion = save_tiny(tmp_path)
    bb = make_animatediff(options={"base_model": str(base), "motion_adapter": str(motion)}, device="cpu")
    assert bb.name == "animatediff" and bb.dtype == torch.float32
    assert bb.describe()["base_model"] == str(base)
    assert (_frames(bb) - _frames(tiny)).abs().max() < 1e-4  # the same weights, loaded the real way


def test_missing_weights_offline_is_one_clear_error(tmp_path, monkeypatch):
    from pv_animatediff.backbone import make_animatediff

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PVError, match="cannot load motion_adapter 'no-one/nothing' offline .not in the local cache") as exc:
        make_animatediff(options={"motion_adapter": "no-one/nothing"})
    assert "--profile tiny" in exc.value.hint and "hf download" in exc.value.hint
    with pytest.raises(PVError, match="file not found"):
        make_animatediff(options={"base_model": str(tmp_path / "missing.safetensors")})
    with pytest.raises(PVError, match="dtype must be"):
        make_animatediff(options={"dtype": "float8"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    from pv_animatediff.backbone import make_tiny

    with pytest.raises(PVError, match="CUDA is not available"):
        make_tiny(device="cuda")
