"""The old class path of the PostgreSQL instance storage, kept so a dagster.yaml that names it still loads."""

from .runtime.instance_storage.postgres import BatchingPostgresStorage

__all__ = ["BatchingPostgresStorage"]
