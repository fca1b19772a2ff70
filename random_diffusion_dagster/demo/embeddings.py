"""Tiny textual-inversion embeddings for the tiny SD 1.5-style demo model, built offline with fixed seeds.

A textual-inversion embedding is one or more vectors for the text encoder's token-embedding table, used wherever a
prompt writes its token (`pipeline.load_textual_inversion(file, token=...)`). These are written in the format
AUTOMATIC1111 saves as .safetensors and diffusers reads (loaders/textual_inversion.py: a state dict of one key is
taken as the embedding, under the token passed in): `{"emb_params": tensor[vectors, hidden_size]}`, the hidden size
read from the model's text-encoder config. Their vectors are seeded random numbers, not trained: that they change a
picture where a prompt names them, and load through the real path, is what the tests and the demo need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EMBEDDINGS_DIR = "embeddings"  # under the models folder: embeddings/<name>.safetensors
EMBEDDING_BASE = "tiny-sd15"  # the demo model whose text encoder they fit


@dataclass(frozen=True)
class TinyEmbeddingRecipe:
    name: str
    seed: int
    vectors: int = 1  # A1111 embeddings often hold several, each its own token once loaded
    scale: float = 0.5  # spread of the random vectors: a visible change in the tiny model's pictures


TINY_EMBEDDINGS = (
    TinyEmbeddingRecipe("tiny-style", seed=303, vectors=2),
    TinyEmbeddingRecipe("tiny-style-b", seed=404),
)


def embedding_file(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / EMBEDDINGS_DIR / f"{name}.safetensors"


def build_tiny_embedding(hidden_size: int, recipe: TinyEmbeddingRecipe, target: Path) -> Path:
    """Write one embedding of `recipe.vectors` vectors to `target`, drawn from the recipe's seed only."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator("cpu").manual_seed(recipe.seed)
    vectors = torch.randn((recipe.vectors, hidden_size), generator=generator) * recipe.scale
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.contiguous()}, str(target))
    return target


def build_tiny_embeddings(models_dir: str | Path, force: bool = False) -> list[Path]:
    """Every tiny embedding for `models_dir/tiny-sd15` into `models_dir/embeddings/` unless it is already there."""
    missing = [recipe for recipe in TINY_EMBEDDINGS if force or not embedding_file(models_dir, recipe.name).is_file()]
    if not missing:
        return []
    config = json.loads((Path(models_dir) / EMBEDDING_BASE / "text_encoder" / "config.json").read_text())
    return [
        build_tiny_embedding(config["hidden_size"], recipe, embedding_file(models_dir, recipe.name))
        for recipe in missing
    ]
