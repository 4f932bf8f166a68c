"""SD 1.5 + AnimateDiff v1-5 and Wan 2.1 1.3B at full size, random weights from the shipped
configs (no download): the adapter's placement is counted, and one tuning step runs on CPU at a
small size. Slow (about 10 GB of RAM, minutes): skipped unless PV_RUN_SLOW=1. bench/ratios.py
--real and bench/wan_size.py extrapolate memory."""

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


def test_real_size_wan_1_3b_adapter_placement_and_a_step_trains_it(encoder, astronaut):
    """Wan2.1-T2V-1.3B's real transformer and the real Wan VAE from their configs (random weights),
    one tuning step at 5 frames x 64 px. The text encoder is a 1-layer stand-in of UMT5-XXL's width
    (4096): the real one is 23 GB in fp32, more than this machine holds beside the rest."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from pv_tiny import CHAR_VOCAB_SIZE, char_tokenizer
    from pv_wan.backbone import WanBackbone
    from pv_wan.configs import TRANSFORMERS
    from transformers import UMT5Config, UMT5EncoderModel

    from pvcli.engine.adapter import adapter_state_dict
    from pvcli.engine.face_crops import reference_faces
    from pvcli.engine.tune import Tuner
    from pvcli.settings import parse_set, resolve

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**TRANSFORMERS["wan2.1-1.3b"])
    text = UMT5EncoderModel(UMT5Config(vocab_size=CHAR_VOCAB_SIZE, d_model=4096, d_kv=64, d_ff=256, num_layers=1,
                                       num_heads=4))
    bb = WanBackbone("wan", transformer, AutoencoderKLWan(), text, char_tokenizer(), FlowMatchEulerDiscreteScheduler(
        shift=3.0), {"base_model": "Wan2.1-T2V-1.3B config, random"}, "cpu", torch.float32, max_sequence_length=32)
    assert round(sum(p.numel() for p in bb.denoiser.parameters()) / 1e6, 1) == 1419.0
    _, s = resolve("wan2.1-1.3b", [parse_set([
        "tune.frames=5", "tune.height=64", "tune.width=64", "tune.num_inference_steps=2", "tune.grad_steps=1",
        "tune.supervised_frames=2", "tune.guidance_scale=1", "adapter.active_fraction=1",
        "tune.gradient_checkpointing=false"])])
    tuner = Tuner(bb, encoder, s, reference_faces(encoder, [astronaut]))
    assert len(tuner.layers) == 120 and not [n for n in tuner.layers if ".attn1." in n]  # attn2 q,k,v,out x 30
    assert round(sum(p.numel() for p in tuner.params) / 1e6, 2) == 5.90  # rank 16
    before = adapter_state_dict(bb.denoiser)
    stats = tuner.step()
    assert stats.loss is not None and torch.isfinite(torch.tensor(stats.loss))
    after = adapter_state_dict(bb.denoiser)
    assert any(not torch.equal(before[k], after[k]) for k in before)
