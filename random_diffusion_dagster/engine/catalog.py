"""The model catalog: which diffusion models exist and how each one runs by default.

A catalog is a YAML file:

    defaults: {resolution: 512, num_inference_steps: 50, strength: 0.75, ...}
    models:
      - name: sd15
        hub_id: stable-diffusion-v1-5/stable-diffusion-v1-5
      - name: local-model
        path: models/my-model            # a diffusers folder, relative to the catalog
      - name: single
        single_file: checkpoints/x.safetensors
        config: configs/sd15               # its diffusers configs: a folder, or a cached hub id

Each model names exactly one source: `path`, `hub_id` or `single_file`. A single-file
checkpoint holds weights only; `config` says which diffusers layout they fill. Without it
diffusers guesses the original repo from the weights and fetches its configs from the hub.

Every value is checked against SETTINGS (type and bounds) when the catalog is read, so a typo
fails before any image runs rather than as a traceback or a black image halfway through.
"""

from __future__ import annotations

import io
import math
import reprlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .prompts import PromptListError, check_text

SOURCE_KINDS = ("path", "hub_id", "single_file")
ENTRY_ONLY = ("name", "description", "config")  # per-model keys that are not settings with defaults
TOP_LEVEL = ("defaults", "models")
DTYPES = ("auto", "float16", "bfloat16", "float32")
MAX_CATALOG_BYTES = 2**20  # a catalog of thousands of models is a few hundred KB
MAX_YAML_NODES = 1_000_000  # after alias expansion; more than 1 MB holds without aliases: only bombs reach it


@dataclass(frozen=True)
class Setting:
    """What one setting accepts: the one place its type and bounds are written down."""

    default: Any
    kind: type  # int, float, bool or str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # strength: above 0, not 0
    multiple_of: int | None = None  # resolution: the VAE works in 8-pixel blocks
    optional: bool = False  # null allowed: "the model's own"
    choices: tuple = ()

    def expectation(self) -> str:
        if self.choices:
            return f"one of {self.choices}"
        if self.kind is bool:
            return "true or false (unquoted)"
        if self.kind is str:
            return "text"
        noun = "a whole number" if self.kind is int else "a number"
        low = f"above {self.low:g}" if self.low_open else f"from {self.low:g}"
        to = " and at most " if self.low_open else " to "
        step = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
        return f"{noun} {low}{to}{self.high:g}{step}"


SETTINGS: dict[str, Setting] = {
    "resolution": Setting(512, int, 8, 4096, multiple_of=8),
    "num_inference_steps": Setting(50, int, 1, 1000),
    "strength": Setting(0.75, float, 0, 1, low_open=True),
    "guidance_scale": Setting(7.5, float, 0, 100),  # 1e30 renders all-black images that look like success
    "scheduler": Setting(None, str, optional=True),
    "dtype": Setting("auto", str, choices=DTYPES),
    "variant": Setting(None, str, optional=True),
    "negative_prompt": Setting("", str, optional=True),
    # The SD 1.x checkpoints ship a safety checker. The project does not run it unless asked:
    # it blacks out flagged images, and on untrained or unusual models it flags at random.
    "safety_checker": Setting(False, bool),
    # How often the seeded draw picks this model relative to the others ("mostly SD 1.5, sometimes 2.1").
    "weight": Setting(1.0, float, 0, 1_000_000, low_open=True),
    # A1111/compel emphasis in prompts, `(word:1.3)`, `[word]`; off: the text goes to the encoder as written.
    "prompt_weighting": Setting(False, bool),
}
DEFAULTS: dict[str, Any] = {key: setting.default for key, setting in SETTINGS.items()}
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 6


def show(value: Any) -> str:
    """A bounded repr for messages: a catalog value may be megabytes (or an alias bomb)."""
    text = _REPR.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class CatalogError(ValueError):
    """The catalog file or one of its entries is unusable."""


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry with its defaults filled in."""

    name: str
    source_kind: str  # one of SOURCE_KINDS
    source: str  # absolute path for local sources, the id for hub models
    resolution: int
    num_inference_steps: int
    strength: float
    guidance_scale: float
    scheduler: str | None
    dtype: str
    variant: str | None
    negative_prompt: str
    safety_checker: bool = False
    description: str = ""
    config: str | None = None  # single_file only: diffusers config folder or hub id
    weight: float = 1.0
    prompt_weighting: bool = False

    def result_settings(self) -> dict[str, Any]:
        """Everything about the entry that can change a result's pixels (not its description or draw weight)."""
        settings = asdict(self)
        del settings["description"], settings["weight"]
        if not self.prompt_weighting:
            del settings["prompt_weighting"]  # results made before the setting existed stay current
        return settings

    @property
    def denoising_steps(self) -> int:
        """img2img runs only the last `strength` share of the schedule."""
        return int(self.num_inference_steps * self.strength)


