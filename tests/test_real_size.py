"""SD 1.5 + AnimateDiff v1-5 at full size, random weights from the shipped configs (no download):
the adapter's placement is counted, and one tuning step runs on CPU at a small size. Slow (about
10 GB of RAM, minutes): skipped unless PV_RUN_SLOW=1. bench/ratios.py --real extrapolates memory."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("PV_RUN_SLOW") != "1", reason="set PV_RUN_SLOW=1 to run")


def test_real_size_adapter_lands_on_128_spatial_attention_layers_and_a_step_trains_it(encoder, astronaut):
    from pv_animatediff.reference_size import build_sd15_random

    from pvcli.engine.adapter import adapter_state_dict
    from pvcli.engine.face_crops import reference_faces
    from pvcli.engine.memory import saved_activations
    from pvcli.engine.tune import Tuner
    from pvcli.settings import parse_set, resolve

    bb = build_sd15_random()
    assert round(sum(p.numel() for p in bb.unet.parameters()) / 1e6, 1) == 1312.7  # UNet 859.5M + motion 453.2M
    _, s = resolve("animatediff", [parse_set([
        "tune.frames=2", "tune.height=64", "tune.width=64", "tune.num_inference_steps=2", "tune.grad_steps=1",
        "tune.supervised_frames=2", "tune.guidance_scale=1", "adapter.active_fraction=1"])])
    tuner = Tuner(bb, encoder, s, reference_faces(encoder, [astronaut]))
    assert len(tuner.layers) == 128 and not [n for n in tuner.layers if "motion_modules" in n]
    assert round(sum(p.numel() for p in tuner.params) / 1e6, 2) == 3.19  # rank 16
    before = adapter_state_dict(bb.unet)
    with saved_activations() as saved:
        stats = tuner.step()
    assert stats.loss is not None and torch.isfinite(torch.tensor(stats.loss))
    after = adapter_state_dict(bb.unet)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert saved["bytes"] > 0
