"""The sensor behind the report's declarative automation (Dagster's default one starts stopped)."""

import dagster as dg

report_automation_sensor = dg.AutomationConditionSensorDefinition(
    name="report_automation_sensor",
    target=dg.AssetSelection.assets("diffusion_report"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Refreshes diffusion_report after new diffused images (its automation condition), at most once a "
    "minute and without waiting for every partition.",
)
