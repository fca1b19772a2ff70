"""The sensor behind the report's and the up-to-date check's declarative automation (Dagster's default one starts
stopped)."""

import dagster as dg

from ..checks import results_up_to_date

report_automation_sensor = dg.AutomationConditionSensorDefinition(
    name="report_automation_sensor",
    target=dg.AssetSelection.assets("diffusion_report") | dg.AssetSelection.checks(results_up_to_date),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Refreshes diffusion_report after new diffused images, and check results_up_to_date after a run "
    "that did not carry it (their automation conditions), at most once a minute and without waiting for every "
    "partition.",
)
