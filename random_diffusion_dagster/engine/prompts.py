"""Prompt lists: one prompt per line, blank lines and `#` comments ignored.

Files are UTF-8; a byte-order mark (UTF-8, UTF-16, UTF-32) is honoured and UTF-16 without
one is recognised by its NUL bytes, because Windows editors save text that way. Anything
else that is not text (undecodable bytes, control characters, megabyte lines) is refused
with the line to fix, before any image runs.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from pathlib import Path

from .local_files import kind_problem

MAX_PROMPT_CHARS = 10_000  # CLIP reads ~77 tokens; a longer line is a broken file, not a prompt
# Mark -> the codec that reads it and drops it. Longest first: UTF-32 LE's mark starts like UTF-16 LE's.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# File types people point a prompts variable at by mistake: PNG, JPEG, GIF, WebP/RIFF, PDF, zip (docx, xlsx).
BINARY_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"%PDF", b"PK\x03\x04")
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # not str.splitlines: it also splits on \x0c, \x1c, \x85, ...


class PromptListError(ValueError):
    """The prompt list is missing, empty or not plain text."""


def parse_prompts(text: str, source: str = "prompt text") -> list[str]:
    """Return the prompts in `text`, skipping blank lines and `#` comments; refuse lines that are not text."""
    return [prompt for _number, prompt in numbered_prompts(text, source)]


def numbered_prompts(text: str, source: str = "prompt text") -> list[tuple[int, str]]:
    """parse_prompts, each prompt with its line number in `text` (for messages that send a person to the line)."""
    prompts = []
    for number, line in enumerate(LINE_BREAK.split(text), start=1):
        check_text(line, f"{source}, line {number}")
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            prompts.append((number, stripped))
    return prompts


def load_prompts(path: str | Path) -> list[str]:
    return require_prompts([prompt for _number, prompt in load_numbered_prompts(path)], source=str(path))


def load_numbered_prompts(path: str | Path) -> list[tuple[int, str]]:
    """The prompts file's prompts with their line numbers; refuses a missing file or one that is not text."""
    path = Path(path)
    if problem := kind_problem(path, "file"):
        raise PromptListError(
            f"Prompt file {path} {problem}: create a text file with one prompt per line, "
            "or point RANDOM_DIFFUSION_PROMPTS_FILE at one."
        )
    return numbered_prompts(decode_text(path.read_bytes(), str(path)), str(path))


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 unless a byte-order mark or UTF-16's NUL pattern says otherwise; bad bytes name their line."""
    encoding = _guess_encoding(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        if data.startswith(BINARY_SIGNATURES):
            raise PromptListError(
                f"{source} is an image or other binary file, not text: point it at a prompt list."
            ) from None
        line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        cause = "Latin-1/Windows-1252 text gives this error" if encoding == "utf-8" else "a cut or mixed file"
        raise PromptListError(
            f"{source}, line {line}: bytes {data[exc.start : exc.start + 4]!r} are not valid {encoding.upper()} "
            f"({cause}): save the file as UTF-8."
        ) from exc


def _guess_encoding(data: bytes) -> str:
    for mark, encoding in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return encoding
    # UTF-16 without a mark: mostly-ASCII text has a NUL in every other byte, on one side only.
    if len(data) >= 4 and len(data) % 2 == 0:
        even, odd = data[0::2].count(0), data[1::2].count(0)
        if odd > len(data) // 4 and even == 0:
            return "utf-16-le"
        if even > len(data) // 4 and odd == 0:
            return "utf-16-be"
    return "utf-8"


def require_prompts(prompts: list[str], source: str) -> list[str]:
    """Refuse an empty list (every image needs a prompt to be chosen from) and items that are not text."""
    for number, prompt in enumerate(prompts, start=1):
        if prompt:
            check_text(prompt, f"{source}, prompt {number}")
    cleaned = [p.strip() for p in prompts if p and p.strip()]
    if not cleaned:
        raise PromptListError(
            f"The prompt list from {source} is empty (only blank lines or # comments): "
            "add at least one prompt, one per line."
        )
    return cleaned


def check_text(text: str, where: str) -> None:
    """The one rule for what a prompt may hold: any printable text and tabs, within MAX_PROMPT_CHARS."""
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptListError(
            f"{where}: {len(text):,} characters, more than the {MAX_PROMPT_CHARS:,} a prompt may have "
            "(the model reads about 77 tokens): shorten it, or check that the file is a prompt list."
        )
    for column, char in enumerate(text, start=1):
        if char != "\t" and unicodedata.category(char) == "Cc":
            why = " (a NUL means a UTF-16 or binary file: save prompt files as UTF-8 text)" if char == "\0" else ""
            raise PromptListError(f"{where}: control character {char!r} at column {column}: remove it{why}.")
