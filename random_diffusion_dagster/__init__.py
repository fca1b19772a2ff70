"""Random-prompt, random-model img2img diffusion over an image folder, as Dagster assets."""

import warnings

# Beta features used on purpose with the pinned Dagster (1.13.27): ranged backfills and data versions
# on outputs. Only these two notices are dropped; any other Beta or deprecation warning still shows.
warnings.filterwarnings(
    "ignore", message=r"Parameter `(backfill_policy|data_version)` of (function `asset`|initializer `Output)"
)
