"""Quality gates: what a result must look like to be kept, measured per image as it is made.

A catalog's `quality:` block (in `defaults:` and per entry) sets the gates:

    quality: {not_blank: true, min_change: 0.02, max_change: 0.8, prompt_not_truncated: false, tries: 3}

- `not_blank`: the result is not one flat colour: the safety checker's black square, an fp16 overflow's NaN image
  (black once converted), a washed-out grey. Judged by scikit-image's `is_low_contrast`: the 1st-99th percentile
  range of its grey levels covers less than BLANK_CONTRAST of the full range.
- `min_change`: the result differs from its source at least this much (a strength too low for the model gives the
  source back). `max_change`: at most this much (augmentation keeps the subject). Change is 1 - SSIM (scikit-image's
  `structural_similarity`) between the source as the model saw it and the result, in grey levels: 0 for a copy, about
  1 for noise. `false` or `null` turns either off.
- `prompt_not_truncated`: the model read the whole prompt (families.prompt_truncated).
- `tries`: attempts per result. A result failing a gate is made again with the next seed of its sequence (seed + 1,
  + 2, ...: the prompt and model of the draw stay), so reruns make the same attempts. A truncated prompt stays
  truncated whatever the seed: that gate fails at once. One that never passes is kept, marked failed with the reason.

No Dagster import: the runner judges, the record carries every attempt, the Dagster layer shows it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

BLANK_CONTRAST = 0.02  # is_low_contrast's fraction of the grey range: a flat image's is 0, a dark photo's ~0.3
MAX_TRIES = 16  # a typo of 100 would make a hundred images per failing result
GATE_KEYS = ("not_blank", "min_change", "max_change", "prompt_not_truncated", "tries")
SEEDS = 2**32  # diffusion seeds, as plan.choose draws them
SSIM_WINDOW = 7  # structural_similarity's default window: the smallest region `change` is measured over


class QualityError(ValueError):
    """A `quality:` block that cannot work; the message names the key and the fix."""


@dataclass(frozen=True)
class QualityGates:
    """The gates one catalog entry's results pass; the defaults are what a catalog without `quality:` gets."""

    not_blank: bool = True
    min_change: float | None = 0.02
    max_change: float | None = None
    prompt_not_truncated: bool = False
    tries: int = 3

    @classmethod
    def parse(cls, value: Any, base: QualityGates | None = None) -> QualityGates:
        """A `quality:` mapping as written, over `base` (the catalog's defaults) key by key."""
        if isinstance(value, QualityGates):
            return value
        if not isinstance(value, dict):
            raise QualityError(
                "`quality` must be a mapping of gates, such as {not_blank: true, min_change: 0.02, max_change: 0.8, "
                f"tries: 3}}; got {value!r:.80}."
            )
        unknown = sorted((key for key in value if key not in GATE_KEYS), key=str)
        if unknown:
            raise QualityError(f"`quality` has unknown keys {unknown}; the gates are {list(GATE_KEYS)}.")
        merged = {**asdict(base or cls()), **value}
        for flag in ("not_blank", "prompt_not_truncated"):
            if not isinstance(merged[flag], bool):
                raise QualityError(f"`quality.{flag}` must be true or false (unquoted); got {merged[flag]!r:.80}.")
        for bound in ("min_change", "max_change"):
            merged[bound] = _change_bound(bound, merged[bound])
        low, high = merged["min_change"], merged["max_change"]
        if low is not None and high is not None and low >= high:
            raise QualityError(
                f"`quality.min_change` {low:g} is not below `quality.max_change` {high:g}: no result could pass both; "
                "lower min_change, raise max_change, or turn one off with false."
            )
        tries = merged["tries"]
        if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES:
            raise QualityError(
                f"`quality.tries` must be a whole number from 1 to {MAX_TRIES} (attempts per result, the first "
                f"included; 1: judge but never re-roll); got {tries!r:.80}."
            )
        return cls(**merged)

    def judge(self, result: Image.Image, source: Image.Image, prompt_truncated: bool) -> dict:
        """One attempt's measures and the gates it fails, each with its reason: {"contrast", "change",
        "prompt_truncated", "failed": {gate: reason}}. `source` is what the model saw, at the result's size."""
        contrast, change = measure(result, source)
        failed = {}
        if self.not_blank and is_blank(result):
            failed["not_blank"] = f"blank or one colour (contrast {contrast:.3f}, below {BLANK_CONTRAST:g})"
        if self.min_change is not None and change < self.min_change:
            failed["min_change"] = f"too close to the source (change {change:.3f}, below {self.min_change:g})"
        if self.max_change is not None and change > self.max_change:
            failed["max_change"] = f"too far from the source (change {change:.3f}, above {self.max_change:g})"
        if self.prompt_not_truncated and prompt_truncated:
            failed["prompt_not_truncated"] = "prompt longer than the text encoder reads"
        return {"contrast": contrast, "change": change, "prompt_truncated": prompt_truncated, "failed": failed}

    def reroll_may_help(self, judged: dict, attempt: int) -> bool:
        """Whether another seed is worth making: tries are left and some failed gate depends on the seed (a
        truncated prompt does not)."""
        return attempt + 1 < self.tries and any(gate != "prompt_not_truncated" for gate in judged["failed"])


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of attempt `attempt` of a result drawn with `seed`: the next seeds of its sequence."""
    return (seed + attempt) % SEEDS


def verdict(gates: QualityGates, attempts: list[dict]) -> dict:
    """What a result's record keeps of its gates: the gates, every attempt, and whether the kept (last) one
    passed, with the reason where it did not."""
    last = attempts[-1]["failed"]
    reason = None
    if last:
        reason = f"failed {', '.join(last)} on all {len(attempts)} attempt(s); last: " + "; ".join(last.values())
    return {"passed": not last, "reason": reason, "gates": asdict(gates), "attempts": attempts}


def measure(result: Image.Image, source: Image.Image) -> tuple[float, float]:
    """(contrast, change) of a result: its grey levels' 1st-99th percentile range as a fraction of the full range
    (what is_low_contrast judges), and 1 - SSIM against its source."""
    import numpy as np
    from skimage.metrics import structural_similarity

    grey, source_grey = _grey(result), _grey(source.resize(result.size))
    low, high = np.percentile(grey, [1, 99])
    side = min(grey.shape)
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)  # SSIM's window must fit the image, odd
    similarity = structural_similarity(source_grey, grey, data_range=255, win_size=window)
    return round(float(high - low) / 255, 4), round(max(1.0 - float(similarity), 0.0), 4)


def measured_box(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` (left, top, right, bottom) widened about its centre to SSIM's window where it is thinner, within an
    image of `size`: a 1-pixel mask line is judged with the pixels around it (SSIM cannot measure a 1-pixel strip)."""

    def widened(low: int, high: int, full: int) -> tuple[int, int]:
        side = min(SSIM_WINDOW, full)
        if high - low >= side:
            return low, high
        low = min(max(low - (side - (high - low)) // 2, 0), full - side)
        return low, low + side

    (left, right), (top, bottom) = widened(box[0], box[2], size[0]), widened(box[1], box[3], size[1])
    return left, top, right, bottom


def is_blank(result: Image.Image) -> bool:
    from skimage.exposure import is_low_contrast

    return bool(is_low_contrast(_grey(result), fraction_threshold=BLANK_CONTRAST, lower_percentile=1))


def _grey(image: Image.Image):
    """Grey levels as uint8: is_low_contrast judges a range against its dtype's (a float image's is -1 to 1)."""
    import numpy as np

    return np.asarray(image.convert("L"), dtype=np.uint8)


def _change_bound(name: str, value: Any) -> float | None:
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise QualityError(
            f"`quality.{name}` must be a number from 0 to 1 (1 - SSIM between source and result: 0 is a copy, "
            f"about 1 is noise), or false to turn it off; got {value!r:.80}."
        )
    return float(value)
