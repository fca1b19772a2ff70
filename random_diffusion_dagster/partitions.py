"""The `images` dynamic partitions: one per source image, keyed by its sanitised file name."""

import dagster as dg

images_partitions = dg.DynamicPartitionsDefinition(name="images")
