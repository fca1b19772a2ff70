"""The old class path of the SQLite instance storage, kept so a dagster.yaml that names it still loads."""

from .runtime.instance_storage.sqlite import BatchingSqliteStorage

__all__ = ["BatchingSqliteStorage"]
