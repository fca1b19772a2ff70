"""dagster-postgres storage that accepts the `postgresql://` URLs people type.

SQLAlchemy 2.1 maps `postgresql://` to the psycopg 3 driver, which dagster-postgres does
not support (its LISTEN/NOTIFY statements fail there). This storage rewrites such URLs to
`postgresql+psycopg2://` and is otherwise dagster-postgres itself.
"""

from dagster_postgres import DagsterPostgresStorage

PSYCOPG2_SCHEME = "postgresql+psycopg2"


def with_psycopg2_driver(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if separator and scheme in ("postgres", "postgresql"):
        return f"{PSYCOPG2_SCHEME}://{rest}"
    return url


class Psycopg2PostgresStorage(DagsterPostgresStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        config = dict(config_value)
        if config.get("postgres_url"):
            config["postgres_url"] = with_psycopg2_driver(config["postgres_url"])
        else:
            config["postgres_db"] = {"scheme": PSYCOPG2_SCHEME, **config["postgres_db"]}
        return super().from_config_value(inst_data, config)
