"""PersonalVideo tuning, version 1: the T2V model samples a short clip from an augmented
prompt, the last steps run under grad, supervised frames are decoded to pixels, faces are
aligned differentiably and `1 - cos(face, reference)` trains the spatial adapter only."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..contracts import Backbone, IdentityEncoder
from ..errors import PVError
from ..settings import Settings
from .adapter import adapter_disabled, add_adapter, trainable_parameters
from .identity import frame_faces
from .prompts import PROMPTS, PromptSampler, identity_phrase
from .sampling import initial_latents, sample


@dataclass
class StepStats:
    step: int
    loss: float | None
    id_sim: float | None
    face_hits: int
    frames: int
    lr: float
    seconds: float
    prompt: str


class PromptEmbeddings:
    """Text embeddings are frozen: compute each prompt once."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompt: str) -> torch.Tensor:
        if prompt not in self.cache:
            self.cache[prompt] = self.backbone.encode_prompt([prompt])
        return self.cache[prompt]


class Tuner:
    def __init__(self, backbone: Backbone, encoder: IdentityEncoder, settings: Settings, reference: torch.Tensor,
                 prompts: list[str] | None = None, on_step: Callable[[StepStats], None] | None = None):
        self.bb, self.enc, self.s = backbone, encoder, settings
        t = settings.tune
        if t.frames > backbone.max_frames:
            raise PVError(f"tune.frames={t.frames} exceeds this backbone's limit of {backbone.max_frames} frames")
        self.reference = F.normalize(reference.float(), dim=0).to(backbone.device)
        self.layers = add_adapter(backbone, settings.adapter.targets, settings.adapter.rank, settings.adapter.alpha)
        self.params = trainable_parameters(backbone.unet)
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        warm = max(1, t.warmup_steps)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: min(1.0, (i + 1) / warm))
        self.phrase = identity_phrase(t.token, t.class_word)
        self.prompts = PromptSampler(prompts or PROMPTS, self.phrase, t.seed)
        self.embeds = PromptEmbeddings(backbone)
        self.uncond = self.embeds("") if t.guidance_scale > 1 else None
        self.frame_rng = random.Random(t.seed + 1)
        self.noise = torch.Generator("cpu").manual_seed(t.seed)
        self.on_step = on_step
        self.step_index = 0

    def _sample_frames(self, prompt: str, generator: torch.Generator, grad: bool) -> torch.Tensor:
        t = self.s.tune
        latents = initial_latents(self.bb, t.frames, t.height, t.width, generator)
        result = sample(self.bb, self.embeds(prompt), self.uncond, latents, t.num_inference_steps, t.guidance_scale,
                        grad_steps=t.grad_steps if grad else 0)
        return result.x0

    def step(self) -> StepStats:
        t = self.s.tune
        start = time.perf_counter()
        prompt = self.prompts()
        self.bb.unet.train()
        x0 = self._sample_frames(prompt, self.noise, grad=True)
        idx = sorted(self.frame_rng.sample(range(t.frames), t.supervised_frames))
        frames = self.bb.decode(x0[:, :, idx])[0]  # (K, 3, H, W)
        faces = frame_faces(frames, self.enc, t.no_face)
        loss_val = sim_val = None
        if len(faces.crops):
            emb = self.enc.embed(faces.crops).float()
            cos = emb @ self.reference
            loss = (1 - cos).mean()
            if not torch.isfinite(loss):
                raise PVError(f"the loss became {loss.item()} at step {self.step_index + 1}",
                              "lower tune.lr or check the backbone's dtype")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
            self.optimizer.step()
            loss_val, sim_val = float(loss.detach()), float(cos.detach().mean())
        self.lr_schedule.step()
        self.bb.unet.eval()
        self.step_index += 1
        stats = StepStats(self.step_index, loss_val, sim_val, faces.hits, faces.total,
                          self.optimizer.param_groups[0]["lr"], time.perf_counter() - start, prompt)
        if self.on_step:
            self.on_step(stats)
        return stats

    def run(self) -> list[StepStats]:
        return [self.step() for _ in range(self.s.tune.steps)]

    @torch.no_grad()
    def held_out_similarity(self, seeds: list[int], prompt: str | None = None, adapter: bool = True) -> float:
        """Mean ID similarity of the supervised-style crops of clips from seeds never used in tuning."""
        prompt = prompt or self.prompts.prompts[0]
        sims = []
        ctx = adapter_disabled(self.bb.unet) if not adapter else nullcontext()
        with ctx:
            for seed in seeds:
                x0 = self._sample_frames(prompt, torch.Generator("cpu").manual_seed(seed), grad=False)
                faces = frame_faces(self.bb.decode(x0)[0], self.enc, self.s.tune.no_face)
                if len(faces.crops):
                    sims.append(float((self.enc.embed(faces.crops).float() @ self.reference).mean()))
        return sum(sims) / len(sims) if sims else math.nan
