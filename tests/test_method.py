"""Issue 3's method switches on the tiny backbone + real FaceNet: gating, augmentation,
several photos, the semantic reward, exact resume."""

import pytest
import torch

from pvcli.checkpoint import load_state, save_state
from pvcli.engine.adapter import adapter_state_dict, add_adapter
from pvcli.engine.face_crops import embed_crops, mean_embedding, reference_faces
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


def _assert_resume_equals_full_run(encoder, refs, settings, path):
    """3 steps in one go == 1 step, a checkpoint, and a new Tuner (a new process) doing the other 2."""
    from pv_animatediff.backbone import make_tiny

    torch.manual_seed(0)
    full = Tuner(make_tiny(), encoder, settings, refs)
    full.run()
    torch.manual_seed(0)
    first = Tuner(make_tiny(), encoder, settings, refs)
    first.step()
    save_state(first.state_dict(), path)  # safetensors + JSON, no pickle
    torch.manual_seed(123)  # a different process would start from other RNG states
    second = Tuner(make_tiny(), encoder, settings, refs)
    second.load_state_dict(load_state(path))
    second.run()
    a, b = adapter_state_dict(full.bb.unet), adapter_state_dict(second.bb.unet)
    assert second.step_index == 3
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(encoder, astronaut, tmp_path):
    refs = reference_faces(encoder, [astronaut])
    _assert_resume_equals_full_run(encoder, refs, _settings("tune.steps=3", "tune.scr_weight=0"),
                                   tmp_path / "ckpt.safetensors")


def test_gradient_checkpointing_gives_the_same_step(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    adapters = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        tuner = Tuner(make_tiny(), encoder, _settings(f"tune.gradient_checkpointing={flag}"), reference)
        tuner.step()
        adapters.append(adapter_state_dict(tuner.bb.unet))
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=1e-6) for k in adapters[0])


@pytest.mark.parametrize("scheduler", ["ddim", "lcm", "euler-trailing"])
def test_a_trajectory_stopped_and_continued_is_the_full_trajectory(scheduler):
    from pv_animatediff.backbone import make_tiny

    bb = make_tiny({"scheduler": scheduler})
    cond, uncond = bb.encode_prompt(["sks person"]), bb.encode_prompt([""])
    noise = initial_latents(bb, 4, 64, 64, torch.Generator().manual_seed(2))
    with torch.no_grad():  # LCM adds fresh noise each step from torch's global generator
        torch.manual_seed(0)
        full = sample(bb, cond, uncond, noise, 6, 3.0)
        torch.manual_seed(0)
        half = sample(bb, cond, uncond, noise, 6, 3.0, stop=4)
        rest = sample(bb, cond, uncond, half.latents, 6, 3.0, start=4)
    assert torch.equal(rest.latents, full.latents) and torch.equal(rest.x0, full.x0)


def _count_unet_calls(bb):
    calls = []
    original = bb.predict_noise

    def counted(*a, **kw):
        calls.append(torch.is_grad_enabled())
        return original(*a, **kw)

    bb.predict_noise = counted
    return calls


POOLED = ("adapter.active_fraction=0.3", "tune.num_inference_steps=6", "tune.grad_steps=2", "tune.scr_weight=0")


