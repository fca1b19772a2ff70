"""Dagster's instance storage (runs and event log) in SQLite or PostgreSQL, writing asset events in batches."""
