"""Random-prompt, random-model img2img diffusion over an image folder, as Dagster assets."""

import warnings

# Beta features used on purpose with the pinned Dagster (1.13.27): ranged backfills, data versions on
# outputs and observable source assets. Only these notices are dropped; any other still shows.
warnings.filterwarnings(
    "ignore", message=r"Parameter `(backfill_policy|data_version)` of (function `asset`|initializer `Output)"
)
warnings.filterwarnings("ignore", message=r"Function `observable_source_asset` is currently in beta")
# Per-partition asset checks (diffused_image's quality_gates): a preview feature in 1.13.
warnings.filterwarnings("ignore", message=r"Specifying a partitions_def on an AssetCheckSpec is currently in preview")
# dagster-celery registers its task once per import path, and Celery warns about it in every run and worker: harmless.
warnings.filterwarnings("ignore", message=r"Task name 'execute_plan' is already registered")
# torchao's quantized weights (catalog `quantize`) have no stable hash for torch.compile's on-disk cache: their graphs
# compile in each process instead of being read back (docs/speed.md says so); nothing goes wrong.
warnings.filterwarnings("ignore", message=r"\w+Tensor does not implement _stable_hash_for_caching")
# torch's own package writer (AOTInductor packages: engine/ahead_of_time.py) still makes the check it deprecates.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