def load_catalog(path: str | Path) -> list[ModelSpec]:
    """Read and validate a catalog file; relative model paths resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(
            f"Model catalog {path} does not exist: point RANDOM_DIFFUSION_MODELS_FILE at a "
            "catalog such as data/models.yaml."
        )
    with path.open("rb") as handle:
        data = handle.read(MAX_CATALOG_BYTES + 1)
    if len(data) > MAX_CATALOG_BYTES:
        raise CatalogError(
            f"Model catalog {path} is {path.stat().st_size:,} bytes; a catalog may have at most "
            f"{MAX_CATALOG_BYTES:,}: check that the variable points at the catalog, or split it."
        )
    stream = io.BytesIO(data)  # bytes: PyYAML honours UTF-8/UTF-16 byte-order marks itself
    stream.name = str(path)
    try:
        document = yaml.load(stream, Loader=_BoundedLoader) or {}
    except yaml.reader.ReaderError as exc:
        reason = " ".join(str(exc).split())  # e.g. "unacceptable character #x00e9: ... position 22"
        raise CatalogError(f"Model catalog {path} is not valid YAML text: {reason}. Save it as UTF-8 text.") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"Model catalog {path} is not valid YAML: {str(exc)[:500]}") from exc
    except RecursionError as exc:
        raise CatalogError(f"Model catalog {path} nests lists or mappings too deeply to be a catalog.") from exc
    return parse_catalog(document, base_dir=path.parent, origin=str(path))


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand past MAX_YAML_NODES nodes, or loop, and keys set
    twice in one mapping (YAML keeps the last one silently: `strength: 0.3` then `strength: 0.9` ran at 0.9)."""

    def compose_document(self):
        node = super().compose_document()
        _check_expanded_size(node, self.name)
        return node

    def construct_mapping(self, node, deep=False):
        written = set()
        for key_node, _value in node.value:  # as written: keys a `<<: *alias` merges in may be overridden
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in written:
                    raise CatalogError(
                        f"Model catalog {self.name}, line {key_node.start_mark.line + 1}: `{key_node.value}` is set "
                        "twice in one mapping, and YAML would keep only the last: remove one."
                    )
                written.add(key_node.value)
        return super().construct_mapping(node, deep)


