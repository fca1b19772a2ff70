"""What Dagster loads: assets, automation (sensors and schedules), checks, jobs, resources, partitions, pools."""
