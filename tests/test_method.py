"""Issue 3's method switches on the tiny backbone + real FaceNet: gating, augmentation,
several photos, the semantic reward, exact resume."""

import pytest
import torch

from pvcli.checkpoint import load_state, save_state
from pvcli.engine.adapter import adapter_state_dict, add_adapter
from pvcli.engine.identity import embed_crops, mean_embedding, reference_faces
from pvcli.engine.prompts import PROMPTS
from pvcli.engine.sampling import adapted_steps, initial_latents, sample
from pvcli.engine.tune import Tuner, scr_loss
from pvcli.settings import parse_set, resolve


def _settings(*items):
    return resolve("tiny", [parse_set(list(items))])[1]


def _trajectory(bb, adapter_steps, steps=8):
    seen = []
    with torch.no_grad():
        lat = initial_latents(bb, 4, 64, 64, torch.Generator().manual_seed(4))
        sample(bb, bb.encode_prompt(["sks person"]), None, lat, steps, 1.0, adapter_steps=adapter_steps,
               on_step=lambda i, x: seen.append(x.clone()))
    return seen


def test_late_step_gating_leaves_early_steps_exactly_base(tiny):
    base = _trajectory(tiny, None)
    add_adapter(tiny, "spatial", rank=4, alpha=4)
    with torch.no_grad():
        for n, p in tiny.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    gated = _trajectory(tiny, adapted_steps(8, 0.25))
    assert adapted_steps(8, 0.25) == 2
    for i in range(6):  # the first 75% of denoising steps are the base model's, bit for bit
        assert torch.equal(gated[i], base[i]), i
    assert (gated[-1] - base[-1]).abs().max() > 1e-3
    full = _trajectory(tiny, adapted_steps(8, 1.0))
    assert (full[0] - base[0]).abs().max() > 1e-4  # gating 1.0 changes the very first step


def test_augmentation_off_uses_one_prompt_and_prompt_files(tiny, encoder, reference):
    on = Tuner(tiny, encoder, _settings(), reference)
    assert len(set(on.prompts.prompts)) == len(PROMPTS) >= 50
    assert all("sks person" in p for p in on.prompts.prompts)
    off = Tuner(tiny, encoder, _settings("tune.augment=false"), reference)
    assert len({off.prompts() for _ in range(20)}) == 1
    mine = ["{id} juggling", "{id} sleeping"]
    assert set(Tuner(tiny, encoder, _settings(), reference, prompts=mine).prompts.prompts) == {
        "sks person juggling", "sks person sleeping"}
    ext = Tuner(tiny, encoder, _settings("tune.prompts_mode=extend", "tune.class_word=woman"), reference, prompts=mine)
    assert len(ext.prompts.prompts) == len(PROMPTS) + 2 and "sks woman juggling" in ext.prompts.prompts


def test_several_photos_are_averaged(encoder, astronaut, photo_dir):
    refs = reference_faces(encoder, [astronaut, photo_dir / "astronaut_small.jpg"])
    per = embed_crops(encoder, [r.crop for r in refs])
    mean = mean_embedding(per)
    assert torch.allclose(mean, torch.nn.functional.normalize(per.sum(0), dim=0), atol=1e-6)
    assert float(mean @ per[0]) > float(per[0] @ per[1]) - 1e-6


def test_semantic_reward_changes_the_gradient_and_stays_finite(tiny, encoder, reference):
    from pv_animatediff.backbone import make_tiny
    from pv_clip.scorer import make_clip_tiny

    assert float(scr_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))) == pytest.approx(0, abs=1e-7)
    assert float(scr_loss(torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0]))) > 0

    def first_grads(bb, s, scorer=None):
        torch.manual_seed(0)
        tuner = Tuner(bb, encoder, s, reference, scorer=scorer)
        with torch.no_grad():  # at init tuned == frozen and the KL's gradient is exactly 0
            for n, p in bb.unet.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        grads = {}
        orig = tuner.optimizer.step
        tuner.optimizer.step = lambda: grads.update({id(p): p.grad.clone() for p in tuner.params}) or orig()
        stats = tuner.step()
        return stats, torch.cat([g.flatten() for g in grads.values()])

    _, plain = first_grads(tiny, _settings("tune.grad_clip=0"))
    stats, with_scr = first_grads(make_tiny(), _settings("tune.grad_clip=0", "tune.scr_weight=10"), make_clip_tiny())
    assert stats.scr is not None and torch.isfinite(torch.tensor(stats.scr)) and stats.scr >= 0
    assert torch.isfinite(with_scr).all()
    assert (with_scr - plain).abs().max() > 1e-8


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(encoder, astronaut, tmp_path):
    from pv_animatediff.backbone import make_tiny

    refs = reference_faces(encoder, [astronaut])
    s = _settings("tune.steps=4", "tune.scr_weight=0")

    torch.manual_seed(0)
    full = Tuner(make_tiny(), encoder, s, refs)
    full.run()

    torch.manual_seed(0)
    first = Tuner(make_tiny(), encoder, s, refs)
    first.step(), first.step()
    save_state(first.state_dict(), tmp_path / "ckpt.safetensors")  # safetensors + JSON, no pickle
    torch.manual_seed(123)  # a different process would start from other RNG states
    second = Tuner(make_tiny(), encoder, s, refs)
    second.load_state_dict(load_state(tmp_path / "ckpt.safetensors"))
    second.run()
    a, b = adapter_state_dict(full.bb.unet), adapter_state_dict(second.bb.unet)
    assert second.step_index == 4
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_gives_the_same_step(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    adapters = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        tuner = Tuner(make_tiny(), encoder, _settings(f"tune.gradient_checkpointing={flag}"), reference)
        tuner.step()
        adapters.append(adapter_state_dict(tuner.bb.unet))
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=1e-6) for k in adapters[0])
