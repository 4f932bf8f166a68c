"""What plugins' tiny, in-process models share (the offline `tiny*` profiles and the tests): an
offline character-level CLIP tokenizer. Not a plugin (no entry point) and not part of the core:
only code that builds tiny models imports it."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"


def char_tokenizer(max_length: int = 77):
    """A CLIP tokenizer with a character-level vocabulary (CLIP's 256-symbol byte alphabet,
    each alone and as a word end, plus the two special tokens; 514 ids, no merges). Read from
    files that ship with pv, so it never needs the hub."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(ASSETS / "tokenizer_vocab.json"), str(ASSETS / "tokenizer_merges.txt"),
                         model_max_length=max_length)


CHAR_VOCAB_SIZE = 514
BOS_ID, EOS_ID = 512, 513