def _check_expanded_size(root: yaml.Node, name: str) -> None:
    """Count nodes as if every alias were written out (each shared node sized once), refusing loops."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else (node.value if isinstance(node, yaml.SequenceNode) else [])
        )
        if children_done:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise CatalogError(
                    f"Model catalog {name} holds more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
                    "expanded, far more than any catalog needs (a YAML alias bomb?): use fewer aliases or split it."
                )
        elif id(node) in ancestors:
            raise CatalogError(f"Model catalog {name}: an alias refers to itself (line {node.start_mark.line + 1}).")
        elif id(node) not in sizes:
            ancestors.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)


def parse_catalog(document: dict, base_dir: Path, origin: str = "catalog") -> list[ModelSpec]:
    if not isinstance(document, dict):
        raise CatalogError(f"{origin}: expected a mapping with a `models:` list.")
    unknown = sorted(set(document) - set(TOP_LEVEL), key=str)
    if unknown:
        raise CatalogError(f"{origin}: unknown top-level keys {show(unknown)}; a catalog has {list(TOP_LEVEL)}.")
    if document.get("models") is None:
        raise CatalogError(f"{origin}: `models:` is missing or has no entries: list the models under it.")
    if not isinstance(document["models"], list):
        raise CatalogError(
            f"{origin}: `models:` must be a list of entries (`- name: ...`); got {show(document['models'])}."
        )
    given = document.get("defaults") or {}
    if not isinstance(given, dict):
        raise CatalogError(
            f"{origin}: `defaults` must be a mapping of setting: value, such as `defaults: {{resolution: 512}}`; "
            f"got {show(given)}."
        )
    defaults = _settings({**DEFAULTS, **given}, f"{origin}: defaults")
    specs = [_parse_entry(entry, defaults, base_dir, origin) for entry in document["models"]]
    if not specs:
        raise CatalogError(f"{origin}: the `models:` list is empty; add at least one model.")
    names = [s.name for s in specs]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise CatalogError(f"{origin}: model names must be unique; repeated: {show(duplicates)}.")
    return specs


def find_model(catalog: list[ModelSpec], name: str) -> ModelSpec:
    for spec in catalog:
        if spec.name == name:
            return spec
    raise CatalogError(
        f"Unknown model {name!r}: the catalog has {[s.name for s in catalog]}. "
        "Use one of those names or add the model to the catalog."
    )


def _parse_entry(entry: Any, defaults: dict, base_dir: Path, origin: str) -> ModelSpec:
    if not isinstance(entry, dict) or entry.get("name") in (None, ""):
        raise CatalogError(f"{origin}: every model needs a `name`; got {show(entry)}.")
    name = entry["name"]
    if not isinstance(name, str):
        # Not converted: YAML has already turned 1.10 into 1.1 and 010 into 8, so str() would rename the model.
        hint = (
            f" (YAML reads an unquoted 1.5, 10 or yes as a number or boolean): quote it: name: '{name}'"
            if isinstance(name, (int, float))
            else ""
        )
        raise CatalogError(f"{origin}: model {show(name)}: `name` must be text; got {show(name)}{hint}.")
    where = f"{origin}: model {show(name)}"
    for key in (*SOURCE_KINDS, *ENTRY_ONLY):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise CatalogError(f"{where}: `{key}` must be text; got {show(entry[key])}. Quote it if it is a number.")
    kinds = [k for k in SOURCE_KINDS if entry.get(k)]
    if len(kinds) != 1:
        raise CatalogError(f"{where} must name exactly one of {SOURCE_KINDS}; it names {kinds or 'none'}.")
    kind = kinds[0]
    source = entry[kind]
    if kind != "hub_id":
        source = str((base_dir / source).resolve())
    own = {k: v for k, v in entry.items() if k not in (*SOURCE_KINDS, *ENTRY_ONLY)}
    settings = {**defaults, **_settings(own, where)}
    spec = ModelSpec(
        name=name,
        source_kind=kind,
        source=source,
        resolution=settings["resolution"],
        num_inference_steps=settings["num_inference_steps"],
        strength=settings["strength"],
        guidance_scale=settings["guidance_scale"],
        scheduler=settings["scheduler"],
        dtype=settings["dtype"],
        variant=settings["variant"],
        negative_prompt=settings["negative_prompt"] or "",
        safety_checker=settings["safety_checker"],
        weight=settings["weight"],
        prompt_weighting=settings["prompt_weighting"],
        description=entry.get("description") or "",
        config=_single_file_config(entry, kind, base_dir, where),
    )
    _validate(spec, where)
    return spec


def _settings(given: dict, where: str) -> dict[str, Any]:
    """Check each setting against SETTINGS and return them as their Python types (50.0 steps -> 50)."""
    unknown = sorted(set(given) - set(SETTINGS), key=str)
    if unknown:
        raise CatalogError(f"{where}: unknown settings {show(unknown)}; known settings are {sorted(SETTINGS)}.")
    return {key: _setting(key, value, where) for key, value in given.items()}


def _setting(key: str, value: Any, where: str) -> Any:
    rule = SETTINGS[key]
    if value is None and rule.optional:
        return None
    converted = _as_kind(value, rule.kind)
    if rule.kind in (int, float) and converted is not None:
        low_ok = converted > rule.low if rule.low_open else converted >= rule.low
        if not (low_ok and converted <= rule.high and not (rule.multiple_of and converted % rule.multiple_of)):
            converted = None
    elif rule.choices and converted not in rule.choices:
        converted = None
    if converted is None:
        hint = " Write the number without quotes, with a dot in exponents (1.0e+3)." if _numeric_text(value) else ""
        raise CatalogError(f"{where}: `{key}` must be {rule.expectation()}; got {show(value)}.{hint}")
    return converted


def _numeric_text(value: Any) -> bool:
    """Quoted "50", or 1e3 (which YAML 1.1 reads as text): a number the user meant."""
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def _as_kind(value: Any, kind: type) -> Any:
    """`value` as `kind`, or None: booleans are not numbers, numbers not text, and only finite numbers count."""
    if kind in (bool, str):
        return value if isinstance(value, kind) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if float(value).is_integer() else None
    return float(value)


def _single_file_config(entry: dict, kind: str, base_dir: Path, where: str) -> str | None:
    """A local config folder resolves against the catalog's folder; anything else is a hub id."""
    config = entry.get("config")
    if config is None:
        return None
    if kind != "single_file":
        raise CatalogError(f"{where}: `config` only applies to `single_file` models; {kind} models carry their own.")
    local = base_dir / str(config)
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise CatalogError(
                f"{where}: config folder {local} has no model_index.json; point `config` at a diffusers "
                "folder (configs are enough, weights are not needed)."
            )
        return str(local.resolve())
    return str(config)


def _validate(spec: ModelSpec, where: str) -> None:
    """Rules between settings; each setting alone is checked against SETTINGS."""
    try:  # the negative prompt goes to the text encoder beside the prompt: the same rule for what text may hold
        check_text(spec.negative_prompt, f"{where}: `negative_prompt`")
    except PromptListError as exc:
        raise CatalogError(str(exc)) from None
    if spec.denoising_steps < 1:
        raise CatalogError(
            f"{where}: num_inference_steps ({spec.num_inference_steps}) x strength ({spec.strength}) "
            "gives no denoising step; raise either so their product is at least 1."
        )
    if spec.source_kind == "single_file" and spec.safety_checker:
        raise CatalogError(
            f"{where}: single-file checkpoints carry no safety checker, so `safety_checker: true` cannot "
            "be honoured; convert the model to a diffusers folder with one, or drop the setting."
        )
