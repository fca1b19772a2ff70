"""Prompt lines as random-prompt users already write them.

A line is a Dynamic Prompts template (`{red|green}`, `{3::common|1::rare}`, `{2$$a|b|c}`,
`__wildcard__` files from a folder, nesting), resolved per image by a seeded generator, or
AUTOMATIC1111's "prompts from file" form: `--prompt "..." --negative_prompt "..."`. Lines
without template syntax are used exactly as written, so plain prompt files keep their meaning.
"""

from __future__ import annotations

import difflib
import random
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .prompts import PromptListError, check_text

TEMPLATE_MARKS = ("{", "__")  # a line without these is plain text and is not parsed
WILDCARD = re.compile(r"__([\w\-./*]+?)__")
LINE_OPTIONS = {"prompt": "template", "negative_prompt": "negative_prompt"}  # A1111 name -> PromptLine field
TRIAL_SEEDS = range(8)  # draws of each template before any image runs
# Dynamic Prompts' parser recurses once per nesting level: a few thousand levels exhaust Python's stack. Real
# templates nest a few braces and wildcards deep; the bounds fail a broken or hostile file with a named error first.
MAX_NESTING = 20
# An image's own words: `{label}` (its class folder), `{caption}` (engine/captions.py), `{stem}` (its file name
# without extension). Dynamic Prompts would read `{label}` as a one-choice variant, so each is parsed as a marker
# word and filled in per image after the draw.
IMAGE_WORDS = ("label", "caption", "stem")
IMAGE_WORD = re.compile(r"\{(" + "|".join(IMAGE_WORDS) + r")\}")
# `{Label}`, `{captions}`, `{ stem }`: Dynamic Prompts draws a one-choice brace as its word, so a mistyped image word
# would reach every prompt as the literal word "Label"; a brace this close to an image word is refused instead.
ONE_CHOICE = re.compile(r"\{\s*([A-Za-z_]+)\s*\}")
MAX_DRAWN_CHARS = 10_000  # a drawn prompt past this is a runaway expansion, not a prompt (CLIP reads ~77 tokens)


@dataclass(frozen=True)
class PromptLine:
    """One line of a prompt list: a template and, if the line says so, its own negative prompt."""

    template: str
    negative_prompt: str | None = None  # None: the model's default negative prompt

    @property
    def is_template(self) -> bool:
        return any(mark in self.template for mark in TEMPLATE_MARKS)


@dataclass(frozen=True)
class ResolvedPrompt:
    template: str
    prompt: str
    negative_prompt: str | None


def parse_line(text: str, where: str) -> PromptLine:
    """A plain or templated prompt, or A1111's `--option value ...` form (unknown options are errors). A line that
    does not start with an option is all prompt, as in A1111's prompts-from-file; one that names an option further
    on is refused, since the option would be drawn as words of the prompt."""
    if not text.startswith("--"):
        if found := re.search(r"(?:^|\s)--(" + "|".join(LINE_OPTIONS) + r")\b", text):
            raise PromptListError(
                f"{where}: --{found.group(1)} inside the prompt {text[:80]!r} would be read as words of the prompt: "
                f'options come first, as in --prompt "..." --negative_prompt "...".'
            )
        return PromptLine(text)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise PromptListError(f"{where}: {exc} in {text[:80]!r}: close the quote.") from None
    values: dict[str, str] = {}
    while words:
        option = words.pop(0)
        name = option[2:].replace("-", "_")
        if not option.startswith("--") or name not in LINE_OPTIONS:
            known = ", ".join(f"--{n}" for n in LINE_OPTIONS)
            raise PromptListError(f"{where}: unknown option {option!r}; a line may set {known}.")
        if not words:
            raise PromptListError(f'{where}: {option} needs a value, e.g. {option} "...".')
        if LINE_OPTIONS[name] in values:
            raise PromptListError(f"{where}: {option} is given twice; keep one.")
        values[LINE_OPTIONS[name]] = words.pop(0)
    if not values.get("template", "").strip():
        raise PromptListError(f'{where}: the line sets options but no --prompt "..."; add one.')
    return PromptLine(**values)


