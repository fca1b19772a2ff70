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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

SOURCE_KINDS = ("path", "hub_id", "single_file")
ENTRY_ONLY = ("name", "description", "config")  # per-model keys that are not settings with defaults
DTYPES = ("auto", "float16", "bfloat16", "float32")
DEFAULTS: dict[str, Any] = {
    "resolution": 512,
    "num_inference_steps": 50,
    "strength": 0.75,
    "guidance_scale": 7.5,
    "scheduler": None,
    "dtype": "auto",
    "variant": None,
    "negative_prompt": "",
    # The SD 1.x checkpoints ship a safety checker. The project does not run it unless asked:
    # it blacks out flagged images, and on untrained or unusual models it flags at random.
    "safety_checker": False,
}


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

    def result_settings(self) -> dict[str, Any]:
        """Everything about the entry that can change a result's pixels (not its description)."""
        settings = asdict(self)
        del settings["description"]
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
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"Model catalog {path} is not valid YAML: {exc}") from exc
    return parse_catalog(document, base_dir=path.parent, origin=str(path))


def parse_catalog(document: dict, base_dir: Path, origin: str = "catalog") -> list[ModelSpec]:
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise CatalogError(f"{origin}: expected a mapping with a `models:` list.")
    defaults = {**DEFAULTS, **(document.get("defaults") or {})}
    _reject_unknown(defaults, f"{origin}: defaults")
    specs = [_parse_entry(entry, defaults, base_dir, origin) for entry in document["models"]]
    if not specs:
        raise CatalogError(f"{origin}: the `models:` list is empty; add at least one model.")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CatalogError(f"{origin}: model names must be unique; repeated: {duplicates}.")
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
    if not isinstance(entry, dict) or not entry.get("name"):
        raise CatalogError(f"{origin}: every model needs a `name`; got {entry!r}.")
    name = str(entry["name"])
    where = f"{origin}: model {name!r}"
    kinds = [k for k in SOURCE_KINDS if entry.get(k)]
    if len(kinds) != 1:
        raise CatalogError(f"{where} must name exactly one of {SOURCE_KINDS}; it names {kinds or 'none'}.")
    kind = kinds[0]
    source = str(entry[kind])
    if kind != "hub_id":
        source = str((base_dir / source).resolve())
    settings = {**defaults, **{k: v for k, v in entry.items() if k not in (*SOURCE_KINDS, *ENTRY_ONLY)}}
    _reject_unknown(settings, where)
    spec = ModelSpec(
        name=name,
        source_kind=kind,
        source=source,
        resolution=int(settings["resolution"]),
        num_inference_steps=int(settings["num_inference_steps"]),
        strength=float(settings["strength"]),
        guidance_scale=float(settings["guidance_scale"]),
        scheduler=settings["scheduler"],
        dtype=str(settings["dtype"]),
        variant=settings["variant"],
        negative_prompt=str(settings["negative_prompt"] or ""),
        safety_checker=bool(settings["safety_checker"]),
        description=str(entry.get("description", "")),
        config=_single_file_config(entry, kind, base_dir, where),
    )
    _validate(spec, where)
    return spec


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


def _reject_unknown(settings: dict, where: str) -> None:
    known = set(DEFAULTS)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise CatalogError(f"{where}: unknown settings {unknown}; known settings are {sorted(known)}.")


def _validate(spec: ModelSpec, where: str) -> None:
    if spec.resolution < 8 or spec.resolution % 8:
        raise CatalogError(f"{where}: resolution {spec.resolution} must be a positive multiple of 8.")
    if not 0.0 < spec.strength <= 1.0:
        raise CatalogError(f"{where}: strength {spec.strength} must be in (0, 1].")
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
    if spec.dtype not in DTYPES:
        raise CatalogError(f"{where}: dtype {spec.dtype!r} is not one of {DTYPES}.")

