"""The `gpu` pool: at most `default_limit` diffusion runs at once (dagster.yaml, run granularity)."""

import dagster as dg

GPU_POOL = "gpu"


def ensure_gpu_pool_limit(instance: dg.DagsterInstance) -> None:
    """Store the pool's default limit before the first diffusion run is queued.

    Dagster 1.13's queue daemon reads the stored pools first and stores a new pool's default limit in the
    same pass (dagster/_core/op_concurrency_limits_counter.py), so in the first pass that sees queued runs of
    an unstored pool, all of them start at once: a fresh deployment's first backfill would put several runs'
    models on one GPU (measured: four runs overlapping). Stored once, the limit holds from then on.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or not instance.global_op_concurrency_default_limit:
        return
    if GPU_POOL not in storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default(GPU_POOL)
