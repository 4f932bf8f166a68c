"""The method's signal is what it claims: the frozen model under gating, the gate's timesteps in
video-to-video, the guidance and the sample tuning sees, fp16 gradients, frozen motion modules,
the learning-rate schedule, the noise few-step samplers add (issues 18 and 19)."""

import pytest
import torch

from pvcli.contracts import GenerationPlan
from pvcli.engine.adapter import ADAPTER_NAME, adapter_disabled, add_adapter, lora_layers
from pvcli.engine.sampling import adapted_steps, initial_latents, sample
from pvcli.engine.tune import Tuner
from pvcli.errors import PVError
from pvcli.settings import parse_set, resolve


class FrameBrightness:
    """A frame scorer whose scores differ between frames (a random tiny CLIP's barely do), so the
    Semantic Consistency Reward's size shows whether tuned and frozen clips differ."""

    name = "brightness"

    def score(self, frames, prompt):
        return 200.0 * frames.mean(dim=(1, 2, 3))


def _settings(*items):
    return resolve("tiny", [parse_set(list(items))])[1]


def _randomise_adapter(bb, std=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in bb.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_disabling_the_adapter_nests(tiny):
    add_adapter(tiny, "spatial", 4, 4)
    layers = [m for _, m in lora_layers(tiny.unet)]
    with adapter_disabled(tiny.unet):
        with adapter_disabled(tiny.unet):
            pass
        assert all(m.disable_adapters for m in layers)  # the inner exit must not switch it back on
    assert not any(m.disable_adapters for m in layers)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_the_frozen_clip_of_the_semantic_reward_is_the_model_without_adapter(encoder, reference, fraction):
    """SCR's "frozen" clip under late-step gating equals a clip of a model that never had an
    adapter, and SCR's gradient reaches the adapter."""
    from pv_animatediff.backbone import make_tiny

    s = _settings(f"adapter.active_fraction={fraction}", "tune.num_inference_steps=8", "tune.scr_weight=1",
                  "tune.no_face=skip", "tune.scr_frames=3")
    torch.manual_seed(0)
    tuner = Tuner(make_tiny(), encoder, s, reference, scorer=FrameBrightness())
    _randomise_adapter(tuner.bb, 0.3)
    prompt = tuner.prompts.prompts[0]
    noise = initial_latents(tuner.bb, 4, 64, 64, torch.Generator().manual_seed(5))
    with torch.no_grad():
        frozen = tuner._final(prompt, noise, grad=False, adapter=False)
        tuned = tuner._final(prompt, noise, grad=False)
        plain = make_tiny()
        base = sample(plain, plain.encode_prompt([prompt]), None, noise, 8, 1.0).latents
    assert torch.equal(frozen, base)
    assert (tuned - base).abs().max() > 1e-3

    loss, _, scr, faces, _ = tuner._clip_loss(tuner.reference)  # no face on a random model: SCR alone
    assert faces.hits == 0 and scr is not None and scr > 0  # exactly 0 when "frozen" was the tuned clip
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in tuner.params if p.grad is not None) > 0


