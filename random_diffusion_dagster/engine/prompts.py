"""Prompt lists: one prompt per line, blank lines and `#` comments ignored."""

from __future__ import annotations

from pathlib import Path


class PromptListError(ValueError):
    """The prompt list is missing or empty."""


def parse_prompts(text: str) -> list[str]:
    """Return the prompts in `text`, skipping blank lines and `#` comments."""
    prompts = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            prompts.append(stripped)
    return prompts


def load_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise PromptListError(
            f"Prompt file {path} does not exist: create it with one prompt per line, "
            "or point RANDOM_DIFFUSION_PROMPTS_FILE at one."
        )
    return require_prompts(parse_prompts(path.read_text(encoding="utf-8")), source=str(path))


def require_prompts(prompts: list[str], source: str) -> list[str]:
    """Refuse an empty list: every image needs a prompt to be chosen from."""
    cleaned = [p.strip() for p in prompts if p and p.strip()]
    if not cleaned:
        raise PromptListError(
            f"The prompt list from {source} is empty (only blank lines or # comments): "
            "add at least one prompt, one per line."
        )
    return cleaned
