"""The keys of the assets other modules record events for or query, without importing the assets themselves."""

import dagster as dg

IMAGE_DRAW_KEY = dg.AssetKey("image_draw")
DIFFUSED_IMAGE_KEY = dg.AssetKey("diffused_image")
PROMPT_LIST_KEY = dg.AssetKey("prompt_list")
MODEL_CATALOG_KEY = dg.AssetKey("model_catalog")
