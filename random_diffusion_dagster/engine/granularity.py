"""How many images one Dagster partition holds: one each (`image`), a folder of the tree each (`folder`), or a stable
hash shard each (`shard:N`).

One partition per image is what the UI shows best, but Dagster advises at most about 100,000 partitions per asset;
a folder or shard partition covers many images in one run, and each image keeps its own result, record and reuse.
Keys depend only on the image's own key, so a new file never moves another image to another partition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

KINDS = ("image", "folder", "shard")
TOP_FOLDER = "."  # the partition of the images at the top of a tree: image keys never start with "." or "_"
MAX_SHARDS = 100_000  # Dagster's advice for the partitions of one asset


@dataclass(frozen=True)
class Granularity:
    """`image`, `folder` or `shard:N`, as RANDOM_DIFFUSION_PARTITIONS spells it."""

    kind: str = "image"
    shards: int = 0

    @classmethod
    def parse(cls, text: str) -> Granularity:
        """The granularity `text` names; ValueError saying what to write otherwise."""
        kind, _, count = text.strip().lower().partition(":")
        if kind in ("image", "folder") and not count:
            return cls(kind)
        if kind == "shard" and count.strip().isdigit() and 1 <= int(count) <= MAX_SHARDS:
            return cls("shard", int(count))
        raise ValueError(
            f"{text!r} is not a partition granularity: write image (a partition per image), folder (a partition per "
            f"folder of the tree) or shard:N (N stable shards of a flat folder, N from 1 to {MAX_SHARDS:,})."
        )

    def __str__(self) -> str:
        return f"shard:{self.shards}" if self.kind == "shard" else self.kind

    @property
    def per_image(self) -> bool:
        return self.kind == "image"

    @property
    def unit(self) -> str:
        """What one partition is, in words: image, folder or shard."""
        return self.kind

    def partition_of(self, image_key: str) -> str:
        """The partition key of the image whose own key is `image_key` (engine.images.partition_key_for)."""
        if self.kind == "folder":
            return image_key.rpartition("/")[0] or TOP_FOLDER
        if self.kind == "shard":
            digest = int.from_bytes(hashlib.sha1(image_key.encode("utf-8", "surrogatepass")).digest()[:8], "big")
            return f"shard-{digest % self.shards:0{len(str(self.shards - 1))}d}-of-{self.shards}"
        return image_key

    def group(self, image_keys: Iterable[str]) -> dict[str, list[str]]:
        """Partition key -> its image keys, both in the order the images come."""
        groups: dict[str, list[str]] = {}
        for key in image_keys:
            groups.setdefault(self.partition_of(key), []).append(key)
        return groups

    def partition_versions(self, versions: Mapping[str, str | None]) -> dict[str, str]:
        """Each partition's version from its images' (image key -> version, None where unreadable): an image's own,
        or for a folder or shard a digest of its images' keys and versions, so that a change to one image changes its
        partition's version and no other's."""
        grouped = self.group(key for key, version in versions.items() if version)
        if self.per_image:
            return {key: versions[key] for key in grouped}
        return {
            partition: _digest(f"{key}:{versions[key]}" for key in sorted(keys)) for partition, keys in grouped.items()
        }


def _digest(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