def test_trajectory_pool_runs_only_the_adapted_tail_once_warm(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    torch.manual_seed(0)
    tuner = Tuner(make_tiny(), encoder, _settings(*POOLED, "tune.trajectory_pool=1"), reference)
    calls = _count_unet_calls(tuner.bb)
    first = tuner.step()
    # the pair's adapter-free prefix once, then the grad tail (DDIM's final t=0 step returns its
    # input and is not run: the tail is the one adapted step that changes the sample)
    assert calls == [False] * 4 + [True]
    calls.clear()
    second = tuner.step()
    assert calls == [True]  # warm: only the adapted tail
    assert first.prompt == second.prompt  # one pair in the pool
    assert second.loss is not None and second.loss != first.loss  # the adapter moved between them


def test_trajectory_pool_step_equals_the_fresh_step_from_the_same_noise(encoder, reference):
    """A warm pool's clip is the same clip the sampler makes from the pair's noise: same loss."""
    from pv_animatediff.backbone import make_tiny

    torch.manual_seed(0)
    pooled = Tuner(make_tiny(), encoder, _settings(*POOLED, "tune.trajectory_pool=3"), reference)
    prompt, kept, start = pooled.pool.draw(torch.Generator().manual_seed(0))
    seed = next(s for p, s in pooled.pool.pairs if p == prompt)
    noise = initial_latents(pooled.bb, 4, 64, 64, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fresh = pooled._final(prompt, noise, grad=False)
        warm = pooled._final(prompt, kept, grad=False, start=start)
    assert start == 4 and torch.equal(fresh, warm)


def test_trajectory_pool_resumes_exactly_and_needs_gating(encoder, astronaut, tmp_path):
    from pv_animatediff.backbone import make_tiny

    from pvcli.errors import PVError

    refs = reference_faces(encoder, [astronaut])  # the new Tuner recomputes the pool's latents
    _assert_resume_equals_full_run(encoder, refs, _settings(*POOLED, "tune.trajectory_pool=2", "tune.steps=3"),
                                   tmp_path / "ckpt.safetensors")
    with pytest.raises(PVError, match="trajectory_pool"):
        Tuner(make_tiny(), encoder, _settings("adapter.active_fraction=1", "tune.trajectory_pool=2"), refs)


def test_gradient_checkpointing_keeps_less_for_backward_in_the_unet_and_the_decoder(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    from pvcli.engine.memory import saved_activations

    kept = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        tuner = Tuner(make_tiny(), encoder, _settings(f"tune.gradient_checkpointing={flag}"), reference)
        with saved_activations() as saved:
            tuner.step()
        kept.append(saved["bytes"])
    assert tuner.bb.vae.is_gradient_checkpointing and tuner.bb.unet.is_gradient_checkpointing
    assert kept[1] < 0.8 * kept[0], kept  # on the tiny model FaceNet's own activations are half of what is left


def test_a_half_precision_unet_trains_a_float32_adapter(encoder, reference):
    """backbone.options.dtype (fp16 on CUDA by default): the UNet in half precision, the VAE and
    the adapter with its optimizer state in fp32; the step is finite and moves the adapter."""
    from pv_animatediff.backbone import make_tiny

    bb = make_tiny({"dtype": "bfloat16"})
    tuner = Tuner(bb, encoder, _settings(), reference)
    before = adapter_state_dict(bb.unet)
    stats = tuner.step()
    assert stats.loss is not None and torch.isfinite(torch.tensor(stats.loss))
    assert {p.dtype for p in tuner.params} == {torch.float32} and bb.vae.dtype == torch.float32
    assert next(p for n, p in bb.unet.named_parameters() if "lora" not in n).dtype == torch.bfloat16
    after = adapter_state_dict(bb.unet)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_text_encoders_wait_on_the_host_while_tuning_and_come_back_for_samples(astronaut, pv_home, monkeypatch, encoder,
                                                                               reference, tiny_settings):
    """tune.offload_text_encoder: the prompt pool is embedded once, the text encoder moves off the
    device, no step encodes anything, and a sample clip (its pipeline encodes its own prompts)
    brings it back for the clip only."""
    from conftest import NO_HELD_OUT, run
    from transformers import CLIPTextModel

    import pvcli.engine.offload as offload

    where = ["device"]
    monkeypatch.setattr(offload, "move_text_encoders",
                        lambda bb, device: where.append("host" if device == offload.HOST and isinstance(device, str)
                                                        else "device"))
    encoded_on = []
    real = CLIPTextModel.forward

    def forward(self, *args, **kwargs):
        encoded_on.append(where[-1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CLIPTextModel, "forward", forward)
    r = run("tune", astronaut, "--name", "o", "--profile", "tiny", *NO_HELD_OUT, "--steps", "2", "-q",
            "--set", "tune.offload_text_encoder=always", "--set", "tune.sample_every=2")
    assert r.exit_code == 0, r.stderr
    assert where == ["device", "host", "device", "host"]  # off for the steps, back for the sample only
    assert "host" not in encoded_on  # never asked to encode while away
    assert encoded_on.count("device") >= 50  # the whole prompt pool, at the start
    from pv_animatediff.backbone import make_tiny

    where[:] = ["device"]
    Tuner(make_tiny(), encoder, tiny_settings, reference)
    assert where == ["device"]  # auto leaves it where it is on the CPU
