"""What the engine needs from plugins. The engine knows nothing else about any backbone or
face model: a third-party plugin implements these and registers a factory through a hook.

Every factory is called as `factory(options=dict, device=str)` and raises `PVError` for bad
options or missing weights. An encoder factory whose encoders are not differentiable carries
`factory.differentiable = False` (see IdentityEncoder.differentiable), so that pv can refuse to tune
with it before any model loads. An encoder factory may carry `factory.network()`, returning its face
network at real size on the meta device and its input side, `(module, size)`: the memory trace
runs it on the step's face crops (without it the trace leaves the face network out and says so).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep torch out of `pv --help`
    import numpy as np
    import torch

    from .faces import Face


Conditioning = Any  # a tensor, or a mapping of name -> batch-first tensor (see Backbone.encode_prompt)


def latent_frame_rule(factor: int, family: str) -> Callable[[int, str], None]:
    """A backbone's `frames=` rule (see `register_backbones`) for a VAE that keeps the first frame
    and folds every `factor` frames after it into one latent frame: clips of k * factor + 1 frames."""

    def check(frames: int, flag: str) -> None:
        if (frames - 1) % factor:
            from .errors import PVError

            near = (frames - 1) // factor * factor + 1
            raise PVError(f"{flag} {frames}: {family} renders {factor}k+1 frames (its VAE turns {factor} frames into "
                          "one latent frame)", f"use {near} or {near + factor}")

    return check


class Backbone(ABC):
    """A latent text-to-video diffusion model whose frame-wise layers take the identity adapter.

    Attributes the engine reads:
      name: registered name; denoiser: the network the adapter is injected into (a UNet, a
      diffusion transformer; `unet` is its pv 0.1 name); scheduler: a diffusers-style scheduler
      (set_timesteps / timesteps / step, and init_noise_sigma / scale_model_input where it has
      them: epsilon, v-prediction and flow-matching schedulers all fit); device; latent_channels;
      vae_scale_factor (spatial); max_frames (the motion window, in pixel frames); long_videos
      (whether generation can go past it).
    """

    name: str
    denoiser: torch.nn.Module
    component: str = "unet"  # the denoiser's name as a diffusers pipeline component (LoRA key prefix)
    # the add-on kinds pipeline_call takes: ControlNet maps (GenerationPlan.controls), a source
    # clip (GenerationPlan.video), LoRA files (load_lora); conditioners refuse the others in one line
    accepts: frozenset = frozenset({"controlnet", "video", "lora"})
    scheduler: object
    device: torch.device
    latent_channels: int
    vae_scale_factor: int
    # latent pixels decode_window needs beyond what a loss reads (the decoder's receptive field there)
    window_margin: int = 8
    max_frames: int  # the motion module's window
    long_videos: bool = False  # whether pipeline_call renders plan.frames > max_frames (sliding windows)
    # decode_frames decodes only the latent frames up to the last frame asked (a decoder causal in
    # time): tune.supervised_window then bounds what a tuning step decodes under gradient
    causal_decoder: bool = False
    random_weights: bool = False  # built in-process for offline runs and tests: it never draws a face
    # a guidance-distilled model takes the guidance scale as an input (embedded guidance) instead of
    # classifier-free guidance: pv's sampler then runs no unconditional branch and calls
    # predict_noise(latents, t, embeds, guidance=scale); pipeline_call gets the same scale
    embedded_guidance: bool = False

    @property
    def unet(self) -> torch.nn.Module:
        """pv 0.1's name for `denoiser`, kept for backbones and code written against it."""
        return self.denoiser

    @unet.setter
    def unet(self, module: torch.nn.Module) -> None:
        self.denoiser = module

    @property
    def adapted(self) -> torch.nn.Module:
        """The module that holds the identity adapter's layers: the adapter is injected into it, and
        its adapter state dict, gating and scale are the identity's. Default: the denoiser. A model of
        several denoisers that all take the adapter (two experts split by noise level) returns a
        container whose children are those denoisers: their child names prefix the adapter's keys,
        `adapter_targets` matches under them, and `describe()["adapter_parts"]` names them."""
        return self.denoiser

    def adapter_part_at(self, t) -> str:
        """Which part of an adapter of several parts (`adapted`'s child name, a key prefix of
        `describe()["adapter_parts"]`) acts at timestep t: tuning refuses a part that acts in no step
        under gradient (it would never learn). Default: "" (one part, the denoiser)."""
        return ""

    def guidance_at(self, t, guidance_scale: float, guidance_scale_2: float = 0.0) -> float:
        """The classifier-free guidance scale of the denoiser call at timestep t: the one rule pv's
        sampler (tuning) and `pipeline_call` (generation, `GenerationPlan.guidance_scale_2`) follow.
        `guidance_scale_2` (tune/generate.guidance_scale_2; 0: unset) is a second expert's: a model of
        two denoisers split by noise level returns it on its second (diffusers' `guidance_scale_2`,
        the low-noise expert's). Default: one denoiser, `guidance_scale` at every t; a second scale is
        refused in one line (it would be ignored)."""
        if guidance_scale_2:
            from .errors import PVError

            raise PVError(f"guidance_scale_2 {guidance_scale_2:g}: backbone {self.name!r} has one denoiser, "
                          "so one guidance scale", "set tune.guidance_scale_2 and generate.guidance_scale_2 to 0")
        return guidance_scale

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Identifying metadata stored with an adapter: `backbone` (the registered name), base model
        ids (`base_model`, ...), and optionally `base_model_version` / `architecture`, the names
        kohya-format LoRA readers use for the base family (ss_base_model_version, modelspec architecture),
        which `pv export --format kohya` writes into the file's header. `expert`: which denoiser of
        several the adapter is on (an export's file name and metadata say it); `adapter_parts`: when the
        adapter spans several denoisers (`adapted`), JSON {key prefix: expert} (e.g.
        {"transformer.": "high-noise (transformer)", ...}): pv export writes one file per part."""

    target_sets: dict[str, str] = {}  # adapter target set name -> full-match regex over denoiser module names

    def adapter_targets(self, targets: str) -> str:
        """A full-match regex over `denoiser.named_modules()` names for the adapter target set
        `attention` (attention projections of the frame-wise layers) or `spatial` (all frame-wise
        layers). Default: looked up in `target_sets`; an unknown name is one line."""
        from .errors import PVError

        if targets not in self.target_sets:
            raise PVError(f"unknown adapter target set {targets!r}", f"choose {', '.join(self.target_sets)}")
        return self.target_sets[targets]

    # the last name part of the denoiser's modules that mix frames (motion modules, a video
    # transformer's self-attention): frozen, and never touched by the adapter
    frame_mixing: str = ""
    # the frozen modules beside the denoiser, by attribute name (text encoders, VAE)
    frozen_parts: tuple[str, ...] = ("text_encoder", "vae")
    # the text encoders among them: tuning embeds its prompt pool once, then moves these off the
    # accelerator (tune.offload_text_encoder) until something needs to encode a new prompt
    text_encoders: tuple[str, ...] = ("text_encoder",)

    def protected_modules(self) -> dict[str, torch.nn.Module]:
        """Modules that must stay bit-identical, by name: the denoiser's frame-mixing modules and
        the `frozen_parts`."""
        mixing = {n: m for n, m in self.denoiser.named_modules() if n.rsplit(".", 1)[-1] == self.frame_mixing}
        return {**mixing, **{part: getattr(self, part) for part in self.frozen_parts}}

    def protected_pattern(self) -> str:
        """A regex matching denoiser module names the adapter must never touch (`frame_mixing`)."""
        import re

        return rf"(^|\.){re.escape(self.frame_mixing)}(\.|$)"

    @abstractmethod
    def encode_prompt(self, prompts: list[str]) -> Conditioning:
        """The text conditioning of a batch of prompts: one tensor (B, ...) or, for families that
        condition on more than one embedding (pooled embeddings, size/crop ids), a mapping of
        name -> tensor, every value batch-first. The engine only batches it (`cat_conditioning`)
        and hands it back to `predict_noise`."""

    @abstractmethod
    def predict_noise(self, latents: torch.Tensor, t, embeds: Conditioning) -> torch.Tensor:
        """The denoiser's output for latents (B, C, F', h, w) at timestep t, under the
        conditioning `encode_prompt` made (batched to B), in the parametrization its scheduler
        steps with (noise for epsilon models, velocity for v-prediction and flow matching). A
        backbone with `embedded_guidance` also takes `guidance=` (the guidance scale)."""

    def cat_conditioning(self, items: list[Conditioning]) -> Conditioning:
        """Several conditionings batched into one, in order (classifier-free guidance puts the
        unconditional one first)."""
        import torch

        if isinstance(items[0], dict):
            return {k: torch.cat([c[k] for c in items]) for k in items[0]}
        return torch.cat(items)

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiably decode latents (B, C, F', h, w) into frames (B, F, 3, H, W) in [0, 1]."""

    def decode_frames(self, latents: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Differentiably decode only pixel frames `indices` (B, K, 3, H, W): what a loss reads.
        Default: each latent frame decodes to one pixel frame, alone. A VAE that compresses time
        decodes what those frames need and picks them."""
        return self.decode(latents[:, :, list(indices)])

    def decode_window(self, latents: torch.Tensor, indices: list[int], box: tuple[int, int, int, int]) -> torch.Tensor:
        """Differentiably decode pixel frames `indices` of only the latent window `box` = (y0, y1, x0, x1)
        (latent pixels, end exclusive): (B, K, 3, (y1 - y0) * s, (x1 - x0) * s) with s = vae_scale_factor,
        pixel (0, 0) of the result at pixel (y0 * s, x0 * s) of the whole frame (`tune.face_decode=faces`
        puts the face network on it). Approximate near the window's edges (the decoder's convolutions see
        zeros past them, a spatial attention sees only the window): the engine widens the window by
        `window_margin` latent pixels (tune.face_margin overrides it). Default: `decode_frames` of the cropped
        latents."""
        y0, y1, x0, x1 = box
        return self.decode_frames(latents[..., y0:y1, x0:x1], indices)

    def latent_frames(self, frames: int) -> int:
        """Latent frames F' of a clip of `frames` pixel frames (1:1 unless the VAE compresses time)."""
        return frames

    def check_frames(self, frames: int, flag: str = "--frames") -> None:
        """Refuse, in one line naming `flag`, a frame count the family cannot render (beyond the
        engine's max_frames check: a VAE that folds 4 frames into one latent frame renders 4k+1,
        say). Default: every count fits."""
        return None

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward instead of keeping them (`tune.gradient_checkpointing`):
        every module the loss backpropagates through (denoiser, decoder) should take part."""
        if hasattr(self.unet, "enable_gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()

    def enable_decoder_checkpointing(self) -> None:
        """Recompute the decoder's activations in backward (`tune.decoder_checkpointing`), for the decode
        under gradient only. Default: the `vae` attribute's own switch (diffusers' `_supports_gradient_checkpointing`);
        a backbone whose decoder has none says so in one line, or implements it."""
        from .errors import PVError

        vae = getattr(self, "vae", None)
        if vae is None or not getattr(vae, "_supports_gradient_checkpointing", False):
            raise PVError(f"tune.decoder_checkpointing: backbone {self.name!r} cannot checkpoint its decoder",
                          "set tune.decoder_checkpointing=false")
        vae.enable_gradient_checkpointing()

    def place_denoiser(self) -> None:
        """Put the denoiser on `device` if the backbone left it on the host when it loaded (so that
        the prompt pool is embedded with the text encoders alone on the accelerator: no load peak of
        both). Tuning calls it once its prompts are embedded (and the text encoders offloaded); a
        backbone that defers also calls it before it denoises. Default: nothing (placed at load)."""
        return None

    def offload_blocks(self) -> list[torch.nn.Module]:
        """The denoiser's repeated blocks whose frozen weights may wait on the host (`tune.offload=blocks`),
        in order. Default: the top-level modules of the classes the denoiser lists in diffusers'
        `_repeated_blocks`; none is one line."""
        from .errors import PVError

        kinds = set(getattr(self.denoiser, "_repeated_blocks", None) or ())
        blocks, inside = [], ()
        for name, module in self.denoiser.named_modules():
            if type(module).__name__ in kinds and not any(name.startswith(f"{b}.") for b in inside):
                blocks.append(module)
                inside = (*inside, name)
        if not blocks:
            raise PVError(f"tune.offload=blocks: backbone {self.name!r} names no blocks to offload",
                          "set tune.offload=none")
        return blocks

    def new_scheduler(self):
        """A fresh scheduler with the backbone's configuration (samplers keep state)."""
        return type(self.scheduler).from_config(self.scheduler.config)

    # ----------------------------------------------------------------- generation
    def pipeline_call(self, plan: GenerationPlan, *, prompt: str, negative_prompt: str, num_inference_steps: int,
                      guidance_scale: float, generator: torch.Generator,
                      callback_on_step_end: Callable | None = None) -> torch.Tensor:
        """Run the family's own diffusers pipeline for `plan` (the variant its controls need, built
        around this backbone's modules, no weight copies) and return the final latents
        (B, C, F, h, w); the engine decodes them. `callback_on_step_end(pipe, i, t, kwargs)` is
        diffusers' step callback (late-step gating and progress use it)."""
        from .errors import PVError

        raise PVError(f"backbone {self.name!r} does not implement generation (pipeline_call)")

    def load_lora(self, source: str, name: str) -> None:
        """Load a LoRA file or hub id (diffusers or kohya/A1111 keys) as adapter `name`; its weight
        is set per clip through `GenerationPlan.loras`."""
        from .errors import PVError

        raise PVError(f"backbone {self.name!r} cannot load LoRA files")

    def lora_modules(self) -> list[torch.nn.Module]:
        """Modules that may hold LoRA adapters (the denoiser, and text encoders if the family's
        LoRA files adapt them): generation activates adapters and sets their weights on these."""
        return [self.unet]


