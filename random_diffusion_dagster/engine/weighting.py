"""AUTOMATIC1111's emphasis syntax, `(word:1.3)`, `(word)`, `[word]`, honoured through compel.

compel (built for diffusers) turns weighted fragments into text embeddings. Its own prompt
syntax differs (`(word)1.3`, `word++`), so the text is read the way A1111 reads it
(modules/prompt_parser.py, `parse_prompt_attention`: `(` multiplies by 1.1, `[` divides by
1.1, `(text:w)` sets w) and handed to compel as weighted fragments.
"""

from __future__ import annotations

import re

ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
ROUND, SQUARE = 1.1, 1 / 1.1


def parse_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight)] as A1111 reads it; unbalanced brackets close at the end, as there."""
    fragments: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            fragments.append([token, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    merged: list[tuple[str, float]] = []
    for fragment_text, fragment_weight in fragments:
        if merged and merged[-1][1] == fragment_weight:
            merged[-1] = (merged[-1][0] + fragment_text, fragment_weight)
        elif fragment_text:
            merged.append((fragment_text, fragment_weight))
    return merged


def plain_text(prompt: str) -> str:
    """What the text encoder reads once the emphasis marks are gone (for the 77-token check)."""
    return "".join(text for text, _ in parse_attention(prompt))


class MultiVectorTokens:
    """compel's textual-inversion manager, on token ids: after each token `<t>` of a multi-vector embedding, the ids of
    `<t>_1`, `<t>_2`, ... that diffusers' load_textual_inversion added, as its maybe_convert_prompt does to the text
    (compel's DiffusersTextualInversionManager decodes and re-encodes every prompt, which changes the ids of prompts
    that name no token). Other ids pass unchanged."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        added = self.tokenizer.added_tokens_encoder
        expanded = []
        for token_id in token_ids:
            expanded.append(token_id)
            token, index = self.tokenizer.convert_ids_to_tokens(token_id), 1
            while f"{token}_{index}" in added:
                expanded.append(added[f"{token}_{index}"])
                index += 1
        return expanded


def weighted_embeddings(pipeline, prompts: list[str], negatives: list[str]) -> dict:
    """prompt_embeds / negative_prompt_embeds for a batch, padded to one length.

    The fragments go to compel as prompt objects, not as text: compel's own syntax (`word++`,
    `.and()`) would otherwise change plain prompts such as "C++ code".
    """
    import torch
    from compel import Compel
    from compel.prompt_parser import FlattenedPrompt, Fragment

    # With textual-inversion tokens loaded (the entry's embeddings), multi-vector tokens are expanded as diffusers'
    # own encode_prompt does; without them compel runs as it always has.
    inversions = any(not token.special for token in getattr(pipeline.tokenizer, "added_tokens_decoder", {}).values())
    compel = Compel(
        tokenizer=pipeline.tokenizer,
        text_encoder=pipeline.text_encoder,
        truncate_long_prompts=True,
        textual_inversion_manager=MultiVectorTokens(pipeline.tokenizer) if inversions else None,
    )

    def embed(text: str):
        fragments = [Fragment(part, weight) for part, weight in parse_attention(text)] or [Fragment("", 1.0)]
        (conditioning, _tokens), _options = compel.build_conditioning_tensor_for_prompt_object(
            FlattenedPrompt(fragments)
        )
        return conditioning

    tensors = compel.pad_conditioning_tensors_to_same_length([embed(t) for t in [*prompts, *negatives]])
    return {
        "prompt_embeds": torch.cat(tensors[: len(prompts)]),
        "negative_prompt_embeds": torch.cat(tensors[len(prompts) :]),
    }


def weighted_embeddings_sdxl(pipeline, prompts: list[str], negatives: list[str]) -> dict:
    """prompt_embeds, pooled_prompt_embeds and their negatives for an SDXL batch, as the pipeline's own
    `encode_prompt` makes them, with the emphasis applied.

    Both CLIP encoders read the weighted fragments and give their penultimate hidden states, not normalised, side by
    side along the feature axis; the pooled embedding is CLIP-G's projection of the text without its marks (pooling
    has no per-token weights). Each encoder reads at most its 77 tokens, as in the pipeline. With no negative prompt
    in the batch the negatives are zeros, as SDXL's `force_zeros_for_empty_prompt` makes them.
    """
    import torch
    from compel import Compel, ReturnedEmbeddingsType
    from compel.prompt_parser import FlattenedPrompt, Fragment

    encoders = [(pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2)]
    compels = [
        Compel(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            truncate_long_prompts=True,
        )
        for tokenizer, text_encoder in encoders
        if text_encoder is not None  # the refiner has CLIP-G only
    ]

    def embed(text: str):
        fragments = [Fragment(part, weight) for part, weight in parse_attention(text)] or [Fragment("", 1.0)]
        hidden = [c.build_conditioning_tensor_for_prompt_object(FlattenedPrompt(fragments))[0][0] for c in compels]
        pooled = compels[-1].conditioning_provider.get_pooled_embeddings([plain_text(text)])
        return torch.cat(hidden, dim=-1), pooled

    positive = [embed(text) for text in prompts]
    prompt_embeds = torch.cat([hidden for hidden, _ in positive])
    pooled = torch.cat([pooled for _, pooled in positive])
    if any(negatives) or not pipeline.config.get("force_zeros_for_empty_prompt", True):
        negative = [embed(text) for text in negatives]
        negative_embeds = torch.cat([hidden for hidden, _ in negative])
        negative_pooled = torch.cat([pooled for _, pooled in negative])
    else:
        negative_embeds, negative_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
    return {
        "prompt_embeds": prompt_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative_embeds,
        "negative_pooled_prompt_embeds": negative_pooled,
    }