class PromptTemplates:
    """Parses and checks every line once; resolves a line for an image with that image's seed.

    A template is parsed once, not per image: parsing is nearly all of a resolve's cost, paid before a run's first
    batch."""

    def __init__(
        self,
        lines: list[str],
        wildcards_dir: str | Path | None = None,
        source: str = "prompt list",
        line_numbers: Sequence[int] | None = None,
        wildcard_files: bool = True,
    ):
        """`line_numbers`: where each line is in its file, so messages name the file's line, not the n-th prompt.
        `wildcard_files=False`: the wildcard files are elsewhere (a deployment's, for `submit`), so a word stands
        for each wildcard here and only the rest of each line is checked; such templates are for checking only."""
        self.wildcards_dir = Path(wildcards_dir) if wildcards_dir else None
        self.wildcard_files = wildcard_files
        self._manager = None
        where = [
            f"{source}, line {line_numbers[index]}" if line_numbers else f"{source}, prompt {index + 1}"
            for index in range(len(lines))
        ]
        self._where = where
        self.lines = [parse_line(text, where[index]) for index, text in enumerate(lines)]
        for index, line in enumerate(self.lines):
            _check_image_words(line.template, where[index])
            _check_image_words(line.negative_prompt or "", where[index])
        self._parsed = {
            index: self._check(line.template, where[index]) for index, line in enumerate(self.lines) if line.is_template
        }

    def uses(self, word: str) -> bool:
        """Whether any line names the image word `{word}` (label, caption, stem)."""
        return any(f"{{{word}}}" in line.template + (line.negative_prompt or "") for line in self.lines)

    def resolve(self, index: int, seed: int, words: dict[str, str | None] | None = None) -> ResolvedPrompt:
        """The line drawn with `seed`, its image words filled from `words`; a word the line names and the image
        lacks is a PromptListError naming the line and the word (that image fails; the others run)."""
        line = self.lines[index]
        prompt = self._generate(self._parsed[index], seed) if line.is_template else line.template
        prompt = self._fill(prompt, index, words or {})
        negative = None if line.negative_prompt is None else self._fill(line.negative_prompt, index, words or {})
        return ResolvedPrompt(line.template, prompt, negative)

    def _fill(self, text: str, index: int, words: dict[str, str | None]) -> str:
        def value(word: str) -> str:
            if not words.get(word):
                fixes = {
                    "label": "put the image in a class folder (images/<label>/...)",
                    "caption": "write its caption (a .txt beside it, or a metadata.jsonl row) or set "
                    "RANDOM_DIFFUSION_CAPTION_FALLBACK (the dataset resource's caption_fallback) to a text for it",
                    "stem": "rename the file",
                }
                line = self.lines[index].template  # quoted: a prompt list's n-th prompt is not its file's n-th line
                empty = word == "caption" and words.get(word) == ""  # a caption file or row with no text
                lacks = "its caption is empty" if empty else "the image has none"
                raise PromptListError(
                    f"{self._where[index]}: {line[:80]!r} uses {{{word}}}, but {lacks}: {fixes[word]}."
                )
            return words[word]

        if "RDDIMAGEWORD" in text:  # a drawn template: its words are markers; what fills them stays as it is
            return re.sub(r"RDDIMAGEWORD(LABEL|CAPTION|STEM)", lambda match: value(match[1].lower()), text)
        return IMAGE_WORD.sub(lambda match: value(match[1]), text)  # a --negative_prompt is not parsed

    def _generate(self, parsed, seed: int) -> str:
        """What Dynamic Prompts' RandomPromptGenerator(seed=seed).generate(text, 1) gives, from the parsed text."""
        from dynamicprompts.commands.base import SamplingMethod
        from dynamicprompts.sampling_context import SamplingContext

        context = SamplingContext(SamplingMethod.RANDOM, self._wildcards(), rand=random.Random(seed))
        return str(next(iter(context.sample_prompts(parsed, 1))))

    def _wildcards(self):
        if self._manager is None:
            from dynamicprompts.wildcards import WildcardManager

            self._manager = WildcardManager(self.wildcards_dir)
        return self._manager

    def _check(self, template: str, where: str):
        """The parsed template, once its syntax and wildcard files are checked, before any image runs (Dynamic
        Prompts would leave `__x__` in the text)."""
        from dynamicprompts.parser.parse import parse
        from pyparsing import ParseException

        # Without the wildcard files, each wildcard is a word of its length here (so columns stay the template's).
        text = template if self.wildcard_files else WILDCARD.sub(lambda match: "w" * len(match[0]), template)
        text = IMAGE_WORD.sub(lambda match: f"RDDIMAGEWORD{match[1].upper()}", text)
        _check_nesting(text, where)
        try:
            parsed = parse(text)
        except ParseException as exc:
            raise PromptListError(
                f"{where}: {template[:80]!r} is not a valid template ({exc.msg} at column {exc.column}): "
                "balance its braces { } (a template has no literal braces)."
            ) from None
        if "#" in template:
            raise PromptListError(
                f"{where}: {template[:80]!r} has a '#', which starts a comment in a template, so the rest of the line "
                "would be dropped: remove the '#'."
            )
        if self.wildcard_files:
            self._check_wildcards(template, where, seen=())
        else:
            for name in WILDCARD.findall(template):
                self._check_wildcard_name(name, where)
        self._check_draws(parsed, template, where)
        return parsed

    def _check_draws(self, parsed, template: str, where: str) -> None:
        """Some templates parse but fail or come out empty only when drawn (`{0::a|0::b}`, `{|}`): trial draws find
        them before any image runs, instead of failing every image of the run that draws the line."""
        for seed in TRIAL_SEEDS:
            try:
                prompt = self._generate(parsed, seed)
            except Exception as exc:  # noqa: BLE001 - whatever Dynamic Prompts raises, named with the line
                raise PromptListError(
                    f"{where}: {template[:80]!r} cannot be drawn ({type(exc).__name__}: {exc}): check its weights "
                    "and counts, e.g. {3::a|1::b} or {2$$a|b|c}."
                ) from None
            if not prompt.strip():
                raise PromptListError(f"{where}: {template[:80]!r} can draw an empty prompt: give every choice text.")
            if len(prompt) > MAX_DRAWN_CHARS:
                raise PromptListError(
                    f"{where}: {template[:80]!r} can draw a prompt of {len(prompt):,} characters (at most "
                    f"{MAX_DRAWN_CHARS:,}): draw fewer values (the N in {{N$$...}}) or shorten the wildcard values."
                )

    def _check_wildcards(self, text: str, where: str, seen: tuple[str, ...]) -> None:
        """Every wildcard the text names has values, and so does every wildcard those values name."""
        for name in WILDCARD.findall(text):
            if name in seen:
                raise PromptListError(
                    f"{where}: wildcard __{name}__ refers back to itself through {seen}: break the loop."
                )
            if len(seen) >= MAX_NESTING:
                raise PromptListError(
                    f"{where}: wildcards nest more than {MAX_NESTING} deep ({' -> '.join(seen)} -> {name}): let "
                    "fewer wildcard values name other wildcards."
                )
            if self.wildcards_dir is None or not self.wildcards_dir.is_dir():
                raise PromptListError(
                    f"{where}: uses wildcard __{name}__ but the wildcards folder {self.wildcards_dir} does not exist: "
                    "create it with a file per wildcard (e.g. animals.txt), or set RANDOM_DIFFUSION_WILDCARDS_DIR."
                )
            self._check_wildcard_name(name, where)
            values = self._wildcards().get_values(name).string_values
            if not values:
                raise PromptListError(
                    f"{where}: wildcard __{name}__ has no values in {self.wildcards_dir}: add {name}.txt there "
                    "with one value per line."
                )
            for value in values:
                self._check_value(value, name, where)
                self._check_wildcards(value, where, (*seen, name))

    def _check_wildcard_name(self, name: str, where: str) -> None:
        if ".." in name.split("/"):  # Dynamic Prompts refuses these only when drawn, logging a traceback
            folder = self.wildcards_dir or "the wildcards folder"
            raise PromptListError(
                f"{where}: wildcard __{name}__ has '..' in its name, which Dynamic Prompts does not allow: name "
                f"the file by its path inside {folder} (e.g. __animals/cats__ for animals/cats.txt)."
            )

    def _check_value(self, value: str, name: str, where: str) -> None:
        """A wildcard value is prompt text and maybe a template: checked here, not when an image draws it."""
        from dynamicprompts.parser.parse import parse
        from pyparsing import ParseException

        check_text(value, f"{where}: wildcard __{name}__, value {value[:40]!r}")
        if any(mark in value for mark in TEMPLATE_MARKS):
            _check_nesting(value, f"{where}: wildcard __{name}__")
            try:
                parse(value)
            except ParseException as exc:
                raise PromptListError(
                    f"{where}: wildcard __{name}__ has the value {value[:80]!r}, not a valid template ({exc.msg} "
                    f"at column {exc.column}): balance its braces in {name}.txt."
                ) from None


def _check_image_words(text: str, where: str) -> None:
    """Refuse a one-choice brace that is an image word mistyped (case, spaces, a plural, one letter off)."""
    for match in ONE_CHOICE.finditer(text):
        if IMAGE_WORD.fullmatch(match[0]):
            continue
        typed = match[1].lower()
        close = difflib.get_close_matches(typed, IMAGE_WORDS, n=1, cutoff=0.8)
        if close and abs(len(typed) - len(close[0])) <= 1:
            raise PromptListError(
                f"{where}: {text[:80]!r} has {match[0]}, which is no image word, so it would not be filled in: "
                f"write {{{close[0]}}} (an image's words are {{label}}, {{caption}} and {{stem}}, in lower case)."
            )


def _check_nesting(template: str, where: str) -> None:
    """Refuse braces nested deeper than MAX_NESTING before the parser recurses into them."""
    depth = deepest = 0
    for character in template:
        depth += {"{": 1, "}": -1}.get(character, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        raise PromptListError(
            f"{where}: {template[:80]!r} nests braces {deepest} deep (at most {MAX_NESTING}): flatten the template."
        )
