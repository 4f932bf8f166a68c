from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pvcli.contracts import FrameScorer
from pvcli.hub import load_pretrained
from pvcli.settings import validate_options

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(frames: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIP's own preprocessing in torch, differentiable in the pixels: frames (N, 3, H, W) in [0, 1]
    -> resize so the short side is `size` (bicubic, antialiased: PIL's filter, as CLIPImageProcessor
    uses; the long side truncated like its int(size * long / short)), centre crop size x size
    (top/left = (extent - size) // 2), clamp to [0, 1], normalise with CLIP's mean and std."""
    x = frames.float()
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = max(0, (nh - size) // 2), max(0, (nw - size) // 2)
    x = x[..., top:top + size, left:left + size].clamp(0, 1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / sd


class ClipScorer(FrameScorer):
    """100 x cosine(CLIP image embedding, CLIP text embedding), differentiable in the pixels
    (CLIP's resize, centre crop and normalisation done in torch: `clip_preprocess`)."""

    def __init__(self, name: str, model, tokenizer, device: str, source: str = ""):
        self.name = name
        self.source = source
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.size = model.config.vision_config.image_size
        self._text: dict[str, torch.Tensor] = {}

    def text_embedding(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text:
            ids = self.tokenizer([prompt], padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            with torch.no_grad():
                out = self.model.get_text_features(input_ids=ids.to(self.device))
            emb = out if torch.is_tensor(out) else out.pooler_output
            self._text[prompt] = F.normalize(emb.float(), dim=-1)[0]
        return self._text[prompt]

    def image_embedding(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=clip_preprocess(frames.to(self.device), self.size))
        emb = out if torch.is_tensor(out) else out.pooler_output
        return F.normalize(emb.float(), dim=-1)

    def score(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        return 100.0 * self.image_embedding(frames) @ self.text_embedding(prompt)

    def describe(self) -> str:
        return f"{self.name}({self.source})" if self.source else self.name


@dataclass
class ClipOptions:
    model: str = "openai/clip-vit-base-patch32"


def make_clip(options: dict | None = None, device: str = "cpu") -> ClipScorer:
    opts = validate_options(ClipOptions, options or {}, "tune.scorer_options")
    from transformers import CLIPModel, CLIPTokenizer

    hint = "offline, use --scorer clip-tiny (random weights) or leave the metric out"
    model = load_pretrained("tune.scorer_options.model", opts.model, CLIPModel.from_pretrained, hint)
    tokenizer = load_pretrained("tune.scorer_options.model", opts.model, CLIPTokenizer.from_pretrained, hint)
    return ClipScorer("clip", model, tokenizer, device, source=opts.model)


@dataclass
class TinyClipOptions:
    seed: int = 0


def build_tiny_clip(seed: int = 0):
    from pv_tiny import BOS_ID, CHAR_VOCAB_SIZE, EOS_ID
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=CHAR_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=BOS_ID,
                         eos_token_id=EOS_ID, pad_token_id=EOS_ID),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config)


def make_clip_tiny(options: dict | None = None, device: str = "cpu") -> ClipScorer:
    from pv_tiny import char_tokenizer

    opts = validate_options(TinyClipOptions, options or {}, "tune.scorer_options")
    return ClipScorer("clip-tiny", build_tiny_clip(opts.seed), char_tokenizer(), device, source=f"seed={opts.seed}")
