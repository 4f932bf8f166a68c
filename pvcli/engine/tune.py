"""PersonalVideo tuning: the T2V model samples a short clip from an augmented prompt, the
adapter acts only in the last fraction of denoising steps, the adapted tail runs under grad,
supervised frames are decoded to pixels, faces are aligned differentiably and
`1 - cos(face, reference)` (plus the optional Semantic Consistency Reward) trains the spatial
adapter only. The tuner's full state (adapter, optimizer, schedule, every RNG) checkpoints and
resumes exactly."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..contracts import Backbone, FrameScorer, IdentityEncoder
from ..errors import PVError
from ..settings import Settings
from .adapter import (
    ADAPTER_NAME,
    adapter_disabled,
    adapter_state_dict,
    add_adapter,
    load_adapter_state_dict,
    set_adapter_scale,
    trainable_parameters,
)
from .face_crops import (
    FrameFaces,
    ReferenceFace,
    detect_faces,
    embed_crops,
    face_window,
    frame_faces,
    jittered_crops,
    mean_embedding,
    window_faces,
)
from .offload import offload_blocks, text_encoders_off, text_encoders_on
from .prompts import PROMPTS, PromptSampler, identity_phrase
from .sampling import (
    adapted_steps,
    adapter_free_prefix,
    final_step_is_identity,
    gate_level,
    grad_window,
    initial_latents,
    sample,
)


@dataclass
class StepStats:
    step: int
    loss: float | None
    id_sim: float | None
    scr: float | None
    face_hits: int
    frames: int
    lr: float
    seconds: float
    prompt: str


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _denoiser_dtype(backbone: Backbone) -> torch.dtype:
    """The dtype the denoiser's frozen weights compute in (the adapter itself trains in fp32)."""
    return next((p.dtype for n, p in backbone.denoiser.named_parameters() if ADAPTER_NAME not in n), torch.float32)


def _check_parts_learn(backbone: Backbone, steps: int, adapter_steps: int, grad_steps: int, dead_final: bool) -> None:
    """An adapter of several parts (`describe()["adapter_parts"]`, e.g. one per expert) must have each
    part that acts (inside the gate) act in a step under gradient too, else it would change every clip
    and never learn: refused in one line, naming the tune.grad_steps that reaches it."""
    import json

    parts = json.loads(backbone.describe().get("adapter_parts") or "{}")
    if len(parts) < 2:
        return
    probe = backbone.new_scheduler()
    probe.set_timesteps(steps, device="cpu")
    timesteps = list(probe.timesteps)
    first_grad = grad_window(len(timesteps), grad_steps, dead_final)
    adapted = range(len(timesteps) - adapter_steps, len(timesteps))
    for prefix, label in parts.items():
        acting = [i for i in adapted if backbone.adapter_part_at(timesteps[i]) == prefix]
        if acting and acting[-1] < first_grad:
            need = len(timesteps) - int(dead_final) - acting[-1]
            raise PVError(f"the adapter on the {label} acts in steps {acting[0] + 1}-{acting[-1] + 1} of {steps} but "
                          f"none of them is under gradient (tune.grad_steps={grad_steps}, the last steps): it would "
                          "change every clip and never learn",
                          f"raise tune.grad_steps to {need}, or narrow the gate (adapter.active_fraction) below it")