def test_tuning_with_the_semantic_reward_on_a_gated_profile_logs_it(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    s = _settings("adapter.active_fraction=0.5", "tune.scr_weight=1", "tune.lr=0.01", "tune.warmup_steps=0",
                  "tune.steps=2")
    torch.manual_seed(0)
    first, second = Tuner(make_tiny(), encoder, s, reference, scorer=FrameBrightness()).run()
    assert first.scr == pytest.approx(0, abs=1e-9)  # a fresh adapter changes nothing yet
    assert second.scr > 0


def test_a_single_frame_for_the_semantic_reward_is_refused():
    with pytest.raises(PVError, match="scr_frames"):
        _settings("tune.scr_frames=1")


def _active_timesteps(bb):
    """Record, per denoiser call, (timestep, whether the identity adapter acts)."""
    layer = next(m for _, m in lora_layers(bb.unet))
    seen = []

    def hook(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append((int(t), layer.scaling[ADAPTER_NAME] != 0 and not layer.disable_adapters))

    handle = bb.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("strength", [1.0, 0.6, 0.3])
def test_video_to_video_gates_the_identity_by_timestep(tiny, tiny_settings, strength):
    """The adapter acts at the timesteps it was tuned on (the last quarter of the full schedule),
    however much of the schedule video-to-video runs."""
    from pvcli.engine.generate import render_latents

    add_adapter(tiny, "spatial", 4, 4)
    g = tiny_settings.generate
    g = type(g)(**{**g.__dict__, "frames": 4, "steps": 8, "strength": strength})
    full = tiny.new_scheduler()
    full.set_timesteps(8)
    window = {int(t) for t in full.timesteps[-adapted_steps(8, 0.25):]}
    plan = GenerationPlan(4, 64, 64, video=torch.rand(4, 3, 64, 64), strength=strength)
    seen, handle = _active_timesteps(tiny)
    try:
        render_latents(tiny, "sks person", g, adapter_steps=adapted_steps(8, 0.25), plan=plan)
    finally:
        handle.remove()
    assert len(seen) == int(8 * strength)
    assert {t for t, active in seen if active} == window & {t for t, _ in seen}
    assert len(window) == 2


def test_tuning_guides_with_the_negative_prompt_generation_uses(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    s = _settings("tune.guidance_scale=5", "generate.negative_prompt=blurry, watermark")
    tuner = Tuner(make_tiny(), encoder, s, reference)
    assert torch.equal(tuner.uncond, tuner.bb.encode_prompt(["blurry, watermark"]))


def test_tuning_supervises_the_sample_generation_decodes(encoder, reference, tiny_settings):
    """The clip tuning scores is the clip `pv generate` renders from the same noise (DDIM's final
    step at t=0 returns its input: it is not run, and with one grad step the gradient comes
    from the last step that changes the sample)."""
    from pv_animatediff.backbone import make_tiny

    from pvcli.engine.generate import render_latents

    s = _settings("tune.grad_steps=1", "tune.guidance_scale=1")
    torch.manual_seed(0)
    tuner = Tuner(make_tiny(), encoder, s, reference)
    _randomise_adapter(tuner.bb, 0.2)
    assert tuner.dead_final
    prompt = tuner.prompts.prompts[0]
    with torch.no_grad():
        ours = tuner._final(prompt, initial_latents(tuner.bb, 4, 64, 64, torch.Generator().manual_seed(9)), grad=False)
    g = tiny_settings.generate
    g = type(g)(**{**g.__dict__, "frames": 4, "seed": 9, "steps": 4, "guidance_scale": 1.0})
    theirs = render_latents(tuner.bb, prompt, g)
    assert (ours - theirs).abs().max() < 1e-4

    calls = []
    original = tuner.bb.predict_noise
    tuner.bb.predict_noise = lambda *a, **k: calls.append(torch.is_grad_enabled()) or original(*a, **k)
    latents = initial_latents(tuner.bb, 4, 64, 64, torch.Generator().manual_seed(9))
    final = tuner._final(prompt, latents, grad=True)
    assert calls == [False, False, True]  # 4 DDIM steps: t=0 is not run, the one grad step is t=250
    final.mean().backward()
    assert sum(float(p.grad.abs().sum()) for p in tuner.params if p.grad is not None) > 0


def test_an_adapter_gated_to_the_dead_final_step_is_refused(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    with pytest.raises(PVError, match="returns its input"):
        Tuner(make_tiny(), encoder, _settings("adapter.active_fraction=0.25"), reference)  # 4 steps: only t=0


def test_a_long_progress_sample_leaves_the_motion_modules_frozen(encoder, reference, tiny_settings):
    from pv_animatediff.backbone import make_tiny

    from pvcli.engine.generate import generate_frames

    torch.manual_seed(0)
    tuner = Tuner(make_tiny(), encoder, _settings("tune.no_face=center"), reference)
    g = tiny_settings.generate
    generate_frames(tuner.bb, "sks person", type(g)(**{**g.__dict__, "frames": 40, "steps": 2}))  # FreeNoise
    tuner.optimizer.step = lambda *a, **k: None  # keep the gradients to look at them
    tuner.step()
    adapter = {id(p) for p in tuner.params}
    leaked = [n for n, p in tuner.bb.unet.named_parameters() if id(p) not in adapter and (p.requires_grad or p.grad is not None)]
    assert leaked == []


def test_the_logged_learning_rate_is_the_one_used_and_skipped_steps_do_not_advance_it(encoder, reference):
    from pv_animatediff.backbone import make_tiny

    s = _settings("tune.lr=1e-3", "tune.warmup_steps=10", "tune.no_face=skip", "tune.steps=2")
    torch.manual_seed(0)
    tuner = Tuner(make_tiny(), encoder, s, reference)
    first, second = tuner.run()  # a random model draws no face: no loss, no optimizer step
    assert first.loss is None and second.loss is None
    assert first.lr == pytest.approx(1e-4) and second.lr == pytest.approx(1e-4)

    s = _settings("tune.lr=1e-3", "tune.warmup_steps=10", "tune.steps=2")
    first, second = Tuner(make_tiny(), encoder, s, reference).run()
    assert first.lr == pytest.approx(1e-4) and second.lr == pytest.approx(2e-4)


def _first_step_gradient(encoder, reference, dtype):
    from pv_animatediff.backbone import make_tiny

    torch.manual_seed(0)
    tuner = Tuner(make_tiny({"dtype": dtype}), encoder, _settings("tune.grad_clip=0"), reference)
    _randomise_adapter(tuner.bb, 0.02)
    grads = {}
    original = tuner.optimizer.step
    tuner.optimizer.step = lambda *a, **k: grads.update(
        g=torch.cat([p.grad.flatten().clone() for p in tuner.params])) or original(*a, **k)
    tuner.step()
    return grads["g"]


def test_a_float16_denoiser_gets_float32_quality_adapter_gradients(encoder, reference):
    """The loss is scaled for an fp16 denoiser: its adapter gradient is as close to the fp32 one
    as bf16's (unscaled fp16 loses the small gradients on their way through the UNet)."""
    cos = torch.nn.functional.cosine_similarity
    full = _first_step_gradient(encoder, reference, "float32")
    half = _first_step_gradient(encoder, reference, "float16")
    assert float(cos(half, full, dim=0)) >= 0.97
    assert float((half == 0).float().mean()) <= float((full == 0).float().mean()) + 1e-3  # unscaled: 4% vanish


def test_lcm_tuning_draws_the_step_noise_generation_draws(encoder, reference, tiny_settings):
    """LCM adds noise between steps: tuning takes it from the clip's generator, as the pipeline
    does, so the tuned clip is the generated clip."""
    from pv_animatediff.backbone import make_tiny

    from pvcli.engine.generate import render_latents

    bb = make_tiny({"scheduler": "lcm"})
    add_adapter(bb, "spatial", 4, 4)
    _randomise_adapter(bb, 0.2)
    g = tiny_settings.generate
    g = type(g)(**{**g.__dict__, "frames": 4, "seed": 4, "steps": 4, "guidance_scale": 1.0})
    theirs = render_latents(bb, "sks person", g)
    gen = torch.Generator().manual_seed(4)
    lat = initial_latents(bb, 4, 64, 64, gen)
    torch.manual_seed(123)  # the global generator must not matter
    with torch.no_grad():
        ours = sample(bb, bb.encode_prompt(["sks person"]), None, lat, 4, 1.0, generator=gen).latents
    assert (ours - theirs).abs().max() < 1e-4


def test_the_identity_phrase_is_not_repeated_when_punctuation_follows_it():
    from pvcli.engine.prompts import PROMPTS, with_identity

    assert with_identity("sks, a portrait", "sks person") == "sks, a portrait"
    assert with_identity("tasks at hand", "sks person") == "sks person, tasks at hand"
    assert not any(" a astronaut" in p for p in PROMPTS)


def test_no_augment_with_a_prompts_file_is_refused(encoder, reference, tiny):
    with pytest.raises(PVError, match="no-augment"):
        Tuner(tiny, encoder, _settings("tune.augment=false"), reference, prompts=["{id} juggling"])


def test_a_nan_loss_reaches_the_gradient_sync_so_every_process_stops(encoder, reference):
    """Data parallel: a process whose loss is NaN still joins the all-reduce (its peers would hang
    otherwise), and every process, the finite ones too, stops with the same message."""
    import math

    from pv_animatediff.backbone import make_tiny

    def run(local_nan: bool, peer_nan: bool):
        torch.manual_seed(0)
        tuner = Tuner(make_tiny(), encoder, _settings("tune.no_face=center"), reference)
        synced = []

        def fake_sync(params, contributed, losses, sims):  # this process + one peer, summed
            synced.append(list(losses))
            total = losses + [math.nan if peer_nan else 0.5]
            return contributed + 1, [sum(total) / len(total)], sims

        tuner.grad_sync = fake_sync
        if local_nan:
            embed = tuner.enc.embed
            tuner.enc = type("NaNEncoder", (), {})()
            tuner.enc.detect, tuner.enc.input_size = encoder.detect, encoder.input_size
            tuner.enc.align_matrix = encoder.align_matrix
            tuner.enc.embed = lambda x: embed(x) * math.nan
        with pytest.raises(PVError, match="loss became nan at step 1") as err:
            tuner.step()
        return synced, str(err.value)

    synced, message = run(local_nan=True, peer_nan=False)
    assert len(synced) == 1 and math.isnan(synced[0][0])
    synced_peer, message_peer = run(local_nan=False, peer_nan=True)
    assert len(synced_peer) == 1 and math.isfinite(synced_peer[0][0])
    assert message == message_peer


def test_the_semantic_reward_shares_the_steps_before_the_gate_and_scores_frames_over_the_clip(encoder, reference):
    """SCR's tuned and frozen clips run the steps before the gate once (8 DDIM steps, the last one
    dead, the gate at half: 4 shared + 3 tuned + 3 frozen denoiser calls, not 14), and both clips are
    bit for bit the un-shared trajectories of the same noise; its frames are one from each half of
    the clip, those past tune.supervised_window decoded without gradient."""
    from pv_animatediff.backbone import make_tiny

    s = _settings("adapter.active_fraction=0.5", "tune.num_inference_steps=8", "tune.scr_weight=1",
                  "tune.no_face=skip", "tune.scr_frames=2", "tune.supervised_window=2", "tune.supervised_frames=1")
    torch.manual_seed(0)
    tuner = Tuner(make_tiny(), encoder, s, reference, scorer=FrameBrightness())
    _randomise_adapter(tuner.bb, 0.3)
    calls, decodes = [], []
    predict, decode = tuner.bb.predict_noise, tuner.bb.decode_frames
    tuner.bb.predict_noise = lambda *a, **k: calls.append(1) or predict(*a, **k)
    tuner.bb.decode_frames = lambda lat, idx: decodes.append((lat.detach().clone(), list(idx), lat.requires_grad)) \
        or decode(lat, idx)
    state = tuner.noise.get_state()
    loss, _, scr, _, prompt = tuner._clip_loss(tuner.reference)
    assert len(calls) == 10 and scr > 0
    noise = initial_latents(tuner.bb, 4, 64, 64, torch.Generator().set_state(state))
    with torch.no_grad():
        tuned, frozen = tuner._final(prompt, noise, grad=False), tuner._final(prompt, noise, grad=False, adapter=False)
    live = [d for d in decodes if d[2]]  # under gradient: the supervised frame and the SCR frame in the window
    assert len(live) == 1 and torch.equal(live[0][0], tuned) and max(live[0][1]) < 2
    first, second = next(d[1] for d in decodes if len(d[1]) == 2 and torch.equal(d[0], frozen))
    assert first in (0, 1) and second in (2, 3)  # the frozen clip's SCR frames: one from each half
    assert [d[1] for d in decodes if not d[2] and torch.equal(d[0], tuned)] == [[second]]  # past the window
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in tuner.params if p.grad is not None) > 0
