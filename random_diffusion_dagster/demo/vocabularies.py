"""Tokenizers made without a download: no model hub is reachable where the demo models are built.

transformers 5.x trap: `CLIPTokenizer(vocab_file=..., merges_file=...)` silently ignores the files (a 2-token
vocabulary, everything unknown); pass the vocabulary itself, as here, or load a saved folder.
"""

from __future__ import annotations

import string

T5_MAX_LENGTH = 512  # the real T5 tokenizers' model_max_length


def byte_level_vocab() -> dict[str, int]:
    """A 514-token CLIP vocabulary that spells any text byte by byte, with no unknown tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def clip_tokenizer():
    """The SD demo models' byte-level CLIP tokenizer: any text, one token per byte, no unknowns."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=77)


def t5_tokenizer():
    """A T5 tokenizer (Unigram, as T5's SentencePiece model is) over single characters, built without a download.

    Ids: <pad> 0, </s> 1, <unk> 2 as in T5; a word-initial piece (`▁a`) scores above `▁` + `a`, so a word costs one
    token per character. Characters outside printable ASCII and Latin-1 become <unk>, as many do in the real one.
    """
    from transformers import T5Tokenizer

    characters = [c for c in string.printable if not c.isspace()] + [chr(i) for i in range(0xA1, 0x100)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocab += [("\u2581" + c, -4.0) for c in characters] + [(c, -5.0) for c in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)