class PromptEmbeddings:
    """Text embeddings are frozen: compute each prompt once. After `offload`, the text encoders
    wait on the host and come back only for a prompt that is not embedded yet."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.cache: dict[str, torch.Tensor] = {}
        self.offloaded = False

    def __call__(self, prompt: str) -> torch.Tensor:
        if prompt not in self.cache:
            with text_encoders_on(self.backbone) if self.offloaded else nullcontext():
                self.cache[prompt] = self.backbone.encode_prompt([prompt])
        return self.cache[prompt]

    def offload(self, prompts: list[str]) -> None:
        """Embed `prompts` now, then move the text encoders to the host."""
        for prompt in prompts:
            self(prompt)
        text_encoders_off(self.backbone)
        self.offloaded = True


def tuning_prompts(settings: Settings, extra: list[str] | None) -> list[str]:
    t = settings.tune
    if not t.augment:
        if extra:
            raise PVError("--no-augment tunes on one fixed prompt and would ignore the prompts file",
                          "drop --no-augment to tune on the file's prompts (a file of one prompt is a fixed prompt)")
        return ["a photo of {id}"]
    if extra and t.prompts_mode == "replace":
        return extra
    return PROMPTS + (extra or [])


def scr_loss(tuned_scores: torch.Tensor, frozen_scores: torch.Tensor) -> torch.Tensor:
    """KL(softmax(tuned) || softmax(frozen)) over the frames of one clip."""
    log_p = F.log_softmax(tuned_scores.double(), dim=0)  # float64: a KL near 0 stays >= 0
    log_q = F.log_softmax(frozen_scores.detach().double(), dim=0)
    return (log_p.exp() * (log_p - log_q)).sum().float()


def _optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise PVError("tune.optimizer=adamw8bit needs bitsandbytes", "pip install bitsandbytes, or use adamw") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class TrajectoryPool:
    """`tune.trajectory_pool`: N fixed (prompt, noise) pairs, drawn once from the tune seed (and
    the process's rank). The adapter-free, no-grad early steps of a pair's trajectory do not
    depend on the adapter, so they are computed at the pair's first use and kept; later clips
    of that pair run only the adapted tail. The scheduler is kept with the latents (a multistep
    solver such as UniPC steps on the history of the earlier steps), so
    the tail is the full trajectory's. Which pair a clip uses comes from the tuner's checkpointed
    noise generator, so resume stays exact (the kept latents are recomputed)."""

    def __init__(self, tuner: Tuner, rank: int):
        t = tuner.s.tune
        self.tuner = tuner
        self.start = tuner.prefix
        if not self.start:
            raise PVError("tune.trajectory_pool reuses the adapter-free early steps, and these settings have none",
                          "set adapter.active_fraction below 1, or tune.trajectory_pool=0")
        seed = t.seed + 7919 * rank + 3
        rng = random.Random(seed)
        self.pairs = [(rng.choice(tuner.prompts.prompts), seed * 100003 + i) for i in range(t.trajectory_pool)]
        self.kept: dict[int, tuple[torch.Tensor, object]] = {}

    def draw(self, generator: torch.Generator) -> tuple[str, torch.Tensor, int]:
        """(prompt, latents after the adapter-free steps, how many steps those are)."""
        return self.draw_resumable(generator)[:3]

    def draw_resumable(self, generator: torch.Generator) -> tuple[str, torch.Tensor, int, object]:
        """`draw`, and the scheduler as the adapter-free steps left it (step copies of it, never it)."""
        i = int(torch.randint(len(self.pairs), (1,), generator=generator))
        prompt, seed = self.pairs[i]
        if i not in self.kept:
            tu, t = self.tuner, self.tuner.s.tune
            pair = torch.Generator("cpu").manual_seed(seed)  # the pair's noise, and any noise its steps add
            noise = initial_latents(tu.bb, t.frames, t.height, t.width, pair)
            with torch.no_grad():
                head = sample(tu.bb, tu.embeds(prompt), tu.uncond, noise, t.num_inference_steps, t.guidance_scale,
                              adapter_steps=tu.adapter_steps, stop=self.start, generator=pair,
                              guidance_scale_2=t.guidance_scale_2)
            self.kept[i] = head.latents, head.scheduler
        latents, scheduler = self.kept[i]
        return prompt, latents, self.start, scheduler


class ClipLoss(torch.nn.Module):
    """One clip's loss as a module whose parameters are the adapter's alone (the frozen model is
    the tuner's, not the module's): what data parallel wraps in DDP, which then averages the
    adapter's gradients across processes in backward."""

    def __init__(self, tuner: Tuner):
        super().__init__()
        self.adapter = torch.nn.ParameterList(tuner.params)  # the same Parameter objects
        self.tuner = tuner

    def forward(self, reference: torch.Tensor):
        return self.tuner._clip_loss(reference)


class Tuner:
    def __init__(self, backbone: Backbone, encoder: IdentityEncoder, settings: Settings,
                 reference: torch.Tensor | list[ReferenceFace], prompts: list[str] | None = None,
                 scorer: FrameScorer | None = None, on_step: Callable[[StepStats], None] | None = None,
                 rank: int = 0):
        self.bb, self.enc, self.s = backbone, encoder, settings
        t = settings.tune
        if t.frames > backbone.max_frames:
            raise PVError(f"tune.frames={t.frames} exceeds this backbone's limit of {backbone.max_frames} frames")
        backbone.check_frames(t.frames, "tune.frames")
        if t.scr_weight > 0 and scorer is None:
            raise PVError("tune.scr_weight > 0 needs a scorer")
        if t.scr_weight > 0 and t.scr_frames > t.frames:
            raise PVError(f"tune.scr_frames={t.scr_frames} exceeds tune.frames={t.frames}",
                          "the Semantic Consistency Reward compares a softmax over that many frames of each clip")
        self.refs = reference if isinstance(reference, list) else None
        fixed = mean_embedding(embed_crops(encoder, [r.crop for r in self.refs])) if self.refs else reference
        self.reference = F.normalize(fixed.float(), dim=0).to(backbone.device)
        self.layers = add_adapter(backbone, settings.adapter.targets, settings.adapter.rank, settings.adapter.alpha,
                                  seed=settings.tune.seed)
        if t.gradient_checkpointing:
            backbone.enable_gradient_checkpointing()
        if t.decoder_checkpointing:
            backbone.enable_decoder_checkpointing()
        self.params = trainable_parameters(backbone.adapted)
        self.optimizer = _optimizer(t.optimizer, self.params, t.lr, t.weight_decay)
        warm = max(1, t.warmup_steps)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: min(1.0, (i + 1) / warm))
        self.adapter_steps = adapted_steps(t.num_inference_steps, settings.adapter.active_fraction)
        # the noise level where the adapter turns on (the paper's rule picks it on the tuning
        # schedule): the identity records it and generation gates by it, whatever its schedule
        self.gate = gate_level(backbone.scheduler, t.num_inference_steps, self.adapter_steps)
        # a final step that returns its input (DDIM at t=0) is not run and carries no gradient
        self.dead_final = final_step_is_identity(backbone.scheduler, t.num_inference_steps)
        live = self.adapter_steps - int(self.dead_final)
        if live < 1:
            raise PVError(f"with {t.num_inference_steps} sampling steps and adapter.active_fraction="
                          f"{settings.adapter.active_fraction:g} the adapter acts only in the sampler's last step, "
                          "which returns its input unchanged: nothing can be learned",
                          "raise adapter.active_fraction or tune.num_inference_steps")
        self.grad_steps = min(t.grad_steps, live)  # un-adapted steps carry no adapter gradient
        _check_parts_learn(backbone, t.num_inference_steps, self.adapter_steps, self.grad_steps, self.dead_final)
        self.phrase = identity_phrase(t.token, t.class_word)
        self.rank = rank
        self.prompts = PromptSampler(tuning_prompts(settings, prompts), self.phrase, t.seed)
        self.embeds = PromptEmbeddings(backbone)
        # the negative prompt generation guides with (generate.negative_prompt): the adapter learns
        # on the trajectories it will be used on
        # (a guidance-distilled backbone takes the scale as an input and never reads one: none encoded)
        cfg = t.guidance_scale > 1 and not getattr(backbone, "embedded_guidance", False)
        self.uncond = self.embeds(settings.generate.negative_prompt) if cfg else None
        if t.offload_text_encoder == "always" or (t.offload_text_encoder == "auto" and backbone.device.type != "cpu"):
            self.embeds.offload(self.prompts.prompts)  # the pool (the held-out measure uses its first prompt)
        backbone.place_denoiser()  # a backbone that loaded it on the host: only now beside the step's memory
        if t.offload == "blocks":
            offload_blocks(backbone)
        # fp16 denoiser: gradients below fp16's range vanish on their way to the fp32 adapter unless
        # the loss is scaled (steps whose gradients overflow are skipped and the scale lowered)
        self.scaler = torch.amp.GradScaler(backbone.device.type, init_scale=2.0**12,
                                           enabled=_denoiser_dtype(backbone) == torch.float16)
        # the first steps, run without the adapter and without grad: the same for any adapter (the
        # trajectory pool keeps them; the SCR's tuned and frozen clips share them)
        self.prefix = adapter_free_prefix(t.num_inference_steps, self.adapter_steps, self.grad_steps, self.dead_final)
        self.pool = TrajectoryPool(self, rank) if t.trajectory_pool else None
        self.scorer = scorer
        self.frame_rng = random.Random(t.seed + 1)
        self.aug_rng = np.random.default_rng(t.seed + 2)
        self.noise = torch.Generator("cpu").manual_seed(t.seed)
        if rank:  # a data-parallel replica: its own prompts, noise and frames
            self.reseed(0)
        self.on_step = on_step
        self.step_index = 0
        # data parallel (distributed.DataParallel.attach): clips run through `clip` (DDP over the
        # adapter, which averages gradients over `replicas` processes in backward), all but a step's
        # last clip under `accumulating` (no reduction); `grad_sync`: (params, clips with a loss,
        # losses, sims) -> the same, summed over processes
        self.clip: Callable = self._clip_loss
        self.replicas = 1
        self.accumulating: Callable = nullcontext
        self.grad_sync: Callable | None = None

    def clip_module(self) -> ClipLoss:
        """One clip's loss as a module over the adapter's parameters (what data parallel wraps in DDP)."""
        return ClipLoss(self)

    # ------------------------------------------------------------------ sampling
    def _final(self, prompt: str, latents: torch.Tensor, grad: bool, adapter: bool = True, start: int = 0,
               generator: torch.Generator | None = None, scheduler=None, at: int | None = None) -> torch.Tensor:
        """The clip's final latents, what generation decodes (from noise, or from `start` with a copy
        of `scheduler`, the scheduler as the first `start` steps left it); given `at`, the predicted
        clean sample of step `at` instead (the trajectory stops there)."""
        t = self.s.tune
        ctx = nullcontext() if adapter else adapter_disabled(self.bb.adapted)
        resumed = copy.deepcopy(scheduler) if scheduler is not None else None
        end = None if at is None else at + 1
        with ctx:
            out = sample(self.bb, self.embeds(prompt), self.uncond, latents, t.num_inference_steps, t.guidance_scale,
                         grad_steps=self.grad_steps if grad else 0, adapter_steps=self.adapter_steps, start=start,
                         generator=generator, scheduler=resumed, stop=end, grad_end=end,
                         guidance_scale_2=t.guidance_scale_2)
        return out.latents if at is None else out.x0

    def _supervised_step(self) -> int | None:
        """tune.supervise_at=random: a step drawn inside the open gate among those that change the
        sample, whose predicted clean sample the losses read; None (last): the final sample."""
        if self.s.tune.supervise_at == "last":
            return None
        n = self.s.tune.num_inference_steps
        return self.frame_rng.randint(n - self.adapter_steps, n - 1 - int(self.dead_final))

    def _step_reference(self) -> torch.Tensor:
        if not (self.refs and self.s.tune.reference_augment):
            return self.reference
        with torch.no_grad():
            emb = self.enc.embed(jittered_crops(self.refs, self.enc, self.aug_rng)).float()
        return F.normalize(emb.mean(0), dim=0).to(self.bb.device)

    def _clip_loss(self, reference: torch.Tensor):
        """Sample one clip from an augmented prompt and return (loss or None, id_sim, scr, faces, prompt).
        A non-finite loss is returned as is (the caller stops every process on it)."""
        t = self.s.tune
        scr_on = t.scr_weight > 0
        if self.pool:
            prompt, latents, start, resume = self.pool.draw_resumable(self.noise)
        else:
            prompt, start, resume = self.prompts(), 0, None
            latents = initial_latents(self.bb, t.frames, t.height, t.width, self.noise)
            if scr_on and self.prefix:  # the steps before the gate opens: the same in both SCR branches, run once
                with torch.no_grad():
                    head = sample(self.bb, self.embeds(prompt), self.uncond, latents, t.num_inference_steps,
                                  t.guidance_scale, adapter_steps=self.adapter_steps, stop=self.prefix,
                                  generator=self.noise, guidance_scale_2=t.guidance_scale_2)
                latents, start, resume = head.latents, self.prefix, head.scheduler
        window = range(t.supervised_window or t.frames)  # the frames the losses may decode under gradient
        idx = sorted(self.frame_rng.sample(window, t.supervised_frames))
        scr_idx = self._scr_frames() if scr_on else []
        at = self._supervised_step()
        scr_live = [f for f in scr_idx if f in window]  # SCR frames decoded under gradient; the rest without
        faces_only = t.face_decode == "faces"
        # the frames decoded under gradient: only those a loss reads (faces: only the SCR's, whole)
        decoded_idx = sorted(set(scr_live) if faces_only else set(idx) | set(scr_live))
        noise_state = self.noise.get_state()  # the frozen clip draws the same step noise (LCM)
        final = self._final(prompt, latents, grad=True, start=start, generator=self.noise, scheduler=resume, at=at)
        decoded = self._decode(final, decoded_idx) if decoded_idx else None  # (K, 3, H, W)
        row = {f: k for k, f in enumerate(decoded_idx)}
        if faces_only:
            faces = self._window_faces(final, idx)
        else:
            faces = frame_faces(decoded[[row[i] for i in idx]], self.enc, t.no_face)
        sim_val = scr_val = None
        losses = []
        if len(faces.crops):
            cos = self.enc.embed(faces.crops).float() @ reference
            losses.append((1 - cos).mean())
            sim_val = float(cos.detach().mean())
        if scr_on:
            with torch.no_grad():
                same_noise = torch.Generator("cpu").set_state(noise_state)
                frozen_final = self._final(prompt, latents, grad=False, adapter=False, start=start,
                                           generator=same_noise, scheduler=resume, at=at)
                frozen_scores = self.scorer.score(self.bb.decode_frames(frozen_final, scr_idx)[0], prompt)
                far = [f for f in scr_idx if f not in row]
                far_frames = self.bb.decode_frames(final.detach(), far)[0].float() if far else None
            frames = torch.stack([decoded[row[f]] if f in row else far_frames[far.index(f)] for f in scr_idx])
            scr = scr_loss(self.scorer.score(frames, prompt), frozen_scores)
            losses.append(t.scr_weight * scr)
            scr_val = float(scr.detach())
        return (sum(losses) if losses else None), sim_val, scr_val, faces, prompt

    def _scr_frames(self) -> list[int]:
        """The frames the Semantic Consistency Reward scores: tune.scr_frames of them spread over the
        whole clip, one drawn from each of as many equal parts of it."""
        t = self.s.tune
        bounds = [k * t.frames // t.scr_frames for k in range(t.scr_frames + 1)]
        return [self.frame_rng.randrange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _decode(self, latents: torch.Tensor, indices: list[int], box=None) -> torch.Tensor:
        """Frames `indices` of the clip decoded under gradient (only the latent window `box` if given),
        (K, 3, H, W), in tune.decode_dtype."""
        dtype = self.s.tune.decode_dtype
        ctx = torch.autocast(self.bb.device.type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
        with ctx:
            out = self.bb.decode_frames(latents, indices) if box is None else self.bb.decode_window(latents, indices, box)
        return out[0].float()

    def _window_faces(self, final: torch.Tensor, idx: list[int]) -> FrameFaces:
        """tune.face_decode=faces: find the faces on a decode without gradient, then decode under
        gradient only the latent window around them (plus tune.face_margin) and crop them from it."""
        t = self.s.tune
        with torch.no_grad():
            seen = self.bb.decode_frames(final.detach(), idx)[0]
        keep, mats, hits = detect_faces(seen, self.enc, t.no_face)
        size = self.enc.input_size
        if not keep:
            return FrameFaces(seen.new_zeros((0, 3, size, size)), hits, len(idx))
        scale = self.bb.vae_scale_factor
        margin = self.bb.window_margin if t.face_margin < 0 else t.face_margin
        box = face_window(mats, size, scale, margin, tuple(final.shape[-2:]))
        frames = self._decode(final, [idx[k] for k in keep], box)
        return window_faces(frames, keep, mats, hits, len(idx), box, scale, self.enc)

    def _keep_frozen(self) -> None:
        """Everything but the adapter stays frozen, whatever ran in between (a long progress sample
        rebuilds motion blocks with trainable weights, say)."""
        adapter = {id(p) for p in self.params}
        for p in self.bb.adapted.parameters():
            if p.requires_grad and id(p) not in adapter:
                p.requires_grad_(False)

    def step(self) -> StepStats:
        """One optimizer step over tune.clips_per_step clips (gradients accumulated), averaged with
        the other processes' when data-parallel (`grad_sync`)."""
        t = self.s.tune
        start = time.perf_counter()
        self._keep_frozen()
        reference = self._step_reference()
        self.bb.adapted.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, sims, scrs, prompts, hits, total = [], [], [], [], 0, 0
        for i in range(t.clips_per_step):
            with self.accumulating() if i < t.clips_per_step - 1 else nullcontext():
                loss, sim, scr, faces, prompt = self.clip(reference)
                prompts.append(prompt)
                hits, total = hits + faces.hits, total + faces.total
                if sim is not None:
                    sims.append(sim)
                if scr is not None:
                    scrs.append(scr)
                if loss is not None:  # a non-finite loss: no backward; every process learns of it in the sync below
                    finite = bool(torch.isfinite(loss))
                    losses.append(float(loss.detach()) if finite else float("nan"))
                    loss = loss if finite else None
                self._backward(loss, t.clips_per_step)  # one clip's graph at a time: memory of one clip
        contributed = len(losses)
        if self.grad_sync is not None:  # data parallel: the clip statistics of every process
            contributed, losses, sims = self.grad_sync(self.params, contributed, losses, sims)
        if not all(math.isfinite(x) for x in losses):
            bad = "nan" if any(math.isnan(x) for x in losses) else "inf"
            raise PVError(f"the loss became {bad} at step {self.step_index + 1}",
                          "lower tune.lr or check the backbone's dtype; the last good checkpoint is kept")
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        if contributed:
            for p in self.params:
                if p.grad is not None:
                    # the mean over clips that had a loss (DDP averaged over processes, clips or not)
                    p.grad.mul_(t.clips_per_step * self.replicas / contributed)
            self.scaler.unscale_(self.optimizer)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped if an fp16 gradient overflowed
            self.scaler.update()
            if not self.scaler.is_enabled() or self.scaler.get_scale() >= scale:
                self.lr_schedule.step()  # the schedule counts optimizer steps taken
        self.bb.adapted.eval()
        self.step_index += 1
        stats = StepStats(self.step_index, _mean(losses), _mean(sims), _mean(scrs), hits, total,
                          lr, time.perf_counter() - start, " | ".join(prompts))
        if self.on_step:
            self.on_step(stats)
        return stats

    def _backward(self, loss: torch.Tensor | None, clips: int) -> None:
        """Backward of one clip's loss. Data parallel: every process runs it for every clip, over
        every adapter parameter (a zero where its clip had no loss or a non-finite one), so DDP's
        reduction, which waits for all of them on all processes, never hangs."""
        if self.replicas > 1:
            joined = sum(p.sum() for p in self.params) * 0.0
            loss = joined if loss is None else loss + joined
        if loss is not None:
            self.scaler.scale(loss / clips).backward()

    def run(self) -> list[StepStats]:
        return [self.step() for _ in range(self.step_index, self.s.tune.steps)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "step": self.step_index, "adapter": adapter_state_dict(self.bb.adapted),
            "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
            "noise": self.noise.get_state(), "prompts": self.prompts.state(), "frames": self.frame_rng.getstate(),
            "augment": self.aug_rng.bit_generator.state, "torch": torch.get_rng_state(),
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
        }

    def load_state_dict(self, state: dict, rng: bool = True) -> None:
        """Restore a checkpoint; `rng=False` (a data-parallel replica) re-derives its own random
        streams for the checkpoint's step instead of taking the main process's."""
        load_adapter_state_dict(self.bb.adapted, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step_index = int(state["step"])
        if self.scaler.is_enabled() and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        if not rng:
            self.reseed(self.step_index)
            return
        self.noise.set_state(state["noise"])
        self.prompts.set_state(state["prompts"])
        self.frame_rng.setstate(state["frames"])
        self.aug_rng.bit_generator.state = state["augment"]
        torch.set_rng_state(state["torch"])

    def reseed(self, step: int) -> None:
        """Random streams for this rank from `step` on, independent of the other ranks'."""
        seed = self.s.tune.seed + 7919 * self.rank + 104729 * step
        self.prompts.rng.seed(seed)
        self.frame_rng.seed(seed + 1)
        self.aug_rng = np.random.default_rng(seed + 2)
        self.noise.manual_seed(seed)

    # ------------------------------------------------------------------ measurement
    def held_out_size(self) -> dict:
        """The clip size the held-out measure renders: generation's (generate.*), not tuning's."""
        g = self.s.generate
        return {"frames": g.frames, "height": g.height, "width": g.width, "steps": g.steps}

    @torch.no_grad()
    def held_out_similarity(self, seeds: list[int], prompt: str | None = None, adapter: bool = True) -> float:
        """Mean ID similarity (to the fixed reference) of clips from seeds never used in tuning,
        rendered as `pv generate` renders the identity: generation's pipeline at the generate
        settings (frames, size, steps, guidance, negative prompt, long-clip windows), the adapter
        at generate.adapter_scale in the steps at or below the tuned gate's noise level (or off:
        `adapter=False`), every frame of each clip scored."""
        from dataclasses import replace

        from ..contracts import GenerationPlan
        from .generate import render_latents

        prompt = prompt or self.prompts.prompts[0]
        g = self.s.generate
        sims = []
        # the pipeline encodes its prompts itself: offloaded text encoders come back for the clips
        with text_encoders_on(self.bb) if self.embeds.offloaded else nullcontext():
            try:
                for seed in seeds:
                    plan = GenerationPlan(g.frames, g.height, g.width, context_length=g.context_length,
                                          context_stride=g.context_stride)
                    final = render_latents(self.bb, prompt, replace(g, seed=seed), plan=plan, gate=self.gate,
                                           adapter_scale=g.adapter_scale if adapter else 0.0)
                    faces = frame_faces(self.bb.decode(final)[0], self.enc, self.s.tune.no_face)
                    if len(faces.crops):
                        sims.append(float((self.enc.embed(faces.crops).float() @ self.reference).mean()))
            finally:
                set_adapter_scale(self.bb.denoiser, 1.0)  # tuning samples with the adapter at its own scale
        return sum(sims) / len(sims) if sims else math.nan
