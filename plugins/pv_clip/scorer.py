from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pvcli.contracts import FrameScorer
from pvcli.hub import load_pretrained
from pvcli.settings import validate_options

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer(FrameScorer):
    """100 x cosine(CLIP image embedding, CLIP text embedding), differentiable in the pixels
    (resize + normalise in torch, no PIL round trip)."""

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
        x = F.interpolate(frames.float().to(self.device), size=(self.size, self.size), mode="bicubic",
                          align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        out = self.model.get_image_features(pixel_values=(x - mean) / std)
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
    from transformers import CLIPConfig, CLIPModel

    from pvcli.tiny import BOS_ID, CHAR_VOCAB_SIZE, EOS_ID

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
    from pvcli.tiny import char_tokenizer

    opts = validate_options(TinyClipOptions, options or {}, "tune.scorer_options")
    return ClipScorer("clip-tiny", build_tiny_clip(opts.seed), char_tokenizer(), device, source=f"seed={opts.seed}")