class IdentityEncoder(ABC):
    """A face detector + face-recognition network.

    Attributes: name; input_size (square side in pixels); template: (5, 2) canonical landmark
    positions in input pixels that detected landmarks are aligned to; dim: embedding size;
    differentiable: whether `embed` carries gradients to its input. A non-differentiable encoder
    can judge identities (`pv eval --encoder NAME`) but not train them: `pv tune` refuses it (its
    factory says so too, `factory.differentiable = False`, so the refusal comes before any model loads).
    """

    name: str
    input_size: int
    template: np.ndarray
    dim: int
    differentiable: bool = True

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image (H, W, 3), most confident first."""

    @abstractmethod
    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (N, dim) of aligned RGB faces (N, 3, S, S) in [0, 1];
        differentiable with respect to `faces` when `differentiable` (otherwise a PVError for an
        input that requires grad, never embeddings that silently carry no gradient)."""

    def align_matrix(self, face: Face) -> np.ndarray:
        """2x3 matrix taking the face's pixels to the encoder's aligned input (default: the
        least-squares similarity from its landmarks to `template`)."""
        from .faces import similarity_transform

        return similarity_transform(face.landmarks, self.template)

    def describe(self) -> dict[str, str]:
        return {"encoder": self.name}


class FrameScorer(ABC):
    """An image-text preference model scoring video frames against a prompt (CLIP score, HPSv2):
    used by the Semantic Consistency Reward."""

    name: str

    @abstractmethod
    def score(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        """Scores (N,) of frames (N, 3, H, W) in [0, 1] for one prompt; differentiable w.r.t. frames."""

    def image_embedding(self, frames: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, D), if the model has them (temporal consistency)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


# --------------------------------------------------------------------------- conditioners


@dataclass
class ControlInput:
    """A spatial control for a ControlNet-style model: one map per frame, already resampled to
    the clip's frames and size."""

    model: Any  # the control model, on the backbone's device (an SD-family ControlNetModel, say)
    frames: torch.Tensor  # (F, 3, H, W) float in [0, 1]
    scale: float = 1.0
    start: float = 0.0  # fraction of the denoising steps where the control starts acting
    end: float = 1.0
    label: str = ""


@dataclass
class GenerationPlan:
    """What the conditioners of one clip add to generation. The backbone turns it into its
    pipeline's variant and call arguments; the engine applies `loras` weights beside the
    identity adapter's."""

    frames: int
    height: int
    width: int
    controls: list[ControlInput] = field(default_factory=list)
    loras: dict[str, float] = field(default_factory=dict)  # adapter name (loaded via load_lora) -> weight
    video: torch.Tensor | None = None  # video-to-video: the clip to restyle, (F, 3, H, W) in [0, 1]
    strength: float = 0.8  # video-to-video: how much of the clip is re-noised and redrawn
    # a second expert's guidance scale (Backbone.guidance_at: the same rule as pv's sampler); 0: unset
    guidance_scale_2: float = 0.0
    context_length: int = 0  # long clips (frames > max_frames): the motion window (0 = max_frames)
    context_stride: int = 4  # long clips: the windows' stride
    call_kwargs: dict = field(default_factory=dict)  # anything else for the pipeline call
    record: dict = field(default_factory=dict)  # what the clip's metadata should say about the add-ons
    warnings: list[str] = field(default_factory=list)  # for the user (one line each), shown before the clip renders


class Conditioner(ABC):
    """A generation-time add-on (ControlNet, style LoRA, ...). Its factory takes
    `factory(options=dict, device=str)`; options come from the command line (the add-on's own
    arguments) over `generate.conditioners.<name>` in the settings."""

    name: str

    def check(self, target: dict[str, str]) -> None:
        """Before any model loads: raise PVError for inputs that cannot work (a missing or
        unreadable file, a file made for another model family), so a bad flag fails at once.
        `target` is what is known of the backbone without loading it (what the identity recorded
        of `Backbone.describe()`: backbone, base_model_version, ...). Default: nothing to check."""
        return None

    @abstractmethod
    def apply(self, backbone: Backbone, plan: GenerationPlan) -> None:
        """Add this add-on to `plan`: load its models onto the backbone's device, prepare its inputs
        at the plan's frames and size, load LoRAs into the backbone. Raise PVError for bad input."""


# --------------------------------------------------------------------------- memory trace


@dataclass
class RealSizeModel:
    """A backbone at real size with no weights, for pv's memory trace (`pv tune --dry-run`,
    `tune.memory`): what a backbone registration's `memory(options)` returns, built from the family's
    shipped configs for those backbone options (no download, no weights).

    backbone: the family's own Backbone around modules built on the meta device, in the dtypes it
      runs in on a GPU, with the options' storage switch (`weights`) applied as its factory applies
      it; `device` is meta. The trace calls its predict_noise / decode_frames / decode_window /
      enable_gradient_checkpointing / enable_decoder_checkpointing: the real step's code.
    text_encoders: the text encoders' modules by name (meta).
    encode: runs the text encoders' forward once on meta inputs of the real prompt length, no grad.
    conditioning(batch): meta conditioning as `encode_prompt` returns it, for `batch` prompts.
    blocks: the names of the denoiser's repeated-block ModuleLists (e.g. ["blocks"]); the trace runs
      a step with 1 and 2 units of them (a unit keeps the lists' proportions) and scales the per-unit
      bytes linearly to the full depth.
    experts: other denoisers that sample beside the adapted one (a high-noise expert of two),
      by name, meta; they run without grad.
    notes: what the model leaves out or approximates, said with the trace.
    """

    backbone: Backbone
    text_encoders: dict[str, Any]
    encode: Callable[[], None]
    conditioning: Callable[[int], Conditioning]
    blocks: list[str]
    experts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
