"""Step storage: where `prompt_list` and `model_catalog` leave their values for `diffused_image`.

With Celery or Kubernetes those steps run on other machines or pods, each with its own
DAGSTER_HOME, so Dagster's default (pickles under DAGSTER_HOME/storage) cannot hand a value
over. This IO manager pickles to a folder or fsspec URL that every worker reaches.
"""

from __future__ import annotations

import pickle
import socket
from typing import Any

import dagster as dg
from pydantic import Field
from upath import UPath

from ..engine.output_location import write_bytes_atomic
from ..settings import STEP_STORAGE_VARIABLE


class StepValueMissing(FileNotFoundError):
    """A step's input was never written where this worker looks for it."""


class SharedStepStorage(dg.ConfigurableIOManagerFactory):
    """Pickles step outputs under `base_dir`, a shared folder or fsspec URL (RANDOM_DIFFUSION_STEP_STORAGE)."""

    base_dir: str = Field(description="Folder or fsspec URL (s3://bucket/step-values) every worker reaches.")

    def create_io_manager(self, context: dg.InitResourceContext) -> PickleOnSharedPath:
        return PickleOnSharedPath(self.base_dir)


class PickleOnSharedPath(dg.UPathIOManager):
    """One pickle per asset, `<base_dir>/<asset key>.pickle`, as Dagster's own filesystem IO manager lays them out."""

    extension = ".pickle"

    def __init__(self, base_dir: str):
        self.base_dir = base_dir
        super().__init__(base_path=UPath(base_dir))

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        # Concurrent runs of a backfill rewrite the same file while others read it: the project's atomic
        # write (rename locally, one PUT on object stores) shows readers the old value or the new one.
        write_bytes_atomic(path, pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        try:
            with path.open("rb") as file:
                return pickle.load(file)
        except FileNotFoundError:
            raise StepValueMissing(_missing_message(context, path)) from None


def _missing_message(context: dg.InputContext, path: UPath) -> str:
    name = context.asset_key.to_user_string() if context.has_asset_key else context.name
    upstream = context.upstream_output
    try:
        written_in_this_run = upstream is not None and upstream.run_id == context.step_context.run_id
    except dg.DagsterInvariantViolationError:  # a context built outside a run
        written_in_this_run = False
    fix = f"set {STEP_STORAGE_VARIABLE} to a folder or URL every worker reaches"
    if written_in_this_run:
        return (
            f"value of {name} written by step {upstream.step_key} not found at {path} (looked on "
            f"{socket.gethostname()}): steps ran on machines that do not share step storage; {fix}."
        )
    return (
        f"value of {name} not found at {path}: materialize {name} first (the diffuse_images job does); "
        f"if it was, it ran on a machine that does not share step storage: {fix}."
    )
